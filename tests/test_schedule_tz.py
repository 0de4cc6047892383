"""Beat entries in exchange time: the ETL jobs at New York wall-clock times on both sides of
both DST changes, the nightly gap scan still at 00:00 UTC, the zone surviving beat's
shelve, and the market-session gate of the real-time jobs on DST days, an early close,
a holiday and a weekend."""
import datetime as dt
import os
import shelve
import signal
import subprocess
import sys
import time
from zoneinfo import ZoneInfo

import pytest

from chronox.calendar import in_market_session, latest_session_day
from chronox.settings import ConfigError, load_settings
from chronox.tasks.config import celery_config
from tests.conftest import REPO
from tests.helpers import utc, wait_until

UTC = dt.UTC


def entries():
    return celery_config(load_settings())["beat_schedule"]


def next_run(schedule, after: dt.datetime) -> dt.datetime:
    last, delta, _ = schedule.remaining_delta(after)
    return (last + delta).astimezone(UTC)


# 2024: DST began Sunday March 10 (02:00 EST -> 03:00 EDT), ended Sunday November 3
# (02:00 EDT -> 01:00 EST).
@pytest.mark.parametrize("after, expected", [
    (utc(2024, 3, 8, 12), utc(2024, 3, 8, 21, 30)),     # Friday before: EST, 16:30 = 21:30 UTC
    (utc(2024, 3, 8, 21, 31), utc(2024, 3, 11, 20, 30)),  # over the weekend of the change: EDT, 20:30 UTC
    (utc(2024, 3, 11, 12), utc(2024, 3, 11, 20, 30)),
    (utc(2024, 11, 1, 12), utc(2024, 11, 1, 20, 30)),   # Friday before the end: EDT
    (utc(2024, 11, 1, 20, 31), utc(2024, 11, 4, 21, 30)),  # Monday after: EST again
    (utc(2024, 11, 27, 21, 31), utc(2024, 11, 28, 21, 30)),  # Thanksgiving fires; the job skips it
])
def test_daily_historical_runs_at_1630_new_york_whatever_the_offset(after, expected):
    assert next_run(entries()["daily_historical"]["schedule"], after) == expected


def test_beat_decides_due_in_new_york_time_on_both_sides_of_a_change():
    schedule = entries()["daily_historical"]["schedule"]
    last_run = utc(2024, 3, 8, 21, 30)  # Friday 16:30 EST
    schedule.nowfun = lambda: utc(2024, 3, 11, 20, 29, 30)  # Monday 16:29:30 EDT
    assert schedule.is_due(last_run).is_due is False
    schedule.nowfun = lambda: utc(2024, 3, 11, 20, 30, 1)
    due = schedule.is_due(last_run)
    assert due.is_due is True and due.next == pytest.approx(24 * 3600 - 1, abs=1)  # Tuesday 20:30 UTC
    # a UTC crontab would have waited an hour longer in summer
    schedule.nowfun = lambda: utc(2024, 11, 4, 20, 31)  # Monday 15:31 EST
    assert schedule.is_due(utc(2024, 11, 1, 20, 30)).is_due is False


@pytest.mark.parametrize("after, expected", [
    (utc(2024, 3, 9, 12), utc(2024, 3, 10, 7)),   # 02:00 does not exist that night: it runs at 03:00 EDT
    (utc(2024, 3, 10, 7, 1), utc(2024, 3, 17, 6)),  # 02:00 EDT
    (utc(2024, 11, 2, 12), utc(2024, 11, 3, 7)),  # 02:00 EST, after the repeated hour
    (utc(2024, 11, 3, 7, 1), utc(2024, 11, 10, 7)),
])
def test_weekly_backfill_runs_sunday_0200_new_york(after, expected):
    assert next_run(entries()["weekly_backfill"]["schedule"], after) == expected


@pytest.mark.parametrize("after", [utc(2024, 3, 9, 12), utc(2024, 3, 10, 12), utc(2024, 11, 2, 12),
                                   utc(2024, 11, 3, 12)])
def test_nightly_gap_scan_stays_at_midnight_utc(after):
    schedule = entries()["nightly_gap_scan"]["schedule"]
    assert next_run(schedule, after) == dt.datetime.combine(after.date() + dt.timedelta(days=1), dt.time(0), UTC)


