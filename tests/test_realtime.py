"""The real-time side: gated jobs skip outside the session without calling the provider,
run on the `chronox.realtime` queue for active symbols only, store the day's hour bars and
fill the chart caches; the request budget keeps its real-time reserve under a saturating
backfill. Real PostgreSQL, Redis, Celery workers and the Polygon REST stand-in."""
import datetime as dt
import json
import threading
import time
from collections import Counter

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import text

from chronox import realtime, registry
from chronox.db import get_engine
from chronox.settings import load_settings
from tests.helpers import count, polygon_minute_bars, serve_days, wait_until

pytestmark = pytest.mark.timeout(180)

UTC = dt.UTC
IN_SESSION = "2024-01-03T18:00:00+00:00"  # Wednesday 13:00 New York
OUTSIDE = {"saturday": "2024-11-30T16:00:00+00:00", "thanksgiving": "2024-11-28T16:00:00+00:00",
           "after the early close": "2024-11-29T18:00:00+00:00", "before the open": "2024-01-03T14:29:00+00:00"}
NS = 1_704_304_800_000_000_000  # 2024-01-03 18:00 UTC in ns


def register(url, strategies: dict[str, str], disabled=()):
    engine = get_engine(url)
    for symbol, strategy in strategies.items():
        registry.add_symbol(engine, symbol, strategy, enabled=symbol not in disabled)


def skips() -> Counter[str]:
    """The skip counter /metrics exports, per job."""
    return Counter({job: int(REGISTRY.get_sample_value("market_data_job_skips_total", {"job": job}) or 0)
                    for job in ("latest_prices", "hourly_refresh")})


def test_gated_jobs_skip_outside_the_session_without_a_provider_call(pg_url, polygon, redis_url, monkeypatch):
    from chronox.tasks.realtime import hourly_refresh, latest_prices

    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    register(pg_url, {"GTA": "snapshot", "GTB": "flatpack+snapshot"})
    for i, symbol in enumerate(("GTA", "GTB")):
        polygon.set_snapshot(symbol, price=50 + i, volume=1000, updated_ns=NS)
    serve_days(polygon, "GTA", [dt.date(2024, 1, 3)])
    before = skips()
    for moment in OUTSIDE.values():
        assert latest_prices.apply(kwargs={"now": moment}).get() == \
            {"job": "latest_prices", "skipped": "outside the market session", "at": moment}
        assert hourly_refresh.apply(kwargs={"now": moment}).get() == \
            {"job": "hourly_refresh", "skipped": "outside the market session", "at": moment}
    assert polygon.count_requests() == 0
    assert skips() - before == Counter({"latest_prices": 4, "hourly_refresh": 4})
    assert count(pg_url, "SELECT count(*) FROM snapshot_latest") == 0
    assert redis.Redis.from_url(redis_url).keys("latest_price:*") == []
    # the same call inside the session does the work
    outcome = latest_prices.apply(kwargs={"now": IN_SESSION}).get()
    assert outcome["symbols"] == 2 and [b["stored"] for b in outcome["batches"]] == [2]
    assert polygon.count_requests("/v2/snapshot") == 1
    assert json.loads(redis.Redis.from_url(redis_url).get("latest_price:GTB"))["price"] == 51


def test_jobs_without_active_symbols_or_provider_skip(pg_url, polygon, monkeypatch):
    register(pg_url, {"NOAC": "flatpack+api"})
    assert realtime.plan(load_settings(), realtime.LATEST_PRICES, dt.datetime.fromisoformat(IN_SESSION)) == \
        {"job": "latest_prices", "skipped": "no active symbols (strategy with snapshot)", "at": IN_SESSION}
    register(pg_url, {"NOKEY": "snapshot"})
    monkeypatch.delenv("POLYGON_API_KEY")
    assert realtime.plan(load_settings(), realtime.HOURLY_REFRESH, dt.datetime.fromisoformat(IN_SESSION)) == \
        {"job": "hourly_refresh", "skipped": "no REST provider configured (POLYGON_API_KEY unset)", "at": IN_SESSION}
    assert polygon.count_requests() == 0


