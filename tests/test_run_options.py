"""`chronox run` options that override settings for one run: they reach every phase task,
in-process and on real workers, because they travel as the tasks' `options` kwarg."""
import datetime as dt
import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from chronox import registry
from chronox.cli import cli
from chronox.db import get_engine
from chronox.sample import day_rows, write_day_file
from chronox.settings import ConfigError, run_settings, validate_run_options
from tests.helpers import count, write_days

DAY = dt.date(2024, 1, 3)
DEAD_KAFKA = "127.0.0.1:1"  # nothing listens: every connection is refused


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_dry_run_shows_the_options_and_leaves_the_stream_phase_out(sqlite_url, flatfiles):
    write_days(flatfiles, [DAY], ["ROA", "ROB"])
    invoke("symbols", "add", "ROA", "--strategy", "flatpack+stream")
    invoke("symbols", "add", "ROB", "--strategy", "stream")
    code, out = invoke("run", "--dry-run", "--json", "--start", DAY.isoformat(), "--end", DAY.isoformat(),
                       "--no-stream", "--publish-mode", "db-first", "--throttle-ms", "5",
                       "--snapshot-method", "agg", "--timeframe", "1m")
    assert code == 0, out
    plan = json.loads(out)
    assert [(s["symbol"], s["phases"]) for s in plan["symbols"]] == [("ROA", ["flatpack"])]
    assert plan["options"] == {"publish_mode": "db-first", "publish_throttle_ms": 5, "snapshot_method": "agg"}
    code, out = invoke("run", "--dry-run", "--start", DAY.isoformat(), "--end", DAY.isoformat())
    assert "ROA: phases flatpack+stream" in out and "ROB: phases stream" in out


@pytest.mark.parametrize("args, message", [
    (("--timeframe", "7m"), "unsupported timeframe '7m'; supported: 1m, 5m, 15m, 1h, 1d"),
    (("--throttle-ms", "-1"), "-1 is not in the range 0<=x<=60000"),
    (("--publish-mode", "kafka"), "'kafka' is not one of 'kafka-first', 'db-first'"),
])
def test_bad_run_options_are_one_line_errors(sqlite_url, args, message):
    code, out = invoke("run", "--dry-run", *args)
    assert code != 0
    assert message in out
    assert "Traceback" not in out


def test_options_from_a_task_call_are_checked():
    assert validate_run_options({"publish_mode": "DB-FIRST", "snapshot_method": None}) == {"publish_mode": "db-first"}
    for bad in ({"kafka_brokers": "elsewhere:9092"}, {"publish_throttle_ms": "10"},
                {"publish_throttle_ms": -5}, {"snapshot_method": "guess"}):
        with pytest.raises(ConfigError):
            run_settings(bad)
    assert run_settings({"publish_throttle_ms": 7}).publish_throttle_ms == 7


def test_publish_mode_reaches_the_day_load_in_process(pg_url, flatfiles, monkeypatch):
    """The environment says kafka-first with an unreachable Kafka, which would fail the load;
    --publish-mode db-first commits the bars and keeps them in the outbox."""
    expected = write_days(flatfiles, [DAY], ["RODB"])
    registry.add_symbol(get_engine(pg_url), "RODB", "flatpack")
    monkeypatch.setenv("CHRONOX_KAFKA_BROKERS", DEAD_KAFKA)
    code, out = invoke("run", "--symbols", "RODB", "--start", DAY.isoformat(), "--end", DAY.isoformat(),
                       "--publish-mode", "db-first", "--json")
    assert code == 0, out
    assert count(pg_url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = 'RODB'") == expected[("RODB", DAY)]
    assert count(pg_url, "SELECT count(*) FROM publish_outbox WHERE symbol = 'RODB'") == 1
    assert registry.get_symbol(get_engine(pg_url), "RODB").status == "completed"


def test_no_stream_and_throttle_in_process(sqlite_url, flatfiles, kafka):
    bars = [r for r in day_rows(DAY, ["ROTH"]) if r[0] == "ROTH"][:6]
    write_day_file(flatfiles, DAY, bars)
    registry.add_symbol(get_engine(sqlite_url), "ROTH", "flatpack+stream")
    started = time.monotonic()
    code, out = invoke("run", "--symbols", "ROTH", "--start", DAY.isoformat(), "--end", DAY.isoformat(),
                       "--no-stream", "--throttle-ms", "200")
    elapsed = time.monotonic() - started
    assert code == 0, out
    envelopes = kafka.json_messages("chronox.backfill.ROTH")
    assert [e["event"] for e in envelopes] == ["bar"] * len(bars) + ["backfill_completed"]
    assert elapsed >= 0.2 * (len(bars) + 1)  # one pause after each bar and after the completion
    assert kafka.json_messages("chronox.stream.ROTH", timeout_ms=1000) == []  # never activated
    code, out = invoke("run", "--symbols", "ROTH", "--start", DAY.isoformat(), "--end", DAY.isoformat())
    assert code == 0, out
    [activated] = kafka.json_messages("chronox.stream.ROTH")
    assert activated["event"] == "stream_activated"


def test_run_options_travel_to_workers(pg_url, flatfiles, start_worker, monkeypatch):
    """The workers' own environment is kafka-first against an unreachable Kafka."""
    days = [DAY, DAY + dt.timedelta(days=1)]
    expected = write_days(flatfiles, days, ["ROW1", "ROW2"])
    for symbol in ("ROW1", "ROW2"):
        registry.add_symbol(get_engine(pg_url), symbol, "flatpack+stream")
    monkeypatch.setenv("CHRONOX_KAFKA_BROKERS", DEAD_KAFKA)
    worker = start_worker(concurrency=2)
    proc = subprocess.run([sys.executable, "-m", "chronox.cli", "run", "--symbols", "ROW1", "ROW2",
                           "--start", days[0].isoformat(), "--end", days[-1].isoformat(), "--publish-mode",
                           "db-first", "--no-stream", "--wait", "--json", "--timeout", "120"],
                          capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr + worker.log()
    summary = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    for symbol in ("ROW1", "ROW2"):
        assert summary["symbols"][symbol]["rows_per_day"] == {d.isoformat(): expected[(symbol, d)] for d in days}
        assert summary["symbols"][symbol]["status"] == "completed"
    assert count(pg_url, "SELECT count(*) FROM publish_outbox") == 4  # committed, waiting for Kafka
    log = worker.log_path.read_text(errors="replace")
    assert "Task chronox.phase.finalize_batch[" in log and "Task chronox.phase.stream[" not in log
