"""The rollups ohlcv_5m, ohlcv_15m and ohlcv_1h on both databases: views in migrations
0003-0006, tables kept current by every writer from 0007 on (chronox.rollups)."""
from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import DateTime, bindparam, insert, inspect, text

from alembic import command
from chronox import rollups
from chronox.db import alembic_config, get_engine, upgrade
from chronox.models import Ohlcv1m
from tests.helpers import empty_database

UTC = dt.UTC
VIEWS = ("ohlcv_5m", "ohlcv_15m", "ohlcv_1h")
COLUMNS = "symbol, bucket, open, high, low, close, volume, bars"


def utc(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def bar(symbol: str, stamp: str, o: float, h: float, low: float, c: float, v: float) -> dict:
    return {"symbol": symbol, "ts": utc(stamp), "open": o, "high": h, "low": low, "close": c,
            "volume": v, "vwap": None, "transactions": 1, "source": "flatpack"}


# RLUPA: a lone bar before a bucket boundary, a bucket with minutes missing inside it,
# bars on both sides of an hour boundary, and an hour crossing midnight UTC.
# RLUPB: the same minutes as RLUPA, to show symbols never share a bucket.
BARS = [
    bar("RLUPA", "2024-01-02 14:29", 10.0, 11.0, 9.0, 10.5, 100),
    bar("RLUPA", "2024-01-02 14:30", 10.5, 12.0, 10.0, 11.0, 200),
    bar("RLUPA", "2024-01-02 14:31", 11.0, 11.5, 10.5, 11.2, 150),
    bar("RLUPA", "2024-01-02 14:34", 11.2, 13.0, 11.0, 12.5, 50),
    bar("RLUPA", "2024-01-02 14:44", 12.5, 12.6, 8.0, 9.0, 10),
    bar("RLUPA", "2024-01-02 14:59", 9.0, 9.5, 8.5, 9.2, 300),
    bar("RLUPA", "2024-01-02 15:00", 9.2, 9.9, 9.1, 9.8, 400),
    bar("RLUPA", "2024-01-02 15:02", 9.8, 10.0, 9.7, 9.9, 500),
    bar("RLUPA", "2024-01-02 23:59", 20.0, 21.0, 19.0, 20.5, 5),
    bar("RLUPA", "2024-01-03 00:01", 20.5, 22.0, 20.0, 21.0, 6),
    bar("RLUPB", "2024-01-02 14:30", 50.0, 51.0, 49.0, 50.5, 1000),
    bar("RLUPB", "2024-01-02 14:33", 50.5, 52.0, 50.0, 51.0, 2000),
]

# (symbol, bucket start UTC, open, high, low, close, volume, bars), worked out by hand.
EXPECTED = {
    "ohlcv_5m": [
        ("RLUPA", "2024-01-02 14:25", 10.0, 11.0, 9.0, 10.5, 100, 1),
        ("RLUPA", "2024-01-02 14:30", 10.5, 13.0, 10.0, 12.5, 400, 3),
        ("RLUPA", "2024-01-02 14:40", 12.5, 12.6, 8.0, 9.0, 10, 1),
        ("RLUPA", "2024-01-02 14:55", 9.0, 9.5, 8.5, 9.2, 300, 1),
        ("RLUPA", "2024-01-02 15:00", 9.2, 10.0, 9.1, 9.9, 900, 2),
        ("RLUPA", "2024-01-02 23:55", 20.0, 21.0, 19.0, 20.5, 5, 1),
        ("RLUPA", "2024-01-03 00:00", 20.5, 22.0, 20.0, 21.0, 6, 1),
        ("RLUPB", "2024-01-02 14:30", 50.0, 52.0, 49.0, 51.0, 3000, 2),
    ],
    "ohlcv_15m": [
        ("RLUPA", "2024-01-02 14:15", 10.0, 11.0, 9.0, 10.5, 100, 1),
        ("RLUPA", "2024-01-02 14:30", 10.5, 13.0, 8.0, 9.0, 410, 4),
        ("RLUPA", "2024-01-02 14:45", 9.0, 9.5, 8.5, 9.2, 300, 1),
        ("RLUPA", "2024-01-02 15:00", 9.2, 10.0, 9.1, 9.9, 900, 2),
        ("RLUPA", "2024-01-02 23:45", 20.0, 21.0, 19.0, 20.5, 5, 1),
        ("RLUPA", "2024-01-03 00:00", 20.5, 22.0, 20.0, 21.0, 6, 1),
        ("RLUPB", "2024-01-02 14:30", 50.0, 52.0, 49.0, 51.0, 3000, 2),
    ],
    # 14:00 UTC is 9:00 New York: the pre-market half hour and the session's first half hour.
    "ohlcv_1h": [
        ("RLUPA", "2024-01-02 14:00", 10.0, 13.0, 8.0, 9.2, 810, 6),
        ("RLUPA", "2024-01-02 15:00", 9.2, 10.0, 9.1, 9.9, 900, 2),
        ("RLUPA", "2024-01-02 23:00", 20.0, 21.0, 19.0, 20.5, 5, 1),
        ("RLUPA", "2024-01-03 00:00", 20.5, 22.0, 20.0, 21.0, 6, 1),
        ("RLUPB", "2024-01-02 14:00", 50.0, 52.0, 49.0, 51.0, 3000, 2),
    ],
}


def insert_bars(url: str, rows: list[dict], refresh: bool = True) -> None:
    """Minute bars written as a writer writes them: the rollups of their hours refreshed in
    the same transaction (refresh=False: plain rows, as before migration 0007)."""
    with get_engine(url).begin() as conn:
        conn.execute(insert(Ohlcv1m), rows)
        if refresh:
            times = [r["ts"] for r in rows]
            rollups.refresh(conn, sorted({r["symbol"] for r in rows}), rollups.hour_floor(min(times)),
                            rollups.hour_floor(max(times)) + rollups.HOUR)


def view_rows(url: str, view: str, symbols: tuple[str, ...]) -> list[tuple]:
    """The view's rows with `bucket` as an aware UTC datetime, after checking its raw form."""
    engine = get_engine(url)
    query = text(f"SELECT {COLUMNS} FROM {view} WHERE symbol IN :symbols ORDER BY symbol, bucket") \
        .bindparams(bindparam("symbols", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(query, {"symbols": list(symbols)}).all()
    result = []
    for symbol, bucket, *values in rows:
        if engine.dialect.name == "sqlite":
            # TEXT in SQLAlchemy's own DateTime storage format, UTC wall time.
            assert isinstance(bucket, str) and len(bucket) == 26, bucket
            bucket = dt.datetime.strptime(bucket, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        else:
            assert isinstance(bucket, dt.datetime) and bucket.utcoffset() is not None
            bucket = bucket.astimezone(UTC)
        result.append((symbol, bucket, *values))
    return result


@pytest.mark.parametrize("view", VIEWS)
def test_view_rows_match_hand_computed_buckets(db_url, view):
    insert_bars(db_url, BARS)
    expected = [(s, utc(b), *values) for s, b, *values in EXPECTED[view]]
    assert view_rows(db_url, view, ("RLUPA", "RLUPB")) == expected


def test_sqlite_bucket_text_is_the_ts_storage_format(sqlite_url):
    insert_bars(sqlite_url, BARS[:2])
    with get_engine(sqlite_url).connect() as conn:
        stored = conn.execute(text("SELECT ts FROM ohlcv_1m WHERE symbol = 'RLUPA' ORDER BY ts")).scalars().all()
        buckets = {view: conn.execute(text(f"SELECT bucket FROM {view} WHERE symbol = 'RLUPA' ORDER BY bucket"))
                   .scalars().all() for view in VIEWS}
    assert stored == ["2024-01-02 14:29:00.000000", "2024-01-02 14:30:00.000000"]
    assert buckets == {"ohlcv_5m": ["2024-01-02 14:25:00.000000", "2024-01-02 14:30:00.000000"],
                       "ohlcv_15m": ["2024-01-02 14:15:00.000000", "2024-01-02 14:30:00.000000"],
                       "ohlcv_1h": ["2024-01-02 14:00:00.000000"]}


def test_range_query_with_bound_datetimes(db_url):
    """The README's example: a symbol's buckets in [start, end), bound as DateTime."""
    insert_bars(db_url, BARS)
    stamp = DateTime(timezone=True)
    query = text("SELECT bucket, open, high, low, close, volume, bars FROM ohlcv_15m "
                 "WHERE symbol = :symbol AND bucket >= :start AND bucket < :end ORDER BY bucket") \
        .bindparams(bindparam("start", type_=stamp), bindparam("end", type_=stamp)).columns(bucket=stamp)
    with get_engine(db_url).connect() as conn:
        rows = conn.execute(query, {"symbol": "RLUPA", "start": utc("2024-01-02 14:30"),
                                    "end": utc("2024-01-02 15:00")}).all()
    # SQLite hands DateTime values back naive; both are UTC.
    buckets = [b if b.tzinfo else b.replace(tzinfo=UTC) for b, *_ in rows]
    assert buckets == [utc("2024-01-02 14:30"), utc("2024-01-02 14:45")]
    assert [tuple(values) for _, *values in rows] == [(10.5, 13.0, 8.0, 9.0, 410, 4), (9.0, 9.5, 8.5, 9.2, 300, 1)]


def reference_rollup(rows: list[dict], minutes: int) -> list[tuple]:
    groups: dict[tuple, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["symbol"], r["ts"])):
        epoch = int(row["ts"].timestamp())
        bucket = dt.datetime.fromtimestamp(epoch - epoch % (minutes * 60), UTC)
        groups.setdefault((row["symbol"], bucket), []).append(row)
    return [(symbol, bucket, g[0]["open"], max(r["high"] for r in g), min(r["low"] for r in g),
             g[-1]["close"], sum(r["volume"] for r in g), len(g))
            for (symbol, bucket), g in sorted(groups.items())]


def test_tables_agree_with_a_reference_rollup(db_url):
    """Sparse random minutes over midnight UTC on New York's spring-forward day."""
    rng = random.Random(20240310)
    start = utc("2024-03-09 22:00")
    rows = []
    for symbol in ("RLUPC", "RLUPD"):
        for minute in range(10 * 60):
            if rng.random() < 0.6:
                low = rng.uniform(10, 20)
                rows.append({**bar(symbol, "2024-01-01 00:00", rng.uniform(low, low + 2), low + 2, low,
                                   rng.uniform(low, low + 2), rng.randrange(1, 10_000)),
                             "ts": start + dt.timedelta(minutes=minute)})
    insert_bars(db_url, rows)
    for view, minutes in zip(VIEWS, (5, 15, 60), strict=True):
        assert view_rows(db_url, view, ("RLUPC", "RLUPD")) == reference_rollup(rows, minutes), view


def test_symbol_filter_reaches_the_primary_key(db_url):
    insert_bars(db_url, BARS)
    engine = get_engine(db_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # The test table is tiny: forbid the sequential scan to see whether the index is usable.
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(conn.execute(text("EXPLAIN SELECT * FROM ohlcv_1h WHERE symbol = 'RLUPA'")).scalars())
            assert "pk_ohlcv_1h" in plan and "Index Cond: ((symbol)::text = 'RLUPA'::text)" in plan, plan
        else:
            plan = "\n".join(r[3] for r in conn.execute(
                text("EXPLAIN QUERY PLAN SELECT * FROM ohlcv_1h WHERE symbol = 'RLUPA'")))
            assert "USING INDEX sqlite_autoindex_ohlcv_1h_1 (symbol=?)" in plan, plan


@pytest.fixture(params=["sqlite", "postgresql"])
def private_url(request, tmp_path):
    """A database of this test's own, since the round trip takes the schema down to 0002."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'roundtrip.db'}"
        return
    with empty_database("chronox_test_rollups") as url:
        yield url


def test_views_of_0003_then_tables_of_0007_with_the_same_rows(private_url):
    def state() -> tuple[set[str], set[str], str | None]:
        with get_engine(private_url).connect() as conn:
            inspector = inspect(conn)
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return set(inspector.get_view_names()), set(inspector.get_table_names()), revision

    upgrade(private_url, "0003")
    insert_bars(private_url, BARS, refresh=False)
    views, tables, revision = state()
    assert (views, revision) == (set(VIEWS), "0003") and "ohlcv_1m" in tables

    command.downgrade(alembic_config(private_url), "0002")
    views, tables, revision = state()
    assert (views, revision) == (set(), "0002") and "ohlcv_1m" in tables

    upgrade(private_url, "0003")
    views, tables, revision = state()
    assert (views, revision) == (set(VIEWS), "0003")
    # The minute bars outlived the views, and the recreated views roll them up again.
    expected = [(s, utc(b), *values) for s, b, *values in EXPECTED["ohlcv_1h"]]
    assert view_rows(private_url, "ohlcv_1h", ("RLUPA", "RLUPB")) == expected

    # 0007 turns the views into tables holding the same rows; a downgrade brings the views back.
    upgrade(private_url)
    views, tables, revision = state()
    assert views == set() and set(VIEWS) <= tables
    for view in VIEWS:
        assert view_rows(private_url, view, ("RLUPA", "RLUPB")) == \
            [(s, utc(b), *values) for s, b, *values in EXPECTED[view]], view
    command.downgrade(alembic_config(private_url), "0006")
    views, tables, revision = state()
    assert (views, revision) == (set(VIEWS), "0006") and not set(VIEWS) & tables
    assert view_rows(private_url, "ohlcv_1h", ("RLUPA", "RLUPB")) == expected
