"""Partitioned storage on PostgreSQL: ohlcv_1m by month, partitions made by the writers that
need them, a day's reload confined to its partition, the migration, and tick retention
(on a partitioned table of the test's own, registered as a tick table)."""
from __future__ import annotations

import datetime as dt
import threading
import uuid

import psycopg2
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from chronox import partitions
from chronox.backfill import load_day
from chronox.bars import Bar
from chronox.db import alembic_config, get_engine, upgrade
from chronox.partitions import PARTITION_SCHEMA, Interval, Scheme
from chronox.sample import day_rows, write_day_file
from chronox.settings import ConfigError, Settings, load_settings
from chronox.store import upsert_bars
from tests.helpers import count, empty_database

UTC = dt.UTC


def where(url: str, sql: str, **params) -> list[tuple]:
    with get_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def partition_of_rows(url: str, symbol: str) -> dict[str, int]:
    """Rows of `symbol` per partition they are stored in."""
    return dict(where(url, "SELECT tableoid::regclass::text, count(*) FROM ohlcv_1m WHERE symbol = :s GROUP BY 1",
                      s=symbol))


def test_a_day_load_writes_into_its_month_partitions(pg_url, flatfiles):
    # 2024-01-31 is a winter trading day: its after-hours past 19:00 New York are February in UTC.
    rows = day_rows(dt.date(2024, 1, 31), ["PTNA"])
    write_day_file(flatfiles, dt.date(2024, 1, 31), rows)
    assert "error" not in load_day(load_settings(), "2024-01-31", ["PTNA"])
    february = sum(1 for r in rows if r[6] >= int(dt.datetime(2024, 2, 1, tzinfo=UTC).timestamp()) * 10**9)
    assert 0 < february < len(rows)
    assert partition_of_rows(pg_url, "PTNA") == {f"{PARTITION_SCHEMA}.ohlcv_1m_p202401": len(rows) - february,
                                                 f"{PARTITION_SCHEMA}.ohlcv_1m_p202402": february}


def lock_partition(url: str, name: str) -> psycopg2.extensions.connection:
    """Another session holding `name` in ACCESS EXCLUSIVE mode (nothing may even read it)."""
    holder = psycopg2.connect(url)
    holder.cursor().execute(f'LOCK TABLE "{PARTITION_SCHEMA}"."{name}" IN ACCESS EXCLUSIVE MODE')
    return holder


def load_in_thread(day: str, symbols: list[str]) -> tuple[threading.Thread, list]:
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(load_day(load_settings(), day, symbols)), daemon=True)
    thread.start()
    return thread, outcome


def test_a_reload_touches_only_its_own_partition(pg_url, flatfiles):
    """With January's partition locked by another session, February days load and reload
    (rows changed, so the reload rewrites); a January day waits for the lock."""
    for day in (dt.date(2024, 1, 30), dt.date(2024, 2, 6)):
        write_day_file(flatfiles, day, day_rows(day, ["PTNB", "PTNC"]))
        assert "error" not in load_day(load_settings(), day.isoformat(), ["PTNB", "PTNC"])
    changed = [(t, v + 1, *rest) for t, v, *rest in day_rows(dt.date(2024, 2, 6), ["PTNB", "PTNC"])]
    write_day_file(flatfiles, dt.date(2024, 2, 6), changed)
    write_day_file(flatfiles, dt.date(2024, 2, 7), day_rows(dt.date(2024, 2, 7), ["PTNB"]))
    holder = lock_partition(pg_url, "ohlcv_1m_p202401")
    try:
        reload, outcome = load_in_thread("2024-02-06", ["PTNB", "PTNC"])
        reload.join(30)
        first, first_outcome = load_in_thread("2024-02-07", ["PTNB"])
        first.join(30)
        assert not reload.is_alive() and not first.is_alive(), "a February load waited for January's partition"
        assert outcome[0]["rows"] == len(changed) and "error" not in first_outcome[0]
        january, _ = load_in_thread("2024-01-30", ["PTNB", "PTNC"])
        january.join(2)
        assert january.is_alive()  # the control: January's own reload does need the partition
    finally:
        holder.rollback()
        holder.close()
    january.join(30)
    assert count(pg_url, "SELECT sum(volume) FROM ohlcv_1m WHERE ts >= '2024-02-06 05:00+00' "
                         "AND ts < '2024-02-07 05:00+00'") == sum(r[1] for r in changed)


