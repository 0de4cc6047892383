"""rollup views: ohlcv_5m, ohlcv_15m, ohlcv_1h over ohlcv_1m

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 10:00:00.000000

Each view has one row per symbol and bucket: symbol, bucket (start of the bucket, UTC),
open (of the bucket's first minute), high (max), low (min), close (of its last minute),
volume (sum) and bars (number of minute bars present; missing minutes are not filled).

Buckets are aligned to UTC clock boundaries, not to the session: a known design choice.
New York's offset from UTC is a whole number of hours, so the buckets are New York clock
buckets too, but the regular session opens at 9:30 New York, on a 5- and 15-minute
boundary and not on an hour one: 1h buckets start at :00 UTC, and the 9:00-10:00 New York
bucket mixes 30 pre-market minutes with the first 30 of the session. In exchange the buckets need no calendar, do
not move with daylight saving time, and pre- and post-market bars roll up the same way.

PostgreSQL (14 or later, for date_bin): `bucket` is timestamptz. date_bin with an explicit
UTC origin is used rather than date_trunc, whose result depends on the session's TimeZone.
A filter on `symbol` reaches the primary key (symbol, ts); a filter on `bucket` is applied
to that symbol's rows before aggregation but cannot narrow the index range by itself.

SQLite: SQLAlchemy's DateTime(timezone=True) stores `ts` as TEXT
'YYYY-MM-DD HH:MM:SS.ffffff' holding the UTC wall time without an offset (SQLAlchemy drops
the tzinfo rather than converting it; ChronoX always writes UTC). `bucket` is TEXT in that
same format, e.g. '2024-01-02 14:30:00.000000', so it sorts chronologically, compares
with `ts` values and with datetimes bound through SQLAlchemy's DateTime, and reads back as
a datetime when typed as DateTime. SQLite has no ordered aggregate, so open and close are
looked up through the primary key at the bucket's min(ts) and max(ts).

The views depend on ohlcv_1m: a later migration that alters that table (a column type on
PostgreSQL, any batch rebuild on SQLite) must drop the views first and recreate them.
"""
from __future__ import annotations

from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

ROLLUP_MINUTES = {'ohlcv_5m': 5, 'ohlcv_15m': 15, 'ohlcv_1h': 60}


def _postgresql_select(minutes: int) -> str:
    # Both ordered aggregates share one ORDER BY so PostgreSQL 16+ sorts each group once;
    # close is then the last element, and count(*) is that array's length.
    return f"""
SELECT symbol,
       date_bin(INTERVAL '{minutes} minutes', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       (array_agg(open ORDER BY ts))[1] AS open,
       max(high) AS high,
       min(low) AS low,
       (array_agg(close ORDER BY ts))[count(*)] AS close,
       sum(volume) AS volume,
       count(*) AS bars
FROM ohlcv_1m
GROUP BY symbol, bucket"""


def _sqlite_bucket(minutes: int) -> str:
    # strftime re-reads ts, so a value written with an offset would still land in its UTC
    # bucket. The ':00' after the minute sits inside printf's format, not right after a
    # quote, where SQLAlchemy's text() would take it for a bind parameter.
    if minutes == 60:
        return "strftime('%Y-%m-%d %H:00:00.000000', ts)"
    return (f"strftime('%Y-%m-%d %H:', ts) || "
            f"printf('%02d:00.000000', CAST(strftime('%M', ts) AS INTEGER) / {minutes} * {minutes})")


def _sqlite_select(minutes: int) -> str:
    return f"""
SELECT g.symbol AS symbol, g.bucket AS bucket, f.open AS open, g.high AS high, g.low AS low,
       l.close AS close, g.volume AS volume, g.bars AS bars
FROM (SELECT symbol, {_sqlite_bucket(minutes)} AS bucket,
             min(ts) AS first_ts, max(ts) AS last_ts,
             max(high) AS high, min(low) AS low, sum(volume) AS volume, count(*) AS bars
      FROM ohlcv_1m
      GROUP BY symbol, bucket) AS g
JOIN ohlcv_1m AS f ON f.symbol = g.symbol AND f.ts = g.first_ts
JOIN ohlcv_1m AS l ON l.symbol = g.symbol AND l.ts = g.last_ts"""


def upgrade() -> None:
    # The context's dialect, unlike op.get_bind(), is also there in offline (--sql) mode.
    dialect = op.get_context().dialect.name
    if dialect == 'postgresql':
        select = _postgresql_select
    elif dialect == 'sqlite':
        select = _sqlite_select
    else:
        raise NotImplementedError(f'rollup views are written for PostgreSQL and SQLite, not {dialect}')
    for name, minutes in ROLLUP_MINUTES.items():
        op.execute(f'CREATE VIEW {name} AS{select(minutes)}')


def downgrade() -> None:
    for name in reversed(ROLLUP_MINUTES):
        op.execute(f'DROP VIEW {name}')