def test_latest_prices_run_on_the_realtime_queue_for_active_symbols_only(
        pg_url, polygon, redis_url, start_worker, celery_client, monkeypatch):
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    monkeypatch.setenv("CHRONOX_SNAPSHOT_BATCH", "2")
    monkeypatch.setenv("CHRONOX_POLYGON_RATE_LIMIT", "20")  # so the real-time reserve can be seen spent
    monkeypatch.setenv("CHRONOX_POLYGON_RATE_WINDOW", "60")
    register(pg_url, {"RTA": "snapshot", "RTB": "snapshot+stream", "RTC": "flatpack+snapshot", "RTD": "flatpack",
                      "RTE": "snapshot"}, disabled=("RTE",))
    for i, symbol in enumerate(("RTA", "RTB", "RTC", "RTD", "RTE")):
        polygon.set_snapshot(symbol, price=100 + i, volume=10 * i, updated_ns=NS, prev_close=99.0)
    start_worker(concurrency=2, queues="chronox.realtime")  # nothing else: the routes must send it there
    result = celery_client.send_task("chronox.realtime.latest_prices", kwargs={"now": IN_SESSION})
    assert result.get(timeout=30) == {"job": "latest_prices", "symbols": 3, "batches": 2}
    wait_until(lambda: count(pg_url, "SELECT count(*) FROM snapshot_latest") == 3, timeout=30,
               what="both batches stored")
    with get_engine(pg_url).connect() as conn:
        stored = dict(conn.execute(text("SELECT symbol, price FROM snapshot_latest")).all())
    assert stored == {"RTA": 100, "RTB": 101, "RTC": 102}
    asked = sorted(r.query["tickers"] for r in polygon.requests)
    assert asked == ["RTA,RTB", "RTC"] and polygon.count_requests() == 2
    client = redis.Redis.from_url(redis_url)
    for symbol, price in stored.items():
        event = json.loads(client.get(f"latest_price:{symbol}"))
        assert (event["event"], event["symbol"], event["price"], event["prev_close"], event["ts"]) == \
            ("snapshot", symbol, price, 99.0, "2024-01-03T18:00:00Z")
        assert 0 < client.ttl(f"latest_price:{symbol}") <= 60
    assert client.get("latest_price:RTD") is None and client.get("latest_price:RTE") is None
    # both requests were granted from the real-time reserve (6 of 20), none from ETL's budget
    assert client.zcard("chronox:ratelimit:polygon:realtime:granted") == 2
    assert client.zcard("chronox:ratelimit:polygon:granted") == 0
    assert registry.get_symbol(get_engine(pg_url), "RTA").status == "idle"  # a refresh is not a run


def expected_hours(day: dt.date, symbol: str, shift: float = 0.0) -> list[dict]:
    """Hour bars of the served minutes (window start, UTC), worked out here from the minutes."""
    hours: dict[int, list[dict]] = {}
    for bar in polygon_minute_bars(day, symbol, shift):
        hours.setdefault(bar["t"] // 3_600_000 * 3600, []).append(bar)
    return [{"time": t, "open": b[0]["o"], "high": max(x["h"] for x in b), "low": min(x["l"] for x in b),
             "close": b[-1]["c"], "volume": sum(x["v"] for x in b)} for t, b in sorted(hours.items())]


def test_hourly_refresh_stores_the_days_hour_bars_and_writes_the_caches(
        pg_url, polygon, redis_url, start_worker, celery_client, monkeypatch):
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    day = dt.date(2024, 1, 3)
    serve_days(polygon, "HRA", [day])
    serve_days(polygon, "HRB", [day], shift=1.5)
    serve_days(polygon, "HRC", [day])  # not active: never asked for
    register(pg_url, {"HRA": "snapshot", "HRB": "api+snapshot", "HRC": "api"})
    start_worker(concurrency=1, queues="chronox.realtime")
    result = celery_client.send_task("chronox.realtime.hourly_refresh", kwargs={"now": IN_SESSION})
    assert result.get(timeout=30) == {"job": "hourly_refresh", "symbols": 2, "batches": 1}
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: client.exists("hourly_data:HRB:1D"), timeout=30, what="the hourly cache written")
    paths = sorted(r.path for r in polygon.requests)
    assert len(paths) == 2 and all("/range/1/hour/" in p for p in paths) and "HRC" not in " ".join(paths)
    expected = {"HRA": expected_hours(day, "HRA"), "HRB": expected_hours(day, "HRB", 1.5)}
    with get_engine(pg_url).connect() as conn:
        stored = conn.execute(text("SELECT symbol, bucket, open, high, low, close, volume, bars FROM ohlcv_1h "
                                   "ORDER BY symbol, bucket")).all()
    assert {r.symbol for r in stored} == {"HRA", "HRB"}
    for symbol, bars in expected.items():
        mine = [r for r in stored if r.symbol == symbol]
        assert [{"time": int(r.bucket.timestamp()), "open": r.open, "high": r.high, "low": r.low, "close": r.close,
                 "volume": r.volume} for r in mine] == pytest.approx(bars)
        assert {r.bars for r in mine} == {None}  # aggregated by the provider: its minutes were not seen
        hourly = json.loads(client.get(f"hourly_data:{symbol}:1D"))
        assert 0 < client.ttl(f"hourly_data:{symbol}:1D") <= 120
        assert {k: hourly[k] for k in ("symbol", "range", "timeframe", "first", "last")} == \
            {"symbol": symbol, "range": "1D", "timeframe": "1h", "first": "2024-01-03", "last": "2024-01-03"}
        assert hourly["bars"] == pytest.approx(bars)
        week = json.loads(client.get(f"asset_data:{symbol}:7D"))
        assert 120 < client.ttl(f"asset_data:{symbol}:7D") <= 300
        assert (week["first"], week["last"], week["bars"]) == ("2023-12-27", "2024-01-03", hourly["bars"])
    assert count(pg_url, "SELECT count(*) FROM ohlcv_1m") == 0  # only hour bars were asked for