def test_rows_of_an_unprepared_month_wait_in_the_default_partition_and_move(pg_url):
    engine = get_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO ohlcv_1m (symbol, ts, open, high, low, close, volume, source) "
                          "VALUES ('PTND', '2031-05-03 14:30+00', 1, 1, 1, 1, 1, 'api')"))
    assert partition_of_rows(pg_url, "PTND") == {f"{PARTITION_SCHEMA}.ohlcv_1m_default": 1}
    with engine.begin() as conn:
        assert partitions.ensure_partitions(conn, "ohlcv_1m", dt.date(2031, 5, 1), dt.date(2031, 5, 31)) \
            == ["ohlcv_1m_p203105"]
    assert partition_of_rows(pg_url, "PTND") == {f"{PARTITION_SCHEMA}.ohlcv_1m_p203105": 1}
    with engine.begin() as conn:
        assert partitions.ensure_partitions(conn, "ohlcv_1m", dt.date(2031, 5, 20), dt.date(2031, 5, 20)) == []
    with engine.begin() as conn:  # the month's bounds are UTC midnights
        conn.execute(text("INSERT INTO ohlcv_1m (symbol, ts, open, high, low, close, volume, source) VALUES "
                          "('PTND', '2031-05-01 00:00+00', 1, 1, 1, 1, 1, 'api'), "
                          "('PTND', '2031-05-31 23:59+00', 1, 1, 1, 1, 1, 'api'), "
                          "('PTND', '2031-06-01 00:00+00', 1, 1, 1, 1, 1, 'api')"))
    assert partition_of_rows(pg_url, "PTND") == {f"{PARTITION_SCHEMA}.ohlcv_1m_p203105": 3,
                                                 f"{PARTITION_SCHEMA}.ohlcv_1m_default": 1}


def test_rest_and_stream_upserts_make_the_months_of_their_bars(pg_url):
    bars = [Bar("PTNE", dt.datetime(2032, 7, 31, 23, 59, tzinfo=UTC), 2, 2, 2, 2, 5, None, 1, "stream"),
            Bar("PTNE", dt.datetime(2032, 8, 1, 0, 0, tzinfo=UTC), 2, 2, 2, 2, 5, None, 1, "api")]
    with get_engine(pg_url).begin() as conn:
        assert upsert_bars(conn, bars) == 2
    assert partition_of_rows(pg_url, "PTNE") == {f"{PARTITION_SCHEMA}.ohlcv_1m_p203207": 1,
                                                 f"{PARTITION_SCHEMA}.ohlcv_1m_p203208": 1}


def test_writers_making_the_same_partitions_at_once_make_each_once(pg_url):
    made: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def ensure() -> None:
        try:
            barrier.wait()
            with get_engine(pg_url).begin() as conn:
                made.append(partitions.ensure_partitions(conn, "ohlcv_1m", dt.date(2033, 1, 15), dt.date(2033, 3, 2)))
        except BaseException as exc:  # noqa: B036 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(name for names in made for name in names) == \
        ["ohlcv_1m_p203301", "ohlcv_1m_p203302", "ohlcv_1m_p203303"]


def test_sqlite_keeps_plain_tables(sqlite_url):
    with get_engine(sqlite_url).begin() as conn:
        assert partitions.ensure_partitions(conn, "ohlcv_1m", dt.date(2024, 1, 1), dt.date(2024, 3, 1)) == []
        assert partitions.partitions(conn, "ohlcv_1m") == []
    assert partitions.drop_expired_ticks(Settings(database_url=sqlite_url, tick_retention_days=3)) == \
        {"skipped": "SQLite keeps plain tables: nothing is partitioned"}