def test_real_time_jobs_fire_on_their_minutes_around_the_clock():
    jobs = entries()
    assert next_run(jobs["latest_prices"]["schedule"], utc(2024, 11, 30, 3, 7, 20)) == utc(2024, 11, 30, 3, 8)
    assert next_run(jobs["hourly_refresh"]["schedule"], utc(2024, 3, 10, 6, 55)) == utc(2024, 3, 10, 7, 0)
    assert next_run(jobs["hourly_refresh"]["schedule"], utc(2024, 3, 11, 13, 31)) == utc(2024, 3, 11, 13, 40)
    assert (jobs["latest_prices"]["options"], jobs["hourly_refresh"]["options"]) == (
        {"queue": "chronox.realtime", "expires": 60}, {"queue": "chronox.realtime", "expires": 600})
    for name in ("daily_historical", "weekly_backfill"):
        assert jobs[name]["options"]["queue"] == "chronox.control"


def test_schedule_time_zone_and_periods_are_settings(monkeypatch):
    monkeypatch.setenv("CHRONOX_SCHEDULE_TZ", "Europe/London")
    monkeypatch.setenv("CHRONOX_HOURLY_REFRESH_MINUTES", "15")
    monkeypatch.setenv("CHRONOX_DAILY_HISTORICAL_CRON", "45 17 * * 1-5")
    jobs = entries()
    assert next_run(jobs["daily_historical"]["schedule"], utc(2024, 1, 10, 12)) == utc(2024, 1, 10, 17, 45)
    assert next_run(jobs["daily_historical"]["schedule"], utc(2024, 7, 10, 12)) == utc(2024, 7, 10, 16, 45)
    assert next_run(jobs["hourly_refresh"]["schedule"], utc(2024, 7, 10, 12, 1)) == utc(2024, 7, 10, 12, 15)
    assert jobs["hourly_refresh"]["options"]["expires"] == 900
    monkeypatch.setenv("CHRONOX_SCHEDULE_TZ", "America/Gotham")
    with pytest.raises(ConfigError, match="CHRONOX_SCHEDULE_TZ='America/Gotham' is not an IANA time zone"):
        load_settings()
    monkeypatch.setenv("CHRONOX_SCHEDULE_TZ", "UTC")
    monkeypatch.setenv("CHRONOX_DAILY_HISTORICAL_CRON", "30 25 * * *")
    with pytest.raises(ConfigError, match="CHRONOX_DAILY_HISTORICAL_CRON='30 25 \\* \\* \\*'"):
        entries()
    monkeypatch.setenv("CHRONOX_DAILY_HISTORICAL_CRON", "30 16 * *")
    with pytest.raises(ConfigError, match="CHRONOX_DAILY_HISTORICAL_CRON"):
        load_settings()
    monkeypatch.setenv("CHRONOX_ENABLE_SCHEDULER", "false")
    monkeypatch.setenv("CHRONOX_DAILY_HISTORICAL_CRON", "30 16 * * 1-5")
    assert entries() == {}


def test_schedule_command_shows_the_zone(sqlite_url):
    import json

    from click.testing import CliRunner

    from chronox.cli import cli

    jobs = {e["job"]: e for e in json.loads(CliRunner().invoke(cli, ["schedule", "--json"]).output)}
    assert jobs["daily_historical"]["schedule"] == "cron 30 16 * * 1-5 America/New_York"
    assert jobs["weekly_backfill"]["schedule"] == "cron 0 2 * * 0 America/New_York"
    assert jobs["nightly_gap_scan"]["schedule"] == "cron 0 0 * * * UTC"
    next_daily = dt.datetime.fromisoformat(jobs["daily_historical"]["next_run"])
    assert next_daily.astimezone(ZoneInfo("America/New_York")).time() == dt.time(16, 30)


