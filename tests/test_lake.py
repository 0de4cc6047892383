"""The Parquet lake sink: written after the commit from committed rows, one file per
symbol-day in Hive partitions, read back row for row with pyarrow.dataset (locally and on
S3 through moto's server), unchanged days left alone, changed ones rewritten, lag shown,
and a lake that is down never blocks or fails a load on real workers."""
import datetime as dt
import json
import socket

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from chronox import registry
from chronox.bars import Bar
from chronox.calendar import NYSE, calendar_for
from chronox.cli import cli
from chronox.db import get_engine
from chronox.sample import day_rows, write_day_file
from chronox.settings import load_settings
from chronox.sinks import frames
from chronox.sinks.dispatch import stream_day
from chronox.sinks.lake import Lake, sync_bars
from chronox.sinks.state import sink_report
from chronox.store import upsert_bars
from tests.conftest import DAYS
from tests.helpers import count, wait_for_statuses, wait_until, write_days

pytestmark = pytest.mark.timeout(180)
SYMBOLS = ["LKA", "LKB"]


def run(*args):
    result = CliRunner().invoke(cli, list(args))
    return result


def chronox_run(symbols, first=DAYS[0], last=DAYS[-1]):
    args = ["run"]
    for s in symbols:
        args += ["--symbols", s]
    result = run(*args, "--start", first.isoformat(), "--end", last.isoformat())
    assert result.exit_code == 0, result.output
    return result


def db_rows(url, symbols=None):
    """Every bar in the database as the lake's rows: (symbol, ts UTC, o, h, l, c, v, vwap, n, source)."""
    where = "" if symbols is None else "WHERE symbol IN (" + ", ".join(f"'{s}'" for s in symbols) + ")"
    with get_engine(url).connect() as conn:
        rows = conn.execute(text(f"SELECT symbol, ts, open, high, low, close, volume, vwap, transactions, source "
                                 f"FROM ohlcv_1m {where} ORDER BY symbol, ts")).all()
    out = []
    for r in rows:
        ts = r[1] if not isinstance(r[1], str) else dt.datetime.fromisoformat(r[1])
        out.append((r[0], ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC), *r[2:]))
    return out


def lake_rows(dataset):
    table = dataset.to_table(columns=list(frames.COLUMNS)).sort_by([("symbol", "ascending"), ("ts", "ascending")])
    return [tuple(row.values()) for row in table.to_pylist()]


@pytest.fixture
def lake_dir(tmp_path, monkeypatch):
    root = tmp_path / "lake"
    monkeypatch.setenv("CHRONOX_LAKE_URL", str(root))
    return root


def test_lake_holds_the_committed_bars_row_for_row_and_reruns_leave_the_bytes(db_url, flatfiles, lake_dir):
    write_days(flatfiles, DAYS, SYMBOLS + ["NOTREG"])
    engine = get_engine(db_url)
    for s in SYMBOLS:
        registry.add_symbol(engine, s, "flatpack")
    chronox_run(SYMBOLS)

    files = sorted(p.relative_to(lake_dir).as_posix() for p in lake_dir.rglob("*") if p.is_file())
    assert files == [f"bars/market=stocks/tf=1m/symbol={s}/date={d.isoformat()}/part-0.parquet"
                     for s in SYMBOLS for d in DAYS]
    dataset = ds.dataset(str(lake_dir / "bars"), format="parquet", partitioning="hive")
    assert dataset.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert {f.name for f in dataset.schema} == {*frames.COLUMNS, "market", "tf", "date"}
    assert lake_rows(dataset) == db_rows(db_url, SYMBOLS)
    assert len(db_rows(db_url, SYMBOLS)) > 1000
    # every file is one symbol-day: its rows lie in that New York day
    one = dataset.to_table(filter=(ds.field("symbol") == "LKA") & (ds.field("date") == DAYS[1].isoformat()))
    assert one.num_rows == count(db_url, "SELECT rows FROM coverage WHERE symbol = 'LKA' AND trading_day = :d",
                                 d=DAYS[1])
    assert count(db_url, "SELECT count(*) FROM sink_state WHERE sink = 'lake'") == len(SYMBOLS) * len(DAYS)

    before = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in lake_dir.rglob("*.parquet")}
    chronox_run(SYMBOLS)  # nothing changed: nothing rewritten
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in lake_dir.rglob("*.parquet")} == before
    assert not [p for p in lake_dir.rglob("*") if p.name.startswith(".")]  # no temporary file left

    # the same rows written again give the same bytes
    with get_engine(db_url).begin() as conn:
        conn.execute(text("DELETE FROM sink_state"))
    result = sync_bars(load_settings(), SYMBOLS, DAYS)
    assert result.written == len(SYMBOLS) * len(DAYS)
    assert {p: p.read_bytes() for p in before} == {p: b for p, (b, _, _) in before.items()}

    check = run("lake", "check", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat())
    assert check.exit_code == 0, check.output
    assert "6 symbol-day(s)" in check.output and "0 difference(s)" in check.output


