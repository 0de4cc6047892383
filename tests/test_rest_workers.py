"""The REST phases on real Celery workers (Redis broker, PostgreSQL, the Polygon stand-in):
the request budget holds across worker processes, retries honour Retry-After and stop at
their limit with the error on the registry, and a registry run fans the api phase out
into one task per window inside the symbol's chain."""
import datetime as dt
import re
import time

import pytest

from chronox import registry
from chronox.db import get_engine
from tests.helpers import KEY, count, rows_by_symbol_day, serve_days, wait_for_statuses, wait_until, write_days

pytestmark = pytest.mark.timeout(180)
D = dt.date


def test_rate_limit_holds_across_two_worker_processes(rest_pg, polygon, start_worker, celery_client, redis_url,
                                                      monkeypatch):
    limit, window = 3, 1.5
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    monkeypatch.setenv("CHRONOX_POLYGON_RATE_LIMIT", str(limit))
    monkeypatch.setenv("CHRONOX_POLYGON_RATE_WINDOW", str(window))
    monkeypatch.setenv("CHRONOX_POLYGON_MAX_RETRIES", "0")  # waiting for budget must not spend retries
    symbols = [f"RL{i:02d}" for i in range(15)]
    for i, s in enumerate(symbols):
        polygon.set_snapshot(s, price=100 + i, volume=10, updated_ns=1_704_207_600_000_000_000)
        registry.add_symbol(get_engine(rest_pg), s, "snapshot")
    # Each worker also has a queue of its own, so both are sure to run first attempts:
    # on the shared queue alone one worker may prefetch every task.
    own_queues = ["rl.first", "rl.second"]
    workers = [start_worker(concurrency=2, queues=f"chronox.rest,{q}") for q in own_queues]
    started = time.monotonic()
    results = [celery_client.send_task("chronox.snapshot.batch", kwargs={"symbols": [s], "method": "rest"},
                                       queue=own_queues[i % 2]) for i, s in enumerate(symbols)]
    outcomes = [r.get(timeout=120) for r in results]
    elapsed = time.monotonic() - started
    assert [o["stored"] for o in outcomes] == [1] * len(symbols)
    assert polygon.count_requests("/v2/last/trade") == len(symbols)
    assert polygon.max_requests_in_window(window) <= limit
    assert elapsed >= (len(symbols) / limit - 1) * window
    logs = [w.log() for w in workers]
    assert all("chronox.snapshot.batch" in log and "succeeded" in log for log in logs)
    # waiting for budget left the worker (a countdown retry), it did not sleep in it
    assert any("request budget exhausted" in log for log in logs)
    assert count(rest_pg, "SELECT count(*) FROM snapshot_latest") == len(symbols)


def test_retries_honour_retry_after_and_stop_at_their_limit(rest_pg, polygon, start_worker, celery_client,
                                                            monkeypatch):
    monkeypatch.setenv("CHRONOX_POLYGON_MAX_RETRIES", "2")
    day = D(2024, 3, 5)
    serve_days(polygon, "RETRY", [day])
    registry.add_symbol(get_engine(rest_pg), "RETRY", "api")
    polygon.inject("/v2/aggs", "429", retry_after=2)
    polygon.inject("/v2/aggs", "500", count=10)
    worker = start_worker(concurrency=1)
    result = celery_client.send_task("chronox.rest.api_window", kwargs={"symbol": "RETRY", "start": day.isoformat(),
                                                                        "end": day.isoformat()})
    result.get(timeout=60, propagate=False)
    assert result.state == "FAILURE"
    attempts = [r for r in polygon.requests if r.path.startswith("/v2/aggs")]
    assert [r.status for r in attempts] == [429, 500, 500]  # the first try and two retries, then no more
    assert attempts[1].time - attempts[0].time >= 2.0  # Retry-After honoured
    assert wait_for_statuses(rest_pg, ["RETRY"], timeout=20) == {"RETRY": "error"}  # on_failure runs after the result
    row = registry.get_symbol(get_engine(rest_pg), "RETRY")
    assert row.error_message.startswith("chronox.rest.api_window failed: TransientPolygonError: "
                                           "Polygon answered 500 (Internal server error) for /v2/aggs/ticker/RETRY/")
    assert row.error_message.endswith("(gave up after 2 retries)")
    assert count(rest_pg, "SELECT count(*) FROM ohlcv_1m") == 0
    assert KEY not in worker.log() and KEY not in str(result.traceback) and KEY not in row.error_message


def test_registry_run_fills_gap_windows_on_workers_and_one_bad_symbol_stops_no_other(
        rest_pg, flatfiles, polygon, start_worker, celery_client, monkeypatch):
    days = [D(2024, 11, 22), D(2024, 11, 25), D(2024, 11, 26), D(2024, 11, 27), D(2024, 11, 29),
            D(2024, 12, 2), D(2024, 12, 3)]
    flat_days = [D(2024, 11, 22), D(2024, 11, 26), D(2024, 11, 27), D(2024, 12, 2)]
    gap_days = [D(2024, 11, 25), D(2024, 11, 29), D(2024, 12, 3)]
    flat = write_days(flatfiles, flat_days, ["WIN", "BAD"])
    served = {d: serve_days(polygon, "WIN", [d], 1000.0) for d in days}
    polygon.set_ticker_details("WIN", {})
    polygon.set_snapshot("WIN", price=1234.5, volume=10, updated_ns=1_733_263_200_000_000_000)
    engine = get_engine(rest_pg)
    registry.add_symbol(engine, "WIN", "flatpack+api+snapshot")
    registry.add_symbol(engine, "BAD", "flatpack")  # no ticker details: Polygon answers 404
    worker = start_worker(concurrency=3)
    celery_client.send_task("chronox.registry.execute", kwargs={"symbols": None, "start": days[0].isoformat(),
                                                                "end": days[-1].isoformat()}).get(timeout=60)
    assert wait_for_statuses(rest_pg, ["WIN", "BAD"]) == {"WIN": "completed", "BAD": "error"}, worker.log()
    expected = {("WIN", d.isoformat()): flat[("WIN", d)] for d in flat_days}
    expected.update({("WIN", d.isoformat()): served[d] for d in gap_days})
    expected.update({("BAD", d.isoformat()): flat[("BAD", d)] for d in flat_days})
    assert rows_by_symbol_day(rest_pg) == expected
    assert count(rest_pg, "SELECT count(*) FROM coverage WHERE symbol = 'WIN' AND source = 'api'") == 3
    # One api_window task per gap window, each succeeding once: read in the whole log (not its
    # tail), once the worker's main process has logged the outcomes it may still be reporting.
    def windows_succeeded() -> list[str]:
        return re.findall(r"Task chronox\.rest\.api_window\[([0-9a-f-]{36})\] succeeded",
                          worker.log_path.read_text(errors="replace"))

    wait_until(lambda: len(windows_succeeded()) >= 3, timeout=10, what="three api_window tasks logged")
    succeeded = windows_succeeded()
    assert len(succeeded) == len(set(succeeded)) == 3, succeeded
    assert registry.get_symbol(engine, "WIN").last_backfill == D(2024, 12, 3)
    assert count(rest_pg, "SELECT count(*) FROM snapshot_latest WHERE symbol = 'WIN' AND price = 1234.5") == 1
    assert "404" in registry.get_symbol(engine, "BAD").error_message