def test_a_real_beat_keeps_the_zone_in_its_schedule_file(celery_broker, tmp_path):
    """beat pickles its entries into a shelve; a zone lost there would move the jobs to UTC."""
    path = tmp_path / "celerybeat-schedule"
    log = tmp_path / "beat.log"
    with open(log, "wb") as out:
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "chronox", "beat", "--loglevel", "DEBUG",
                                 "--schedule", str(path), "--max-interval", "1"], cwd=REPO, env=dict(os.environ),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: b"beat: Starting" in log.read_bytes() and b"daily_historical" in log.read_bytes(),
                   timeout=30, what="beat started with the ETL entries")
        time.sleep(1.5)
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=20)
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
    with shelve.open(str(path), flag="r") as stored:
        daily = stored["entries"]["daily_historical"].schedule
        weekly = stored["entries"]["weekly_backfill"].schedule
        nightly = stored["entries"]["nightly_gap_scan"].schedule
    assert (daily.zone, weekly.zone, getattr(nightly, "zone", "UTC")) == ("America/New_York",) * 2 + ("UTC",)
    assert next_run(daily, utc(2024, 7, 1, 12)) == utc(2024, 7, 1, 20, 30)


@pytest.mark.parametrize("moment, open_", [
    (utc(2024, 3, 8, 14, 29), False), (utc(2024, 3, 8, 14, 30), True),   # EST: opens 14:30 UTC
    (utc(2024, 3, 8, 20, 59), True), (utc(2024, 3, 8, 21, 0), False),
    (utc(2024, 3, 11, 13, 29), False), (utc(2024, 3, 11, 13, 30), True),  # EDT: an hour earlier in UTC
    (utc(2024, 3, 11, 19, 59), True), (utc(2024, 3, 11, 20, 0), False),
    (utc(2024, 11, 1, 13, 30), True), (utc(2024, 11, 1, 20, 0), False),   # last EDT Friday
    (utc(2024, 11, 4, 13, 30), False), (utc(2024, 11, 4, 14, 30), True),  # first EST Monday
    (utc(2024, 11, 29, 17, 59), True), (utc(2024, 11, 29, 18, 0), False),  # early close 13:00 EST
    (utc(2024, 11, 28, 16), False),  # Thanksgiving
    (utc(2024, 11, 30, 16), False), (utc(2024, 12, 1, 16), False),  # a weekend
])
def test_stock_session_gate(moment, open_):
    assert in_market_session("stocks", moment) is open_


def test_crypto_is_always_in_session_and_days_are_utc():
    from chronox.calendar import market_day

    for moment in (utc(2024, 11, 28, 16), utc(2024, 11, 30, 3), utc(2024, 3, 10, 7)):
        assert in_market_session("crypto", moment)
    assert market_day("crypto", utc(2024, 11, 30, 3)) == dt.date(2024, 11, 30)
    assert market_day("stocks", utc(2024, 11, 30, 3)) == dt.date(2024, 11, 29)  # 22:00 New York
    assert latest_session_day("stocks", utc(2024, 12, 1, 16)) == dt.date(2024, 11, 29)
    assert latest_session_day("crypto", utc(2024, 12, 1, 16)) == dt.date(2024, 12, 1)


# -- the ETL jobs -------------------------------------------------------------------------------