def test_a_changed_day_is_rewritten_the_others_are_not_and_status_shows_the_lag(pg_url, flatfiles, lake_dir,
                                                                                 monkeypatch):
    write_days(flatfiles, DAYS, SYMBOLS)
    engine = get_engine(pg_url)
    for s in SYMBOLS:
        registry.add_symbol(engine, s, "flatpack")
    chronox_run(SYMBOLS)
    changed_file = lake_dir / f"bars/market=stocks/tf=1m/symbol=LKA/date={DAYS[1].isoformat()}/part-0.parquet"
    kept_file = lake_dir / f"bars/market=stocks/tf=1m/symbol=LKB/date={DAYS[1].isoformat()}/part-0.parquet"
    kept = (kept_file.read_bytes(), kept_file.stat().st_mtime_ns)

    # Polygon republishes the day file with LKA's bars changed (fewer and other prices).
    rows = day_rows(DAYS[1], SYMBOLS)
    republished = [r for r in rows if r[0] != "LKA"] + [
        (r[0], r[1], r[2] + 1, r[3] + 1, r[4] + 1, r[5] + 1, *r[6:]) for r in rows if r[0] == "LKA"][:-10]
    write_day_file(flatfiles, DAYS[1], republished)
    monkeypatch.delenv("CHRONOX_LAKE_URL")  # reloaded while the lake is off: the lake lags
    chronox_run(SYMBOLS, DAYS[1], DAYS[1])
    monkeypatch.setenv("CHRONOX_LAKE_URL", str(lake_dir))
    lag = sink_report(load_settings())["lake"]  # both symbols' day was reloaded; the lake has seen neither
    assert (lag["lagging"], lag["examples"]) == (2, [f"LKA {DAYS[1].isoformat()}", f"LKB {DAYS[1].isoformat()}"])
    status = run("status")
    assert "sink   lake lags the database on 2 of 6 symbol-day(s)" in status.output, status.output
    check = run("lake", "check", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat(), "--json")
    assert check.exit_code == 1
    lka_rows = count(pg_url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = 'LKA' AND ts >= :a AND ts < :b",
                     a=NYSE.day_bounds(DAYS[1])[0], b=NYSE.day_bounds(DAYS[1])[1])
    assert json.loads(check.output)["differences"] == [
        {"symbol": "LKA", "day": DAYS[1].isoformat(), "database": lka_rows, "lake": lka_rows + 10}]

    chronox_run(SYMBOLS, DAYS[1], DAYS[1])  # the lake is back: the finalize sends the sinks
    assert sink_report(load_settings())["lake"]["lagging"] == 0
    assert (kept_file.read_bytes(), kept_file.stat().st_mtime_ns) == kept
    table = ds.dataset(str(changed_file), format="parquet").to_table()
    assert [tuple(r.values()) for r in table.to_pylist()] == \
        [r for r in db_rows(pg_url, ["LKA"]) if NYSE.day_bounds(DAYS[1])[0] <= r[1]
         < NYSE.day_bounds(DAYS[1])[1]]
    assert run("lake", "check", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat()).exit_code == 0


def test_stream_bars_reach_the_lake_once_their_day_is_over(pg_url, lake_dir):
    engine = get_engine(pg_url)
    registry.add_symbol(engine, "LKS", "stream")
    registry.add_symbol(engine, "LKN", "flatpack")
    day = dt.date(2024, 1, 3)
    start = NYSE.day_bounds(day)[0] + dt.timedelta(hours=10)
    bars = [Bar("LKS", start + dt.timedelta(minutes=i), 10 + i, 11 + i, 9 + i, 10.5 + i, 100, None, None, "stream")
            for i in range(30)]
    with engine.begin() as conn:
        upsert_bars(conn, bars)
    # 20:30 New York on Jan 3: that day's extended session is over, Jan 4's has not begun
    now = dt.datetime(2024, 1, 4, 1, 30, tzinfo=dt.UTC)
    assert calendar_for("stocks").last_complete_day(now) == day
    sent = []
    result = stream_day(load_settings(), lambda settings, symbol, days: sent.append((symbol, days)) or
                        sync_bars(settings, [symbol], days), now=now)
    assert result == {"days": {"stocks": day.isoformat()}, "symbols": 1, "sinks": ["lake"]}
    assert sent == [("LKS", [day.isoformat()])]
    table = ds.dataset(str(lake_dir / "bars"), format="parquet", partitioning="hive").to_table()
    assert table.column("symbol").to_pylist() == ["LKS"] * 30
    assert table.column("source").to_pylist() == ["stream"] * 30
    assert table.column("vwap").null_count == 30


