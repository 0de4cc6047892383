"""What users of the registry service ChronoX replaces rely on: the fields of its events,
ad-hoc runs of symbols that are not registered, and a failed step called by hand.

Events are read back from Kafka and checked field by field, as that service's
consumers parse them."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from chronox import registry
from chronox.cli import _expand_variadic, cli
from chronox.db import get_engine
from tests.conftest import REPO
from tests.helpers import count, rows_by_symbol_day, wait_until, write_days

pytestmark = pytest.mark.timeout(180)

D = dt.date
DAYS = [D(2024, 1, 2), D(2024, 1, 3), D(2024, 1, 4)]
UTC = dt.UTC


def iso_utc(text_value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text_value.replace("Z", "+00:00"))
    assert moment.utcoffset() == dt.timedelta(0), text_value
    return moment


def completion(kafka, symbol: str) -> dict:
    [event] = [e for e in kafka.json_messages(f"chronox.backfill.{symbol}", timeout_ms=1500)
               if e.get("event") == "backfill_completed"]
    return event


def invoke(*args: str) -> tuple[int, str]:
    """As `chronox ARGS` would run: `--symbols A B` expanded like the console script does."""
    result = CliRunner().invoke(cli, _expand_variadic(list(args)))
    return result.exit_code, result.output


def test_completion_event_carries_the_registry_services_fields(pg_url, flatfiles, polygon, kafka):
    symbol = "LGCA"
    flat = write_days(flatfiles, DAYS, [symbol])
    polygon.set_ticker_details(symbol, {"name": "Legacy Corp."})
    polygon.add_dividends(symbol, [{"ex_dividend_date": "2023-11-10", "cash_amount": 0.24},
                                   {"ex_dividend_date": "2023-08-11", "cash_amount": 0.22}])
    polygon.add_splits(symbol, [{"execution_date": "2020-08-31", "split_from": 1, "split_to": 4}])
    polygon.add_daily_bars(symbol, [{"t": int(dt.datetime(d.year, d.month, d.day, 5, tzinfo=UTC).timestamp() * 1000),
                                     "o": 10, "h": 11, "l": 9, "c": 10.5, "v": 1000, "vw": 10.2, "n": 12}
                                    for d in DAYS])
    registry.add_symbol(get_engine(pg_url), symbol, "flatpack+api")
    before = dt.datetime.now(UTC).replace(microsecond=0)
    code, output = invoke("run", "--symbols", symbol, "--start", "2024-01-02", "--end", "2024-01-04")
    assert code == 0, output
    event = completion(kafka, symbol)
    # ChronoX's own fields stay
    assert (event["event"], event["status"], event["version"]) == ("backfill_completed", "completed", "v1")
    # the registry service's fields, with its meanings
    assert (event["symbol"], event["strategy"], event["phase"]) == (symbol, "flatpack+api", "completed")
    assert before <= iso_utc(event["timestamp"]) <= dt.datetime.now(UTC)
    assert event["results"] == {
        "reference": {symbol: True},
        "corporate_actions": {"dividends": 2, "splits": 1},
        "daily_bars": {symbol: 3},
        "minute_bars": {symbol: sum(flat.values())},
    }
    assert event["rows"] == sum(flat.values()) == count(pg_url, "SELECT count(*) FROM ohlcv_1m")


def test_a_failed_step_shows_as_failed_in_results_not_as_zero(pg_url, flatfiles, polygon, kafka):
    symbol = "LGCB"
    write_days(flatfiles, DAYS[:1], [symbol])
    # no ticker details and no daily bars on the stand-in: Polygon answers 404 / an empty list;
    # dividends come back malformed (a permanent failure, not retried)
    polygon.inject("/v3/reference/dividends", "malformed")
    registry.add_symbol(get_engine(pg_url), symbol, "flatpack")
    code, output = invoke("run", "--symbols", symbol, "--start", "2024-01-02", "--end", "2024-01-02")
    assert code == 2, output  # the symbol ends in error
    event = completion(kafka, symbol)
    results = event["results"]
    assert results["reference"] == {symbol: False}
    assert results["corporate_actions"]["error"].startswith("chronox.rest.corporate_actions failed: ")
    assert "dividends" not in results["corporate_actions"]  # no count that would read as "none"
    assert results["daily_bars"] == {symbol: 0}
    assert set(results["errors"]) == {"reference", "corporate_actions"}
    assert "404" in results["errors"]["reference"]
    assert event["status"] == "error"


def test_snapshot_and_activation_events_carry_the_registry_services_fields(pg_url, polygon, kafka):
    engine = get_engine(pg_url)
    registry.add_symbol(engine, "LGSN", "snapshot+stream")
    polygon.set_snapshot("LGSN", price=12.5, volume=300, updated_ns=1_704_207_600_000_000_000)
    code, output = invoke("run", "--symbols", "LGSN", "--start", "2024-01-02", "--end", "2024-01-02")
    assert code == 0, output
    [snap] = kafka.json_messages("chronox.snapshot.LGSN", timeout_ms=1500)
    assert (snap["symbol"], snap["strategy"], snap["phase"], snap["count"]) == \
        ("LGSN", "snapshot+stream", "completed", 1)
    assert (snap["event"], snap["price"]) == ("snapshot", 12.5)
    iso_utc(snap["timestamp"])
    [activation] = kafka.json_messages("chronox.stream.LGSN", timeout_ms=1500)
    assert (activation["symbol"], activation["strategy"], activation["action"]) == \
        ("LGSN", "snapshot+stream", "activate")
    assert activation["event"] == "stream_activated" and iso_utc(activation["timestamp"]) == iso_utc(activation["ts"])


def test_ad_hoc_run_of_unregistered_symbols_leaves_data_and_events_but_no_registry_row(sqlite_url, flatfiles, kafka):
    flat = write_days(flatfiles, DAYS, ["ADHA", "ADHB", "OTHER"])
    code, output = invoke("run", "--symbols", "ADHA", "ADHB", "--start", "2024-01-02", "--end", "2024-01-04")
    assert code != 0 and "not registered: ADHA, ADHB" in output and "--strategy" in output
    assert count(sqlite_url, "SELECT count(*) FROM ohlcv_1m") == 0

    code, output = invoke("run", "--symbols", "ADHA", "ADHB", "--strategy", "flatpack", "--start", "2024-01-02",
                          "--end", "2024-01-04", "--json")
    assert code == 0, output
    summary = json.loads(output[output.index("\n{") + 1:])
    expected = {(s, d.isoformat()): flat[(s, d)] for s in ("ADHA", "ADHB") for d in DAYS}
    assert rows_by_symbol_day(sqlite_url) == expected
    for symbol in ("ADHA", "ADHB"):
        assert summary["symbols"][symbol]["status"] == "completed"
        assert summary["symbols"][symbol]["rows_per_day"] == {d.isoformat(): flat[(symbol, d)] for d in DAYS}
        event = completion(kafka, symbol)
        assert (event["status"], event["strategy"], event["rows"]) == \
            ("completed", "flatpack", sum(flat[(symbol, d)] for d in DAYS))
        assert event["results"]["minute_bars"] == {symbol: event["rows"]}
    assert count(sqlite_url, "SELECT count(*) FROM symbol_registry") == 0
    assert count(sqlite_url, "SELECT count(*) FROM coverage") == 6


def test_celery_call_backfill_with_a_strategy_runs_an_unregistered_symbol(pg_url, flatfiles, kafka, start_worker,
                                                                          celery_client):
    flat = write_days(flatfiles, DAYS[:2], ["ADHC"])
    start_worker(concurrency=2)
    celery_client.send_task("chronox.backfill", args=["ADHC"],
                            kwargs={"start": "2024-01-02", "end": "2024-01-03", "strategy": "flatpack"})
    event = wait_until(lambda: [e for e in kafka.json_messages("chronox.backfill.ADHC", timeout_ms=500)
                                if e.get("event") == "backfill_completed"], timeout=60, what="the completion event")[0]
    assert (event["status"], event["rows"]) == ("completed", sum(flat.values()))
    assert rows_by_symbol_day(pg_url) == {("ADHC", d.isoformat()): flat[("ADHC", d)] for d in DAYS[:2]}
    assert count(pg_url, "SELECT count(*) FROM symbol_registry") == 0
    # without a strategy the same call is an error for an unregistered symbol
    failed = celery_client.send_task("chronox.backfill", args=["ADHD"], kwargs={"start": "2024-01-02"})
    failed.get(timeout=30, propagate=False)
    assert failed.state == "FAILURE" and "not registered: ADHD" in str(failed.result)


def test_a_rest_step_called_by_hand_that_fails_ends_in_failure(pg_url, polygon, start_worker, celery_client):
    registry.add_symbol(get_engine(pg_url), "HANDF", "flatpack")
    polygon.inject("/v3/reference/dividends", "malformed")
    start_worker(concurrency=1)
    result = celery_client.send_task("chronox.rest.corporate_actions", kwargs={"symbol": "HANDF"})
    result.get(timeout=60, propagate=False)
    assert result.state == "FAILURE"
    assert "malformed response to dividends of HANDF" in str(result.result)
    row = wait_until(lambda: (r := registry.get_symbol(get_engine(pg_url), "HANDF")).status == "error" and r,
                     timeout=20, what="the error on the registry row")
    assert row.error_message.startswith("chronox.rest.corporate_actions failed: PolygonError: malformed response")
    with get_engine(pg_url).connect() as conn:
        assert conn.execute(text("SELECT outcome FROM run_steps WHERE symbol = 'HANDF' "
                                 "AND step = 'corporate_actions'")).scalar() == "error"


def test_run_wait_follows_an_ad_hoc_run_on_the_workers(pg_url, flatfiles, kafka, start_worker):
    import os
    import subprocess
    import sys

    flat = write_days(flatfiles, DAYS[:2], ["ADHW"])
    start_worker(concurrency=2)
    proc = subprocess.run([sys.executable, "-m", "chronox.cli", "run", "--symbols", "ADHW", "--strategy", "flatpack",
                           "--start", "2024-01-02", "--end", "2024-01-03", "--wait", "--json"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ), cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    assert summary["symbols"]["ADHW"]["status"] == "completed"
    assert summary["symbols"]["ADHW"]["rows_per_day"] == {d.isoformat(): flat[("ADHW", d)] for d in DAYS[:2]}
    assert count(pg_url, "SELECT count(*) FROM symbol_registry") == 0