def test_daily_historical_runs_the_day_through_the_registry_on_workers(
        pg_url, flatfiles, polygon, start_worker, celery_client, monkeypatch):
    from sqlalchemy import text, update

    from chronox import registry
    from chronox.db import get_engine
    from chronox.models import SymbolRegistry
    from tests.helpers import polygon_daily_bar, serve_days, wait_for_statuses

    day = dt.date(2024, 1, 3)
    engine = get_engine(pg_url)
    registry.add_symbol(engine, "DHA", "flatpack")
    registry.add_symbol(engine, "DHB", "api+snapshot")
    registry.add_symbol(engine, "DHC", "flatpack")
    registry.add_symbol(engine, "DHD", "flatpack", enabled=False)
    with engine.begin() as conn:  # a run owns DHC: the job leaves it alone
        conn.execute(update(SymbolRegistry.__table__).where(SymbolRegistry.symbol == "DHC")
                     .values(status="running", updated_at=dt.datetime.now(UTC)))
    polygon.set_ticker_details("DHA", {})
    polygon.add_daily_bars("DHA", [polygon_daily_bar(day, "DHA")])
    minutes = serve_days(polygon, "DHB", [day])
    polygon.set_snapshot("DHB", price=12.5, volume=100, updated_ns=1_704_316_500_000_000_000)
    start_worker(concurrency=2)
    result = celery_client.send_task("chronox.schedule.daily_historical", kwargs={"now": "2024-01-03T21:30:00Z"})
    assert result.get(timeout=30) == {"job": "daily_historical", "day": "2024-01-03", "symbols": 2,
                                      "skipped_running": ["DHC"]}
    assert wait_for_statuses(pg_url, ["DHA", "DHB"], timeout=60) == {"DHA": "completed", "DHB": "completed"}
    with engine.connect() as conn:
        daily = conn.execute(text("SELECT symbol, day, close FROM ohlcv_1d")).all()
        minute_rows = conn.execute(text("SELECT symbol, count(*) FROM ohlcv_1m GROUP BY symbol")).all()
    assert [(s, d, c) for s, d, c in daily] == [("DHA", day, polygon_daily_bar(day, "DHA")["c"])]
    assert minute_rows == [("DHB", minutes)]  # the day filled from REST minute aggregates
    assert registry.status_of(engine, ["DHC", "DHD"]) == {"DHC": "running", "DHD": "idle"}
    # Thanksgiving: beat fires (Mon-Fri), the job skips without running anything
    requests = polygon.count_requests()
    holiday = celery_client.send_task("chronox.schedule.daily_historical", kwargs={"now": "2024-11-28T21:30:00Z"})
    assert holiday.get(timeout=30) == {"job": "daily_historical", "skipped": "2024-11-28 is not an NYSE trading day",
                                       "day": "2024-11-28"}
    assert polygon.count_requests() == requests


def test_weekly_backfill_fills_only_the_gaps_one_execution_per_window(sqlite_url, polygon, monkeypatch):
    """Two gaps a month apart: two executions, two REST requests; the covered days between
    them cost only the coverage check."""
    from chronox import registry
    from chronox.calendar import trading_days
    from chronox.db import get_engine
    from chronox.store import COVERAGE, upsert
    from chronox.tasks.etl import weekly_backfill
    from tests.helpers import count, serve_days

    monkeypatch.setenv("CHRONOX_WEEKLY_BACKFILL_DAYS", "35")
    now = "2024-06-09T06:00:00Z"  # Sunday 02:00 New York
    days = trading_days(dt.date(2024, 5, 5), dt.date(2024, 6, 7))
    gaps = [dt.date(2024, 5, 14), dt.date(2024, 6, 4)]
    engine = get_engine(sqlite_url)
    for symbol in ("WKA", "WKB"):
        registry.add_symbol(engine, symbol, "api")
        serve_days(polygon, symbol, gaps)
    with engine.begin() as conn:
        upsert(conn, COVERAGE, [{"symbol": s, "trading_day": d, "source": "flatpack", "rows": 900}
                                for s in ("WKA", "WKB") for d in days if d not in gaps or s == "WKB" and d == gaps[1]],
               keys=("symbol", "trading_day", "source"), updates=("rows",))
    outcome = weekly_backfill.apply(kwargs={"now": now}).get()
    assert outcome == {"job": "weekly_backfill", "since": "2024-05-05", "checked": 2, "with_gaps": 2,
                       "skipped_running": [], "executions": 2, "gap_days": 3}
    asked = sorted((r.path.split("/")[4], r.path.split("/")[8]) for r in polygon.requests)
    may14, jun04 = (str(int(dt.datetime(2024, d.month, d.day, 4, tzinfo=UTC).timestamp() * 1000)) for d in gaps)
    assert asked == [("WKA", may14), ("WKA", jun04), ("WKB", may14)]
    assert count(sqlite_url, "SELECT count(*) FROM coverage WHERE source = 'api'") == 3
    assert registry.status_of(engine, ["WKA", "WKB"]) == {"WKA": "completed", "WKB": "completed"}
    again = weekly_backfill.apply(kwargs={"now": now}).get()
    assert (again["with_gaps"], again["executions"]) == (0, 0) and len(polygon.requests) == 3