# -- tick retention ------------------------------------------------------------------------


@pytest.fixture
def tick_table(pg_url, monkeypatch):
    """A partitioned table of this test, per day as the tick tables are, registered as one."""
    name = f"tick_probe_{uuid.uuid4().hex[:6]}"
    with get_engine(pg_url).begin() as conn:
        conn.execute(text(f"CREATE TABLE {name} (symbol varchar(32) NOT NULL, ts timestamptz NOT NULL, "
                          "price float8, PRIMARY KEY (symbol, ts)) PARTITION BY RANGE (ts)"))
        conn.execute(text(f"CREATE TABLE {PARTITION_SCHEMA}.{name}_default PARTITION OF {name} DEFAULT"))
    monkeypatch.setitem(partitions.SCHEMES, name, Scheme(name, Interval.DAY, tick=True))
    yield name
    with get_engine(pg_url).begin() as conn:
        conn.execute(text(f"DROP TABLE {name}"))


def fill_days(url: str, table: str, first: dt.date, last: dt.date) -> None:
    with get_engine(url).begin() as conn:
        partitions.ensure_partitions(conn, table, first, last)
        day = first
        while day <= last:
            conn.execute(text(f"INSERT INTO {table} VALUES ('AAPL', :ts, 1.5)"),
                         {"ts": dt.datetime.combine(day, dt.time(15), UTC)})
            day += dt.timedelta(days=1)
        conn.execute(text(f"INSERT INTO {table} VALUES ('AAPL', '2001-01-01 00:00+00', 9)"))  # the default's


def days_left(url: str, table: str) -> list[dt.date]:
    return [ts.date() for (ts,) in where(url, f"SELECT ts FROM {table} WHERE price = 1.5 ORDER BY ts")]


