"""End to end: real Celery workers on the Redis broker, PostgreSQL, the mock Kafka broker,
flat files from a local directory and from S3 (moto's server)."""
import gzip
import json
import os
import subprocess
import sys

import pytest

from chronox import registry
from chronox.db import get_engine
from chronox.rest import SKIP_WARNING
from chronox.sources.flatfiles import relative_path
from tests.conftest import DAYS
from tests.helpers import count, rows_by_symbol_day, wait_for_statuses, write_days


def add_bad_row(root, day, symbol):
    path = root / relative_path(day)
    text = gzip.decompress(path.read_bytes()).decode()
    text += f"{symbol},100,10,10,9,9,1704200000000000000,3\n"  # high below open: quarantined
    path.write_bytes(gzip.compress(text.encode()))


def assert_end_state(url, kafka, symbols, expected, quarantined):
    got = rows_by_symbol_day(url)
    want = {(s, d.isoformat()): expected[(s, d)] for s in symbols for d in DAYS}
    assert got == want
    assert count(url, "SELECT count(*) FROM coverage") == len(symbols) * len(DAYS)
    assert count(url, "SELECT count(*) FROM quarantine") == quarantined
    engine = get_engine(url)
    for s in symbols:
        row = registry.get_symbol(engine, s)
        # flat files only (no POLYGON_API_KEY): the REST steps were skipped, which the row says
        assert (row.status, row.last_backfill, row.error_message) == \
            ("completed", DAYS[-1], SKIP_WARNING)
        envelopes = kafka.json_messages(f"chronox.backfill.{s}")
        bars = [e for e in envelopes if e["event"] == "bar"]
        assert len(bars) == sum(expected[(s, d)] for d in DAYS)
        assert len({e["dedup_key"] for e in bars}) == len(bars)
        [done] = [e for e in envelopes if e["event"] == "backfill_completed"]
        assert done["rows"] == len(bars) and done["days"] == len(DAYS)


def test_registry_execute_on_real_workers_from_a_local_directory(pg_url, flatfiles, kafka, start_worker, celery_client):
    symbols = ["E2A", "E2B"]
    expected = write_days(flatfiles, DAYS, symbols + ["OTHER"])
    add_bad_row(flatfiles, DAYS[1], "E2A")
    engine = get_engine(pg_url)
    registry.add_symbol(engine, "E2A", "flatpack")
    registry.add_symbol(engine, "E2B", "flatpack")
    registry.add_symbol(engine, "E2OFF", "flatpack", enabled=False)
    start_worker(concurrency=2)
    result = celery_client.send_task("chronox.registry.execute", kwargs={
        "symbols": None, "start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()})
    plan = result.get(timeout=60)
    assert sorted(s["symbol"] for s in plan["symbols"]) == symbols
    assert list(plan["days"]) == [d.isoformat() for d in DAYS]
    assert wait_for_statuses(pg_url, symbols) == {"E2A": "completed", "E2B": "completed"}
    assert_end_state(pg_url, kafka, symbols, expected, quarantined=1)
    assert registry.get_symbol(engine, "E2OFF").status == "idle"


@pytest.fixture
def s3_flatfiles(tmp_path, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("CHRONOX_FLATFILES_URL", "s3://flatfiles")
    monkeypatch.setenv("CHRONOX_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("CHRONOX_S3_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("CHRONOX_S3_SECRET_ACCESS_KEY", "test-secret-key")
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test-access-key",
                          aws_secret_access_key="test-secret-key", region_name="us-east-1")
    client.create_bucket(Bucket="flatfiles")
    local = tmp_path / "upload"

    def upload(days, tickers):
        expected = write_days(local, days, tickers)
        for path in local.rglob("*.csv.gz"):
            client.upload_file(str(path), "flatfiles", str(path.relative_to(local)))
        return expected

    yield upload
    server.stop()


def test_backfill_through_celery_call_from_s3(pg_url, s3_flatfiles, kafka, start_worker, celery_client):
    symbols = ["S3A"]
    expected = s3_flatfiles(DAYS, symbols + ["S3OTHER"])
    registry.add_symbol(get_engine(pg_url), "S3A", "flatpack")
    worker = start_worker(concurrency=2)
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "chronox", "call", "chronox.backfill",
         "--args", json.dumps(["S3A"]),
         "--kwargs", json.dumps({"start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()})],
        capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.strip()
    assert wait_for_statuses(pg_url, symbols) == {"S3A": "completed"}, worker.log()
    assert_end_state(pg_url, kafka, symbols, expected, quarantined=0)
    result = celery_client.AsyncResult(task_id).get(timeout=30)
    assert result["days"] == {d.isoformat(): ["S3A"] for d in DAYS}
    assert "test-secret-key" not in worker.log()


def test_chronox_run_wait_follows_a_distributed_run(pg_url, flatfiles, kafka, start_worker):
    expected = write_days(flatfiles, DAYS[:2], ["RWA"])
    registry.add_symbol(get_engine(pg_url), "RWA", "flatpack")
    start_worker(concurrency=1)
    proc = subprocess.run([sys.executable, "-m", "chronox.cli", "run", "--symbols", "RWA", "--start",
                           DAYS[0].isoformat(), "--end", DAYS[1].isoformat(), "--wait", "--json"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    assert summary["symbols"]["RWA"]["rows_per_day"] == {d.isoformat(): expected[("RWA", d)] for d in DAYS[:2]}
    assert summary["symbols"]["RWA"]["status"] == "completed"
