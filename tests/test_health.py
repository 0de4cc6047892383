"""/healthz and /readyz: a real worker's readiness follows PostgreSQL and Redis servers the
test owns and stops (tests/faults/servers.py), its liveness follows the consumer's
connection to the broker; migrations behind head, a stalled loop, a busy port, port 0 and
the old PROMETHEUS_PORT variable."""
from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chronox import health
from chronox.db import upgrade
from chronox.settings import ConfigError, Settings, load_settings
from tests.faults.servers import PrivateRedis, free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(180)


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def checks(port: int) -> tuple[int, dict[str, bool]]:
    status, body = get(port, "/readyz")
    return status, {c["name"]: c["ok"] for c in body["checks"]}


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    """This test's broker, result backend and Redis, on a server it may stop."""
    server = PrivateRedis(tmp_path / "redis")
    for name in ("CHRONOX_BROKER_URL", "CHRONOX_RESULT_BACKEND", "CHRONOX_REDIS_URL"):
        monkeypatch.setenv(name, server.url)
    yield server
    server.stop()


def test_a_workers_readiness_and_liveness_follow_postgres_and_redis(start_worker, own_redis, private_postgres,
                                                                    monkeypatch, celery_client):
    # celery_client comes after own_redis: it is made on this test's private broker.
    port = free_port()
    monkeypatch.setenv("CHRONOX_METRICS_PORT", str(port))
    monkeypatch.setenv("CHRONOX_LIVENESS_SECONDS", "3")
    worker = start_worker(concurrency=2)
    assert checks(port) == (200, {"database": True, "broker": True, "redis": True}), worker.log()
    status, body = get(port, "/readyz")
    assert body["status"] == "ready" and body["component"] == "worker"
    assert all(c["latency_ms"] > 0 for c in body["checks"])

    private_postgres.stop()
    status, body = get(port, "/readyz")
    database = next(c for c in body["checks"] if c["name"] == "database")
    assert (status, body["status"], database["ok"]) == (503, "not ready", False)
    assert "OperationalError" in database["detail"]
    assert [c["ok"] for c in body["checks"] if c["name"] != "database"] == [True, True]
    assert get(port, "/healthz")[0] == 200  # the broker is there: the worker is live
    private_postgres.start()
    wait_until(lambda: checks(port)[0] == 200, timeout=30, what="ready again after PostgreSQL is back")

    own_redis.stop()
    assert checks(port) == (503, {"database": True, "broker": False, "redis": False})
    # The consumer lost the broker: after CHRONOX_LIVENESS_SECONDS the worker is not live.
    status, body = wait_until(lambda: (r := get(port, "/healthz"))[0] == 503 and r, timeout=15,
                              what="/healthz 503 while the broker is gone")
    assert body["status"] == "stalled" and body["loop_age_seconds"] >= 3
    own_redis.start()
    wait_until(lambda: get(port, "/healthz")[0] == 200 and checks(port)[0] == 200, timeout=60,
               what="live and ready once Redis is back")
    assert worker.proc.poll() is None


def test_readiness_fails_while_migrations_are_behind_head(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    endpoint = health.serve(Settings(database_url=url, metrics_port=free_port()), "test")
    assert endpoint is not None
    try:
        port = endpoint.server_address[1]
        status, body = get(port, "/readyz")
        [database] = body["checks"]
        assert (status, database["ok"]) == (503, False)
        assert database["detail"].startswith("RuntimeError: migrations at 0003, head is ")
        assert "chronox db upgrade" in database["detail"]
        upgrade(url)
        status, body = get(port, "/readyz")
        assert status == 200 and body["checks"][0]["detail"].startswith("migrations at head")
    finally:
        endpoint.stop()


def test_liveness_fails_when_the_main_loop_stops_beating(sqlite_url, monkeypatch):
    endpoint = health.serve(Settings(database_url=sqlite_url, metrics_port=free_port(), liveness_seconds=0.5),
                            "test")
    assert endpoint is not None
    port = endpoint.server_address[1]
    try:
        health.beat()
        status, body = get(port, "/healthz")
        assert (status, body["status"], body["limit_seconds"]) == (200, "live", 0.5)
        time.sleep(0.8)
        status, body = get(port, "/healthz")
        assert (status, body["status"]) == (503, "stalled") and body["loop_age_seconds"] >= 0.8
        health.beat()
        assert get(port, "/healthz")[0] == 200
    finally:
        endpoint.stop()
        health.liveness.limit = Settings().liveness_seconds


def test_a_busy_port_is_a_warning_and_port_0_serves_nothing(sqlite_url, caplog):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="chronox.health"):
            assert health.serve(Settings(database_url=sqlite_url, metrics_port=port), "worker") is None
    [record] = caplog.records
    assert f"port {port} is taken" in record.getMessage()
    assert "give each process its own CHRONOX_METRICS_PORT" in record.getMessage()
    assert health.serve(Settings(database_url=sqlite_url, metrics_port=0), "worker") is None


def test_the_port_comes_from_chronox_metrics_port_or_the_old_prometheus_port():
    assert load_settings({}).metrics_port == 8000
    assert load_settings({"PROMETHEUS_PORT": "9100"}).metrics_port == 9100
    assert load_settings({"PROMETHEUS_PORT": "9100", "CHRONOX_METRICS_PORT": "9200"}).metrics_port == 9200
    assert load_settings({"PROMETHEUS_PORT": "9100", "CHRONOX_METRICS_PORT": "0"}).metrics_port == 0
    assert load_settings({"PROMETHEUS_PORT": "9100"}).origin("metrics_port") == ("PROMETHEUS_PORT",)
    with pytest.raises(ConfigError, match="PROMETHEUS_PORT='http' is not an integer"):
        load_settings({"PROMETHEUS_PORT": "http"})
    with pytest.raises(ConfigError, match="CHRONOX_METRICS_PORT='70000' is more than 65535"):
        load_settings({"CHRONOX_METRICS_PORT": "70000"})
