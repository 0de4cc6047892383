"""Coarser bars kept current in the transaction that writes the bars below them.

ohlcv_1m -> ohlcv_5m -> ohlcv_15m -> ohlcv_1h: each table is rolled up from the one
below it (open of the first, close of the last, high/low as max/min, volume and `bars`
summed), which gives the same rows as rolling every table up from the minutes. Buckets
sit on UTC clock boundaries, and a New York or UTC day is a whole number of hours, so
every bucket of a day lies inside that day: refreshing a symbol-day never touches
another day's buckets.

`refresh` replaces the rollups of some symbols over a range with what the table below
holds; every writer calls it for what it wrote (day loads, REST windows, stream batches,
coarse REST bars of symbols registered at 5m, 15m or 1h). On PostgreSQL the bucket is
date_bin over timestamptz; on SQLite the TEXT storage format of DateTime columns, as the
views of migration 0003 had it.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BindParameter, Connection, DateTime, String, Table, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY

from chronox.models import Ohlcv1h, Ohlcv1m, Ohlcv5m, Ohlcv15m, table

# timeframe -> (table, minutes)
TIMEFRAME_TABLES: dict[str, tuple[Table, int]] = {
    "1m": (table(Ohlcv1m), 1), "5m": (table(Ohlcv5m), 5), "15m": (table(Ohlcv15m), 15), "1h": (table(Ohlcv1h), 60)}
CHAIN = ("1m", "5m", "15m", "1h")
HOUR = dt.timedelta(hours=1)


def hour_floor(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _postgres_select(source: str, minutes: int, from_minutes: bool) -> str:
    time, bars = ("ts", "count(*)") if from_minutes else ("bucket", "sum(bars)")
    # Both ordered aggregates share one ORDER BY, so each group is sorted once.
    return (f"SELECT symbol, date_bin(INTERVAL '{minutes} minutes', {time}, TIMESTAMPTZ '2000-01-01 00:00:00+00') "
            f"AS b, (array_agg(open ORDER BY {time}))[1], max(high), min(low), "
            f"(array_agg(close ORDER BY {time}))[count(*)], sum(volume), {bars} "
            f"FROM {source} WHERE symbol = ANY(:symbols) AND {time} >= :start AND {time} < :end GROUP BY symbol, b")


def _sqlite_bucket(column: str, minutes: int) -> str:
    if minutes == 60:
        return f"strftime('%Y-%m-%d %H:00:00.000000', {column})"
    return (f"strftime('%Y-%m-%d %H:', {column}) || "
            f"printf('%02d:00.000000', CAST(strftime('%M', {column}) AS INTEGER) / {minutes} * {minutes})")


def _sqlite_select(source: str, minutes: int, from_minutes: bool) -> str:
    # No ordered aggregate in SQLite: open and close are looked up at the group's first and
    # last time through the primary key.
    time, bars = ("ts", "count(*)") if from_minutes else ("bucket", "sum(g_bars)")
    inner_bars = "1" if from_minutes else "bars"
    return (f"SELECT g.symbol, g.b, f.open, g.high, g.low, l.close, g.volume, g.bars FROM "
            f"(SELECT symbol, {_sqlite_bucket(time, minutes)} AS b, min({time}) AS first_t, max({time}) AS last_t, "
            f"max(high) AS high, min(low) AS low, sum(volume) AS volume, {bars} AS bars "
            f"FROM (SELECT symbol, {time}, high, low, volume, {inner_bars} AS g_bars FROM {source} "
            f"WHERE symbol IN :symbols AND {time} >= :start AND {time} < :end) GROUP BY symbol, b) AS g "
            f"JOIN {source} AS f ON f.symbol = g.symbol AND f.{time} = g.first_t "
            f"JOIN {source} AS l ON l.symbol = g.symbol AND l.{time} = g.last_t")


def refresh(conn: Connection, symbols: Sequence[str], start: dt.datetime, end: dt.datetime,
            written: str = "1m") -> None:
    """Recompute every rollup above the `written` timeframe for `symbols` in [start, end).

    start and end must be whole hours (day bounds are): the range then holds whole buckets.
    """
    if not symbols or start >= end:
        return
    assert start == hour_floor(start) and end == hour_floor(end), "rollup ranges are whole hours"
    postgres = conn.dialect.name == "postgresql"
    params = {"symbols": list(symbols), "start": start, "end": end}
    # Bound as DateTime, so SQLite compares them in its TEXT storage format; on PostgreSQL
    # the symbols travel as one array, not one parameter each.
    binds: list[BindParameter[Any]] = [
        bindparam("start", type_=DateTime(timezone=True)), bindparam("end", type_=DateTime(timezone=True)),
        bindparam("symbols", type_=ARRAY(String)) if postgres else bindparam("symbols", expanding=True)]
    members = "= ANY(:symbols)" if postgres else "IN :symbols"
    for lower, upper in zip(CHAIN, CHAIN[1:], strict=False):
        if CHAIN.index(upper) <= CHAIN.index(written):
            continue
        source, target = TIMEFRAME_TABLES[lower][0].name, TIMEFRAME_TABLES[upper][0].name
        minutes = TIMEFRAME_TABLES[upper][1]
        select = (_postgres_select if postgres else _sqlite_select)(source, minutes, lower == "1m")
        conn.execute(text(f"DELETE FROM {target} WHERE symbol {members} AND bucket >= :start AND bucket < :end")
                     .bindparams(*binds), params)
        conn.execute(text(f"INSERT INTO {target} (symbol, bucket, open, high, low, close, volume, bars) {select}")
                     .bindparams(*binds), params)


def refresh_days(conn: Connection, symbols: Sequence[str], days: Sequence[tuple[dt.datetime, dt.datetime]],
                 written: str = "1m") -> None:
    """refresh over several day ranges (consecutive days are merged into one range)."""
    merged: list[list[dt.datetime]] = []
    for start, end in sorted(days):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        refresh(conn, symbols, start, end, written)