def test_beat_schedules_the_sink_jobs_only_when_a_sink_is_on(monkeypatch, tmp_path):
    import importlib

    import celeryconfig

    assert "sink_stream_day" not in importlib.reload(celeryconfig).beat_schedule
    monkeypatch.setenv("CHRONOX_LAKE_URL", str(tmp_path))
    schedule = importlib.reload(celeryconfig).beat_schedule
    entry = schedule["sink_stream_day"]
    assert entry["task"] == "chronox.sink.stream_day" and entry["options"]["queue"] == "chronox.control"
    assert (entry["schedule"]._orig_minute, entry["schedule"]._orig_hour) == ("30", "1")
    routes = celeryconfig.task_routes
    assert routes["chronox.sink.*"]["queue"] == "chronox.sinks"
    monkeypatch.delenv("CHRONOX_LAKE_URL")
    importlib.reload(celeryconfig)


@pytest.fixture
def moto_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(port):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="lake-key",
                 aws_secret_access_key="lake-secret", region_name="us-east-1").create_bucket(Bucket="lake")
    return server


def s3_lake_env(monkeypatch, port):
    monkeypatch.setenv("CHRONOX_LAKE_URL", "s3://lake/prod")
    monkeypatch.setenv("CHRONOX_LAKE_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CHRONOX_LAKE_S3_ACCESS_KEY_ID", "lake-key")
    monkeypatch.setenv("CHRONOX_LAKE_S3_SECRET_ACCESS_KEY", "lake-secret")


def s3_dataset(port):
    import s3fs

    fs = s3fs.S3FileSystem(key="lake-key", secret="lake-secret", endpoint_url=f"http://127.0.0.1:{port}",
                           skip_instance_cache=True)
    return fs, ds.dataset("lake/prod/bars", filesystem=fs, format="parquet", partitioning="hive")


def test_lake_on_s3_reads_back_row_for_row(pg_url, flatfiles, moto_port, monkeypatch):
    server = start_moto(moto_port)
    try:
        s3_lake_env(monkeypatch, moto_port)
        write_days(flatfiles, DAYS, SYMBOLS)
        for s in SYMBOLS:
            registry.add_symbol(get_engine(pg_url), s, "flatpack")
        chronox_run(SYMBOLS)
        fs, dataset = s3_dataset(moto_port)
        assert lake_rows(dataset) == db_rows(pg_url, SYMBOLS)
        keys = sorted(fs.find("lake/prod"))
        assert keys == [f"lake/prod/bars/market=stocks/tf=1m/symbol={s}/date={d.isoformat()}/part-0.parquet"
                        for s in SYMBOLS for d in DAYS]
        assert Lake.from_settings(load_settings()).read(keys[0]) == fs.cat_file(keys[0])
        check = run("lake", "check", "--symbols", "LKA", "--start", DAYS[0].isoformat(), "--end",
                    DAYS[-1].isoformat())
        assert check.exit_code == 0 and "3 symbol-day(s)" in check.output, check.output
    finally:
        server.stop()


def test_a_lake_that_is_down_neither_blocks_nor_fails_the_load_and_catches_up(
        pg_url, flatfiles, moto_port, start_worker, celery_client, monkeypatch):
    s3_lake_env(monkeypatch, moto_port)  # nothing listens there yet: S3 is down
    write_days(flatfiles, DAYS, SYMBOLS)
    engine = get_engine(pg_url)
    for s in SYMBOLS:
        registry.add_symbol(engine, s, "flatpack")
    worker = start_worker(concurrency=2)
    celery_client.send_task("chronox.registry.execute", kwargs={
        "symbols": SYMBOLS, "start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()})
    assert wait_for_statuses(pg_url, SYMBOLS, timeout=60) == {s: "completed" for s in SYMBOLS}
    assert all(registry.get_symbol(engine, s).error_message is None or "sink" not in
               registry.get_symbol(engine, s).error_message for s in SYMBOLS)
    loaded = db_rows(pg_url, SYMBOLS)
    wait_until(lambda: "chronox.sink.lake" in worker.log() and "retry" in worker.log().lower(), 30,
               "a sink task retrying while S3 is down")
    assert count(pg_url, "SELECT count(*) FROM sink_state") == 0
    assert sink_report(load_settings())["lake"]["lagging"] == len(SYMBOLS) * len(DAYS)
    server = start_moto(moto_port)  # S3 is back: the sink tasks' retries get through
    try:
        wait_until(lambda: count(pg_url, "SELECT count(*) FROM sink_state WHERE sink = 'lake'")
                   == len(SYMBOLS) * len(DAYS), 90, "the lake sink caught up", interval=0.5)
        _, dataset = s3_dataset(moto_port)
        assert lake_rows(dataset) == loaded == db_rows(pg_url, SYMBOLS)
        assert sink_report(load_settings())["lake"]["lagging"] == 0
        assert "lake-secret" not in worker.log()
    finally:
        server.stop()
