"""Committed bars as Arrow tables: what every sink and the dataset builder read.

PostgreSQL streams the rows out with COPY (text the Arrow CSV reader parses in C++),
because building 1.5 million Python row objects would cost more than writing the lake;
SQLite, the embedded default, goes through a plain SELECT.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Engine, select

from chronox import registry, store
from chronox.calendar import NEW_YORK, calendar_for, market_day_bounds
from chronox.store import COPY_COLUMNS as COLUMNS
from chronox.store import OHLCV

DEFAULT_MARKET = "stocks"
UTC_TS = pa.timestamp("us", tz="UTC")
BAR_SCHEMA = pa.schema([
    ("symbol", pa.string()), ("ts", UTC_TS), ("open", pa.float64()), ("high", pa.float64()),
    ("low", pa.float64()), ("close", pa.float64()), ("volume", pa.float64()), ("vwap", pa.float64()),
    ("transactions", pa.int64()), ("source", pa.string()),
])
_CSV_TYPES = {**{f.name: f.type for f in BAR_SCHEMA}, "ts": pa.int64()}


def symbol_markets(engine: Engine, symbols: Sequence[str]) -> dict[str, str]:
    """The market of each symbol (the Hive partition `market=`): the registry's `market`
    once it has one, "stocks" for every symbol until then and for unregistered ones."""
    found = {row.symbol: row.market.value for row in registry.list_symbols(engine, symbols=list(symbols))}
    return {s: found.get(s, DEFAULT_MARKET) for s in symbols}


def market_zone(market: str) -> str:
    """The time zone whose calendar days are the market's days (for SQL that groups by day)."""
    return "UTC" if calendar_for(market).around_the_clock else NEW_YORK.key


def day_counts(conn: Connection, symbols: Sequence[str], market: str, first: dt.date,
               last: dt.date) -> dict[tuple[str, dt.date], int]:
    """Rows per (symbol, market day) from `first` to `last`, in one pass over the range."""
    if not symbols:
        return {}
    start, end = market_day_bounds(market, first, last)
    zone = market_zone(market)
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(
            "SELECT symbol, (ts AT TIME ZONE %(zone)s)::date, count(*) FROM ohlcv_1m "
            "WHERE symbol = ANY(%(symbols)s) AND ts >= %(start)s AND ts < %(end)s GROUP BY 1, 2",
            {"zone": zone, "symbols": list(symbols), "start": start, "end": end})
        return {(s, d): int(n) for s, d, n in rows}
    day_of = calendar_for(market).day_of
    counts: dict[tuple[str, dt.date], int] = {}
    query = select(OHLCV.c.symbol, OHLCV.c.ts).where(OHLCV.c.symbol.in_(list(symbols)), OHLCV.c.ts >= start,
                                                      OHLCV.c.ts < end)
    for symbol, ts in conn.execute(query):
        moment = ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
        key = (symbol, day_of(moment))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _copy_out(conn: Connection, where: str, params: dict[str, Any], order: str, limit: int | None) -> pa.Table:
    query = (f"SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, open, high, low, close, volume, vwap, "
             f"transactions, source FROM ohlcv_1m WHERE {where} ORDER BY {order}"
             + (f" LIMIT {int(limit)}" if limit is not None else ""))
    parsed = store.copy_out(conn, query, params, {name: _CSV_TYPES[name] for name in COLUMNS})
    if not parsed.num_rows:
        return BAR_SCHEMA.empty_table()
    return parsed.set_column(1, "ts", parsed.column("ts").cast(UTC_TS))


def _select(conn: Connection, symbols: Sequence[str] | None, start: dt.datetime | None, end: dt.datetime | None,
            descending: bool, limit: int | None) -> pa.Table:
    query = select(*(OHLCV.c[c] for c in COLUMNS))
    if symbols is not None:
        query = query.where(OHLCV.c.symbol.in_(list(symbols)))
    if start is not None:
        query = query.where(OHLCV.c.ts >= start)
    if end is not None:
        query = query.where(OHLCV.c.ts < end)
    query = query.order_by(OHLCV.c.symbol, OHLCV.c.ts.desc() if descending else OHLCV.c.ts)
    if limit is not None:
        query = query.limit(limit)
    rows = conn.execute(query).all()
    data: dict[str, list[Any]] = {c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)}
    # SQLite hands timestamps back naive; they are UTC.
    data["ts"] = [t if not isinstance(t, str) else dt.datetime.fromisoformat(t) for t in data["ts"]]
    return pa.Table.from_pydict(data, schema=BAR_SCHEMA)


def read_bars(conn: Connection, symbols: Sequence[str] | None, start: dt.datetime | None = None,
              end: dt.datetime | None = None, *, descending: bool = False, limit: int | None = None) -> pa.Table:
    """Committed bars of `symbols` (all when None) with start <= ts < end, ordered by symbol
    and ts (descending: newest first, for "the N bars before")."""
    if conn.dialect.name != "postgresql":
        return _select(conn, symbols, start, end, descending, limit)
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if symbols is not None:
        clauses.append("symbol = ANY(%(symbols)s)")
        params["symbols"] = list(symbols)
    if start is not None:
        clauses.append("ts >= %(start)s")
        params["start"] = start
    if end is not None:
        clauses.append("ts < %(end)s")
        params["end"] = end
    return _copy_out(conn, " AND ".join(clauses) or "TRUE", params,
                     "symbol, ts DESC" if descending else "symbol, ts", limit)


def bars_before(conn: Connection, symbol: str, before: dt.datetime, count: int) -> pa.Table:
    """The `count` bars of `symbol` just before `before`, oldest first."""
    newest_first = read_bars(conn, [symbol], None, before, descending=True, limit=count)
    return newest_first.take(pa.array(range(newest_first.num_rows - 1, -1, -1), pa.int64()))


def bars_after(conn: Connection, symbol: str, after: dt.datetime, count: int) -> pa.Table:
    """The first `count` bars of `symbol` at or after `after`."""
    return read_bars(conn, [symbol], after, None, limit=count)


def by_symbol(bars: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """(symbol, its rows) of a table ordered by symbol; slices, no copies."""
    if not bars.num_rows:
        return
    runs = pc.run_end_encode(bars.column("symbol").combine_chunks())
    start = 0
    for symbol, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        yield symbol, bars.slice(start, end - start)
        start = end


def digest(bars: pa.Table) -> str:
    """SHA-256 of the rows (Arrow IPC of the table in one chunk, however it was read):
    equal rows, equal digest."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, bars.schema) as writer:
        writer.write_table(bars.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()
