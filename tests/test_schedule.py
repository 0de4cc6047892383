"""Celery beat's schedule and the nightly gap scan."""
import datetime as dt
import importlib

import pytest
from sqlalchemy import update

from chronox import registry
from chronox.db import get_engine
from chronox.models import SymbolRegistry
from chronox.scheduling import gap_scan
from chronox.settings import load_settings
from chronox.store import COVERAGE, upsert

NOW = dt.datetime(2024, 1, 5, 12, 0, tzinfo=dt.UTC)  # Jan 2-4 complete, Jan 5 still trading


def beat_schedule():
    import celeryconfig

    return importlib.reload(celeryconfig).beat_schedule


def test_default_schedule_routes_and_expires(monkeypatch):
    from chronox.celery_app import app

    schedule = beat_schedule()
    app.loader.import_default_modules()
    assert set(schedule) == {"nightly_gap_scan", "snapshot_refresh", "stream_monitor", "outbox_drain",
                             "daily_historical", "weekly_backfill", "hourly_refresh", "latest_prices"}
    for name, entry in schedule.items():
        assert entry["task"] in app.tasks, name
        assert entry["options"]["queue"].startswith("chronox."), name
        assert entry["options"]["expires"] > 0, name
    cron = schedule["nightly_gap_scan"]["schedule"]
    assert (cron._orig_minute, cron._orig_hour) == ("0", "0")
    assert schedule["snapshot_refresh"]["schedule"] == 300 == schedule["snapshot_refresh"]["options"]["expires"]
    assert schedule["stream_monitor"]["schedule"] == 60
    assert schedule["snapshot_refresh"]["options"]["queue"] == "chronox.rest"


def test_schedule_is_overridable_and_can_be_emptied(monkeypatch):
    monkeypatch.setenv("CHRONOX_SNAPSHOT_INTERVAL_MINUTES", "2")
    monkeypatch.setenv("CHRONOX_GAP_SCAN_CRON", "30 1 * * 1-5")
    schedule = beat_schedule()
    assert schedule["snapshot_refresh"]["schedule"] == 120
    cron = schedule["nightly_gap_scan"]["schedule"]
    assert (cron._orig_minute, cron._orig_hour, cron._orig_day_of_week) == ("30", "1", "1-5")
    monkeypatch.setenv("CHRONOX_ENABLE_SCHEDULER", "false")
    assert beat_schedule() == {}
    monkeypatch.delenv("CHRONOX_ENABLE_SCHEDULER")
    monkeypatch.delenv("CHRONOX_SNAPSHOT_INTERVAL_MINUTES")
    monkeypatch.delenv("CHRONOX_GAP_SCAN_CRON")
    beat_schedule()


def test_bad_schedule_settings_are_named(monkeypatch):
    from chronox.settings import ConfigError

    monkeypatch.setenv("CHRONOX_GAP_SCAN_CRON", "midnight")
    with pytest.raises(ConfigError, match="CHRONOX_GAP_SCAN_CRON"):
        load_settings()
    monkeypatch.setenv("CHRONOX_GAP_SCAN_CRON", "0 0 * * *")
    monkeypatch.setenv("CHRONOX_ENABLE_SCHEDULER", "sometimes")
    with pytest.raises(ConfigError, match="CHRONOX_ENABLE_SCHEDULER"):
        load_settings()


def test_gap_scan_dispatches_gapped_symbols_but_not_running_ones(db_url, monkeypatch):
    monkeypatch.setenv("CHRONOX_BACKFILL_START", "2024-01-02")
    engine = get_engine(db_url)
    for symbol in ("GAPA", "FULLB", "RUNC", "DEADD"):
        registry.add_symbol(engine, symbol, "flatpack+api")
    registry.add_symbol(engine, "SNAPE", "snapshot")  # no backfilling phase: never scanned
    days = [dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)]
    with engine.begin() as conn:
        upsert(conn, COVERAGE, [{"symbol": "GAPA", "trading_day": days[0], "source": "flatpack", "rows": 500}] +
               [{"symbol": "FULLB", "trading_day": d, "source": "flatpack", "rows": 500} for d in days],
               keys=("symbol", "trading_day", "source"), updates=("rows",))
        table = SymbolRegistry.__table__
        conn.execute(update(table).where(table.c.symbol == "RUNC")
                     .values(status="running", updated_at=NOW - dt.timedelta(hours=1)))
        conn.execute(update(table).where(table.c.symbol == "DEADD")
                     .values(status="running", updated_at=NOW - dt.timedelta(hours=10)))
    result = gap_scan(load_settings(), now=NOW)
    assert result["with_gaps"] == 3
    assert result["skipped_running"] == ["RUNC"]
    assert sorted(result["dispatch"], key=lambda d: d["symbol"]) == [
        {"symbol": "DEADD", "start": "2024-01-02", "end": "2024-01-04", "gaps": 3},
        {"symbol": "GAPA", "start": "2024-01-03", "end": "2024-01-04", "gaps": 2},
    ]
    assert registry.status_of(engine, ["GAPA", "DEADD", "FULLB", "RUNC"]) == {
        "GAPA": "scheduled", "DEADD": "scheduled", "FULLB": "idle", "RUNC": "running"}
    # a second scan right after finds them busy and dispatches nothing twice
    again = gap_scan(load_settings(), now=NOW)
    assert again["dispatch"] == [] and again["skipped_running"] == ["DEADD", "GAPA", "RUNC"]


