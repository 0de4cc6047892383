"""The HTTP endpoint of every long-running process: /metrics, /healthz and /readyz on
CHRONOX_METRICS_PORT (default 8000; 0: none).

- /metrics: Prometheus text (chronox.metrics; a prefork worker serves its children's sum).
- /healthz (liveness): 200 while the process's main loop advanced within its limit: the
  stream's event loop, beat's scheduler loop, a worker's consumer, which only ticks while
  it is connected to the broker. 503 otherwise, so a supervisor restarts the process.
- /readyz (readiness): the database answers and its migrations are at head, and the
  broker, Redis and Kafka answer where configured; 200 or 503 with a JSON body listing
  each check, its result and latency. Each answer also sets `market_data_ready{check}`.

Several processes on one host cannot share a port: a busy port is a warning and that
process serves no endpoint (give each its own CHRONOX_METRICS_PORT).
"""
from __future__ import annotations

import concurrent.futures
import errno
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chronox import metrics
from chronox.settings import Settings, hide_password

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0  # seconds one readiness check may take; probes time out soon after


# -- liveness -----------------------------------------------------------------------------

class Liveness:
    """When the process's main loop last advanced, and how long it may stall."""

    def __init__(self) -> None:
        self.limit = 60.0
        self._last = time.monotonic()  # starting counts as advancing: the first connect may take a while
        self._age: Callable[[], float | None] | None = None

    def beat(self) -> None:
        self._last = time.monotonic()

    def follow(self, age: Callable[[], float | None]) -> None:
        """Take the loop's age from `age()` (seconds it is overdue; None: not started)."""
        self._age = age

    def age(self) -> float:
        if self._age is not None:
            age = self._age()
            if age is not None:
                return age
        return time.monotonic() - self._last


liveness = Liveness()


def beat() -> None:
    """The main loop advanced."""
    liveness.beat()


# -- readiness ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    latency_ms: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "latency_ms": round(self.latency_ms, 1), "detail": self.detail}


@functools.lru_cache(maxsize=8)
def _migration_heads(url: str) -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    from chronox.db import alembic_config

    return tuple(sorted(ScriptDirectory.from_config(alembic_config(url)).get_heads()))


def check_database(settings: Settings) -> str:
    from sqlalchemy import text

    from chronox.db import get_engine

    with get_engine(settings.database_url).connect() as conn:
        current = tuple(sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()))
    heads = _migration_heads(settings.database_url)
    if current != heads:
        raise RuntimeError(f"migrations at {', '.join(current) or 'none'}, head is {', '.join(heads)} "
                           "(run `chronox db upgrade`)")
    return f"migrations at head {', '.join(heads)}"


def check_broker(settings: Settings) -> str:
    from kombu import Connection

    with Connection(settings.broker_url, connect_timeout=CHECK_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
    return hide_password(settings.broker_url or "")


def check_redis(settings: Settings) -> str:
    import redis

    client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=CHECK_TIMEOUT,
                                  socket_connect_timeout=CHECK_TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()
    return hide_password(settings.redis_url or "")


def check_kafka(settings: Settings) -> str:
    from chronox.publish import kafka_brokers_reachable

    return f"{kafka_brokers_reachable(settings, CHECK_TIMEOUT - 0.5)} bootstrap server(s) answered"


def readiness_checks(settings: Settings) -> dict[str, Callable[[Settings], str]]:
    """The checks of this deployment: the database always, the rest where configured."""
    checks: dict[str, Callable[[Settings], str]] = {"database": check_database}
    if not settings.in_process:
        checks["broker"] = check_broker
    if settings.redis_url:
        checks["redis"] = check_redis
    if settings.kafka_enabled:
        checks["kafka"] = check_kafka
    return checks


def _timed(name: str, check: Callable[[Settings], str], settings: Settings) -> Check:
    started = time.monotonic()
    try:
        detail = check(settings)
        ok = True
    except Exception as exc:  # the check's whole point is to report what failed
        detail = hide_password(f"{type(exc).__name__}: {exc}".strip().splitlines()[0])[:300]
        ok = False
    return Check(name, ok, (time.monotonic() - started) * 1000, detail)


_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="chronox-readyz")


def readiness(settings: Settings) -> list[Check]:
    """Every check, side by side, each given CHECK_TIMEOUT seconds."""
    futures = {name: _pool.submit(_timed, name, check, settings)
               for name, check in readiness_checks(settings).items()}
    results = []
    for name, future in futures.items():
        try:
            results.append(future.result(timeout=CHECK_TIMEOUT + 0.5))
        except concurrent.futures.TimeoutError:
            results.append(Check(name, False, (CHECK_TIMEOUT + 0.5) * 1000, "timed out"))
    metrics.readiness({c.name: c.ok for c in results})
    return results


# -- the endpoint -------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def log_message(self, format: str, *args: Any) -> None:  # scrapes and probes every few seconds
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._send(200, generate_latest(metrics.collecting_registry()), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            age = liveness.age()
            ok = age <= liveness.limit
            self._json(200 if ok else 503, {"status": "live" if ok else "stalled", "component": self.server.component,
                                            "loop_age_seconds": round(age, 1), "limit_seconds": liveness.limit})
        elif path == "/readyz":
            checks = readiness(self.server.settings)
            ok = all(c.ok for c in checks)
            self._json(200 if ok else 503, {"status": "ready" if ok else "not ready",
                                            "component": self.server.component,
                                            "checks": [c.as_dict() for c in checks]})
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Endpoint(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, settings: Settings, component: str):
        self.settings = settings
        self.component = component
        super().__init__(("", port), _Handler)

    def start(self) -> Endpoint:
        threading.Thread(target=self.serve_forever, name="chronox-metrics", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def serve(settings: Settings, component: str) -> Endpoint | None:
    """Serve /metrics, /healthz and /readyz on CHRONOX_METRICS_PORT in background threads;
    None when the port is 0 or taken (logged)."""
    metrics.service_info(component)
    liveness.limit = settings.liveness_seconds
    port = settings.metrics_port
    if not port:
        return None
    try:
        endpoint = Endpoint(port, settings, component).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        log.warning("%s: port %d is taken (another ChronoX process on this host?): no /metrics, /healthz or "
                    "/readyz from this process; give each process its own CHRONOX_METRICS_PORT",
                    component, port)
        return None
    log.info("%s: /metrics, /healthz and /readyz on port %d", component, port)
    return endpoint
