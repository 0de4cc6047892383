"""Faults 1-3: a worker process killed mid day load, the broker (Redis) restarted mid run,
the database (PostgreSQL) restarted mid run. Each run must end exactly where a run
without the fault ends (tests.faults.support.assert_same_end_state_as_fault_free).

Day loads are slowed with the run option publish_throttle_ms so the fault lands while
one is running: every bar then takes a few milliseconds to hand to Kafka, inside the
load's transaction."""
from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import DAYS
from tests.faults.support import assert_same_end_state_as_fault_free, prepare_run, report, wait_for_run
from tests.helpers import wait_until

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

pytestmark = pytest.mark.timeout(300)
THROTTLE = {"publish_throttle_ms": 3}


def start_slow_run(client: Celery, symbols: list[str]) -> AsyncResult:
    return client.send_task("chronox.registry.execute", kwargs={
        "symbols": symbols, "start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat(), "options": THROTTLE})


def running_day_load(client: Celery) -> tuple[str, int] | None:
    """(task id, pool process pid) of a day load some worker is executing now."""
    try:
        active = client.control.inspect(timeout=1.0).active() or {}
    except Exception:  # the broker may be the thing that is down  # noqa: BLE001
        return None
    for tasks in active.values():
        for task in tasks:
            if task["name"] == "chronox.phase.flatpack_day" and task.get("worker_pid"):
                return task["id"], task["worker_pid"]
    return None


def load_seen_running_twice(client: Celery) -> tuple[str, int] | None:
    """A day load that one inspection (which takes a second) saw running and the next one
    still sees: killing it now lands inside the load, while bars are handed to Kafka."""
    first = running_day_load(client)
    return first if first is not None and running_day_load(client) == first else None


def workers_answering(client: Celery, count: int) -> bool:
    try:
        return len(client.control.ping(timeout=1.0)) >= count
    except Exception:  # still reconnecting  # noqa: BLE001
        return False


def test_a_worker_process_killed_mid_day_load(pg_url, flatfiles, kafka, redis_url, start_worker, celery_client,
                                              record_property):
    symbols = ["FKA", "FKB", "FKC"]
    expected = prepare_run(pg_url, flatfiles, symbols, DAYS)
    workers = [start_worker(concurrency=1), start_worker(concurrency=1)]
    started = time.monotonic()
    start_slow_run(celery_client, symbols)
    task_id, pid = wait_until(lambda: load_seen_running_twice(celery_client), 60,
                              "a day load seen running by two inspections")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for_run(pg_url, redis_url, symbols, timeout=180) == {s: "completed" for s in symbols}
    finished = time.monotonic()
    duplicates = assert_same_end_state_as_fault_free(pg_url, kafka, symbols, DAYS, expected)
    # the killed delivery was given back to the broker and the same task then succeeded
    assert celery_client.AsyncResult(task_id).state == "SUCCESS"
    logs = "".join(w.log_path.read_text(errors="replace") for w in workers)
    assert "WorkerLostError" in logs or "signal 9" in logs
    report(record_property, kill_to_completion_seconds=round(finished - killed, 1),
           run_seconds=round(finished - started, 1), duplicate_envelopes=duplicates)


def test_redis_restarted_mid_run(start_worker, private_redis, pg_url, flatfiles, kafka, monkeypatch,
                                 record_property, celery_client):
    # celery_client comes after private_redis: it is made on this test's private broker.
    monkeypatch.setenv("CHRONOX_BROKER_URL", private_redis.url)  # over start_worker's shared Redis
    monkeypatch.setenv("CHRONOX_RESULT_BACKEND", private_redis.url)
    symbols = ["FRA", "FRB", "FRC"]
    expected = prepare_run(pg_url, flatfiles, symbols, DAYS)
    start_worker(concurrency=1), start_worker(concurrency=1)
    start_slow_run(celery_client, symbols)
    wait_until(lambda: running_day_load(celery_client), 60, "a day load running")
    back = private_redis.restart(down_for=2.0)
    wait_until(lambda: workers_answering(celery_client, 2), 90, "both workers answering again after the restart")
    reconnected = time.monotonic()
    assert wait_for_run(pg_url, private_redis.url, symbols, timeout=240) == {s: "completed" for s in symbols}
    finished = time.monotonic()
    duplicates = assert_same_end_state_as_fault_free(pg_url, kafka, symbols, DAYS, expected)
    report(record_property, redis_reconnect_seconds=round(reconnected - back, 1),
           restart_to_completion_seconds=round(finished - back, 1), duplicate_envelopes=duplicates)


def test_postgres_restarted_mid_run(private_postgres, redis_url, flatfiles, kafka, start_worker, celery_client,
                                    record_property):
    url = private_postgres.url
    symbols = ["FPA", "FPB", "FPC"]
    expected = prepare_run(url, flatfiles, symbols, DAYS)
    start_worker(concurrency=1), start_worker(concurrency=1)
    start_slow_run(celery_client, symbols)
    wait_until(lambda: running_day_load(celery_client), 60, "a day load running")
    time.sleep(0.5)
    back = private_postgres.restart(down_for=2.0)
    assert wait_for_run(url, redis_url, symbols, timeout=240) == {s: "completed" for s in symbols}
    finished = time.monotonic()
    duplicates = assert_same_end_state_as_fault_free(url, kafka, symbols, DAYS, expected)
    report(record_property, restart_to_completion_seconds=round(finished - back, 1),
           duplicate_envelopes=duplicates)