def test_retention_drops_the_tick_partitions_older_than_the_setting(pg_url, tick_table):
    fill_days(pg_url, tick_table, dt.date(2024, 3, 1), dt.date(2024, 3, 10))
    with get_engine(pg_url).connect() as conn:
        assert len(partitions.partitions(conn, tick_table)) == 10
    months_before = where(pg_url, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ohlcv_1m'::regclass")

    settings = Settings(database_url=pg_url, tick_retention_days=5)
    result = partitions.drop_expired_ticks(settings, today=dt.date(2024, 3, 10))
    # (the real tick tables, trades and quotes, are registered too: their entries are theirs)
    assert (result["cutoff"], result["dropped"][tick_table]) == \
        ("2024-03-05", [f"{tick_table}_p202403{d:02d}" for d in range(1, 5)])
    assert days_left(pg_url, tick_table) == [dt.date(2024, 3, d) for d in range(5, 11)]
    assert count(pg_url, f"SELECT count(*) FROM {tick_table} WHERE price = 9") == 1  # the default partition stays
    # Minute bars are no ticks: their partitions are never dropped.
    assert where(pg_url, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ohlcv_1m'::regclass") == months_before

    assert partitions.drop_expired_ticks(settings, today=dt.date(2024, 3, 10))["dropped"][tick_table] == []
    assert partitions.drop_expired_ticks(Settings(database_url=pg_url), today=dt.date(2024, 3, 20)) == \
        {"skipped": "CHRONOX_TICK_RETENTION_DAYS is unset: tick partitions are kept"}
    assert len(days_left(pg_url, tick_table)) == 6


def test_the_tick_retention_job_runs_from_the_schedule(pg_url, tick_table, monkeypatch):
    from chronox.cli import cli

    today = dt.datetime.now(UTC).date()
    fill_days(pg_url, tick_table, today - dt.timedelta(days=6), today)
    monkeypatch.setenv("CHRONOX_TICK_RETENTION_DAYS", "3")
    result = CliRunner().invoke(cli, ["schedule", "trigger", "tick_retention"])
    assert result.exit_code == 0, result.output
    assert days_left(pg_url, tick_table) == [today - dt.timedelta(days=d) for d in (3, 2, 1, 0)]


def test_the_beat_entry_exists_only_with_a_retention():
    from chronox.tasks.config import celery_config

    assert "tick_retention" not in celery_config(Settings())["beat_schedule"]
    entry = celery_config(Settings(tick_retention_days=30))["beat_schedule"]["tick_retention"]
    assert (entry["task"], entry["options"]["queue"]) == ("chronox.schedule.tick_retention", "chronox.control")


@pytest.mark.parametrize("value,expected", [("30", 30), ("0", None), ("-1", ConfigError), ("a week", ConfigError)])
def test_the_retention_setting(value, expected):
    environ = {"CHRONOX_TICK_RETENTION_DAYS": value}
    if expected is ConfigError:
        with pytest.raises(ConfigError, match="CHRONOX_TICK_RETENTION_DAYS"):
            load_settings(environ)
    else:
        assert load_settings(environ).tick_retention_days == expected


# -- the migration -------------------------------------------------------------------------


@pytest.fixture
def private_url():
    with empty_database("chronox_test_partitions") as url:
        yield url


def test_the_migration_partitions_ohlcv_1m_with_its_rows_key_and_indexes(private_url):
    from alembic import command

    upgrade(private_url, "0009")
    rows = [("AAPL", "2023-12-31 23:59:00+00", 1.0), ("AAPL", "2024-01-01 00:00:00+00", 2.0),
            ("MSFT", "2024-03-15 14:30:00+00", 3.0)]
    with get_engine(private_url).begin() as conn:
        for symbol, ts, price in rows:
            conn.execute(text("INSERT INTO ohlcv_1m (symbol, ts, open, high, low, close, volume, source) "
                              "VALUES (:s, :ts, :p, :p, :p, :p, 10, 'flatpack')"), {"s": symbol, "ts": ts, "p": price})
        conn.execute(text("CREATE INDEX ix_ohlcv_1m_source ON ohlcv_1m (source, ts)"))

    def state() -> tuple:
        stored = where(private_url, "SELECT symbol, ts, open FROM ohlcv_1m ORDER BY symbol, ts")
        kind = where(private_url, "SELECT relkind FROM pg_class WHERE oid = 'ohlcv_1m'::regclass")[0][0]
        indexes = dict(where(private_url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ohlcv_1m'"))
        return [(s, ts.astimezone(UTC), p) for s, ts, p in stored], kind, indexes

    before, kind, indexes = state()
    assert kind == "r" and set(indexes) == {"ohlcv_1m_pkey", "ix_ohlcv_1m_source"}
    upgrade(private_url)
    after, kind, partitioned_indexes = state()
    assert (after, kind) == (before, "p")
    assert set(partitioned_indexes) == set(indexes) and "(symbol, ts)" in partitioned_indexes["ohlcv_1m_pkey"]
    assert partition_of_rows(private_url, "AAPL") == {f"{PARTITION_SCHEMA}.ohlcv_1m_p202312": 1,
                                                      f"{PARTITION_SCHEMA}.ohlcv_1m_p202401": 1}
    with get_engine(private_url).connect() as conn:
        assert [n for n, _ in partitions.partitions(conn, "ohlcv_1m")] == \
            ["ohlcv_1m_p202312", "ohlcv_1m_p202401", "ohlcv_1m_p202403"]
    with pytest.raises(Exception, match="duplicate key"), get_engine(private_url).begin() as conn:
        conn.execute(text("INSERT INTO ohlcv_1m (symbol, ts, open, high, low, close, volume, source) "
                          "VALUES ('AAPL', '2024-01-01 00:00+00', 5, 5, 5, 5, 5, 'api')"))

    command.downgrade(alembic_config(private_url), "0009")
    assert state() == (before, "r", indexes)
    assert where(private_url, "SELECT count(*) FROM pg_namespace WHERE nspname = :n", n=PARTITION_SCHEMA) == [(0,)]
    upgrade(private_url)
    assert state()[:2] == (before, "p")