def test_schedule_and_status_commands(sqlite_url, flatfiles, monkeypatch):
    import json as _json

    from click.testing import CliRunner

    from chronox.cli import cli
    from tests.helpers import write_days

    result = CliRunner().invoke(cli, ["schedule", "--json"])
    jobs = {e["job"]: e for e in _json.loads(result.output)}
    assert set(jobs) == {"nightly_gap_scan", "snapshot_refresh", "stream_monitor", "outbox_drain",
                         "daily_historical", "weekly_backfill", "hourly_refresh", "latest_prices"}
    assert jobs["nightly_gap_scan"]["next_run"].endswith("T00:00:00+00:00")
    bad = CliRunner().invoke(cli, ["schedule", "trigger", "nightly"])
    assert bad.exit_code == 1 and "unknown job 'nightly'" in bad.output
    # trigger the gap scan in-process: it backfills the symbol whose days are missing
    monkeypatch.setenv("CHRONOX_BACKFILL_START", "2024-01-02")
    days = [dt.date(2024, 1, 2), dt.date(2024, 1, 3)]
    expected = write_days(flatfiles, days, ["TRG"])
    engine = get_engine(sqlite_url)
    registry.add_symbol(engine, "TRG", "flatpack")
    registry.add_symbol(engine, "BAD", "flatpack")
    registry.fail(engine, ["BAD"], "boom")
    monkeypatch.setattr("chronox.gaps.last_complete_day", lambda now=None, market="stocks": dt.date(2024, 1, 3))
    run = CliRunner().invoke(cli, ["schedule", "trigger", "nightly_gap_scan"])
    assert run.exit_code == 0, run.output
    assert "TRG: completed" in run.output
    from tests.helpers import count

    assert count(sqlite_url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = 'TRG'") == sum(expected.values())
    status = _json.loads(CliRunner().invoke(cli, ["status", "--json"]).output)
    assert status["by_status"]["completed"] == 2 and status["errors"] == []  # BAD's rerun cleared it
    registry.fail(engine, ["BAD"], "boom")
    registry.mark_stale(engine, ["TRG"], "last bar 2024-01-03T20:59:00Z (5 min ago)")
    status = _json.loads(CliRunner().invoke(cli, ["status", "--json"]).output)
    assert status["by_status"]["error"] == 2
    assert status["errors"] == [{"symbol": "BAD", "error_message": "boom"}]
    assert [s["symbol"] for s in status["stale_streams"]] == ["TRG"]
    assert {s["symbol"]: s["last_backfill"] for s in status["symbols"]}["TRG"] == "2024-01-03"
    text = CliRunner().invoke(cli, ["status"]).output
    assert "error  BAD: boom" in text and "stale  TRG" in text


def test_old_job_id_is_an_alias_listed_and_triggered(sqlite_url, flatfiles, monkeypatch):
    """The registry service's `nightly_gap_detection` runs `nightly_gap_scan`, in-process here."""
    import json as _json

    from click.testing import CliRunner

    from chronox.cli import cli
    from tests.helpers import count, write_days

    result = CliRunner().invoke(cli, ["schedule", "--json"])
    aliases = {e["job"]: e["aliases"] for e in _json.loads(result.output)}
    assert aliases["nightly_gap_scan"] == ["nightly_gap_detection"]
    assert aliases["snapshot_refresh"] == aliases["stream_monitor"] == aliases["outbox_drain"] == []
    [line] = [row for row in CliRunner().invoke(cli, ["schedule"]).output.splitlines() if "nightly_gap" in row]
    assert line.startswith("nightly_gap_scan (alias nightly_gap_detection) ")
    assert line.split()[3] == "chronox.schedule.nightly_gap_scan"
    monkeypatch.setenv("CHRONOX_BACKFILL_START", "2024-01-02")
    expected = write_days(flatfiles, [dt.date(2024, 1, 2), dt.date(2024, 1, 3)], ["OLDID"])
    registry.add_symbol(get_engine(sqlite_url), "OLDID", "flatpack")
    monkeypatch.setattr("chronox.gaps.last_complete_day", lambda *args, **kwargs: dt.date(2024, 1, 3))
    run = CliRunner().invoke(cli, ["schedule", "trigger", "nightly_gap_detection"])
    assert run.exit_code == 0, run.output
    assert "1 symbol(s) with gaps; backfilling 1" in run.output and "OLDID: completed" in run.output
    assert count(sqlite_url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = 'OLDID'") == sum(expected.values())


def test_old_job_id_dispatches_the_new_task_to_its_queue(celery_broker, tmp_path):
    import json as _json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import redis

    chronox = str(Path(sys.executable).with_name("chronox"))  # the installed command
    result = subprocess.run([chronox, "schedule", "trigger", "nightly_gap_detection"],
                            env=dict(os.environ), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "dispatched chronox.schedule.nightly_gap_scan as task " in result.stdout
    [message] = redis.Redis.from_url(celery_broker).lrange("chronox.control", 0, -1)
    assert _json.loads(message)["headers"]["task"] == "chronox.schedule.nightly_gap_scan"