def test_the_real_time_reserve_holds_under_a_saturating_backfill(polygon, redis_url, monkeypatch):
    """Six threads of backfill requests keep ETL's budget full; the minute refresh still gets
    its reserve at once, and never more than it."""
    from chronox.providers import get_provider
    from chronox.ratelimit import realtime_lane

    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    monkeypatch.setenv("CHRONOX_POLYGON_RATE_LIMIT", "10")
    monkeypatch.setenv("CHRONOX_POLYGON_RATE_WINDOW", "1")  # share 0.3 by default: ETL 7, real-time 3
    day = dt.date(2024, 1, 3)
    polygon.add_minute_bars("BKF", polygon_minute_bars(day, "BKF")[:5])
    polygon.set_snapshot("LIVE", price=10, volume=1, updated_ns=NS)
    settings = load_settings()
    stop = time.monotonic() + 5
    waits: list[float] = []

    def backfill() -> None:
        provider = get_provider(settings)
        while time.monotonic() < stop:
            provider.minute_bars("BKF", day, day)

    def refresh() -> None:
        provider = get_provider(settings)
        with realtime_lane():
            while time.monotonic() < stop:
                asked = time.monotonic()
                provider.snapshots(["LIVE"])
                waits.append(time.monotonic() - asked)

    threads = [threading.Thread(target=backfill) for _ in range(6)] + [threading.Thread(target=refresh)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    aggs, snaps = polygon.count_requests("/v2/aggs"), polygon.count_requests("/v2/snapshot")
    # Grants are spaced by the window plus a 0.1 s margin; a request reaches the stand-in a
    # little after its grant, so arrivals are checked over 0.8 s (0.2 s of slack for a busy host).
    assert polygon.max_requests_in_window(0.8, "/v2/aggs") <= 7
    assert polygon.max_requests_in_window(0.8, "/v2/snapshot") <= 3
    assert polygon.max_requests_in_window(0.8) <= 10
    assert 7 * 4 <= aggs <= 7 * 6  # the backfill kept its share busy, and got no more ...
    assert 3 * 4 <= snaps <= 3 * 6  # ... and the refresh got its reserve all along, no more
    assert max(waits) < 1.5  # a real-time request never waited more than a window (1 s + margin)


def test_schedule_trigger_sends_a_real_time_job_to_its_queue(pg_url, celery_broker, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    chronox = str(Path(sys.executable).with_name("chronox"))  # the installed command, as an operator runs it
    result = subprocess.run([chronox, "schedule", "trigger", "latest_prices"], env=dict(os.environ), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dispatched chronox.realtime.latest_prices as task ")
    client = redis.Redis.from_url(celery_broker)
    [message] = client.lrange("chronox.realtime", 0, -1)
    assert json.loads(message)["headers"]["task"] == "chronox.realtime.latest_prices"
    assert client.llen("chronox.control") == 0
