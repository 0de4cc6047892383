"""Chart caches in Redis (CHRONOX_REDIS_URL), with the keys and lifetimes of the system
ChronoX replaces:

    latest_price:{symbol}          the snapshot event (chronox.snapshot, 60 s)
    hourly_data:{symbol}:1D        the latest session's hourly bars (120 s)
    asset_data:{symbol}:{range}    7D hourly bars; 1M 3M 6M YTD 1Y 3Y 5Y MAX daily bars
                                   (300 s, MAX 3600 s)

The jobs that change the bars write the documents after their commit (write-through:
the real-time hourly refresh, and every run's finalize); `read` is cache-aside for
`chronox prices`: the key, or a database read that refills it. Hits and misses are
counted (chronox.metrics). Without CHRONOX_REDIS_URL nothing is cached and reads go to
the database.

A chart document, drawn as is (TradingView lightweight-charts takes `bars` unchanged):

    {"symbol": "AAPL", "range": "1Y", "timeframe": "1d", "first": "2023-12-04",
     "last": "2024-12-04", "generated_at": "2024-12-04T21:30:05Z",
     "bars": [{"time": 1701648000, "open": 189.98, "high": 190.05, "low": 187.45,
               "close": 189.43, "volume": 43389519.0}, ...]}

`time` is epoch seconds (UTC) of the bar's start; a daily bar is stamped at 00:00 UTC of
its trading day, so its UTC date is the session's date. Bars are in time order; `first`
and `last` are the market days the range covers.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from sqlalchemy import Connection, select

from chronox import metrics, ranges, registry
from chronox.bars import UTC, isoformat_utc
from chronox.calendar import market_day_bounds
from chronox.db import get_engine
from chronox.models import Ohlcv1d, Ohlcv1h, table
from chronox.publish import get_mirror
from chronox.settings import Settings
from chronox.strategy import validate_symbol

log = logging.getLogger(__name__)

STOCKS = "stocks"
DAILY, HOURLY = table(Ohlcv1d), table(Ohlcv1h)
IN_CHUNK = 500  # symbols per IN list (SQLite caps a statement's parameters)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode

Bars = list[dict[str, Any]]


def key(symbol: str, range_name: str) -> str:
    p = ranges.preset(range_name)
    return f"{p.cache}:{symbol}:{p.name}"


def _utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _bar(time: int, row: Any) -> dict[str, Any]:
    return {"time": time, "open": row.open, "high": row.high, "low": row.low, "close": row.close,
            "volume": row.volume}


def _daily(conn: Connection, symbols: Sequence[str], first: dt.date, last: dt.date) -> dict[str, Bars]:
    out: dict[str, Bars] = {s: [] for s in symbols}
    for i in range(0, len(symbols), IN_CHUNK):
        rows = conn.execute(select(DAILY).where(DAILY.c.symbol.in_(symbols[i:i + IN_CHUNK]),
                                                DAILY.c.day >= first, DAILY.c.day <= last)
                            .order_by(DAILY.c.symbol, DAILY.c.day))
        for row in rows:
            midnight = dt.datetime.combine(row.day, dt.time(0), UTC)
            out[row.symbol].append(_bar(int(midnight.timestamp()), row))
    return out


def _hourly(conn: Connection, symbols: Sequence[str], start: dt.datetime, end: dt.datetime) -> dict[str, Bars]:
    out: dict[str, Bars] = {s: [] for s in symbols}
    for i in range(0, len(symbols), IN_CHUNK):
        rows = conn.execute(select(HOURLY).where(HOURLY.c.symbol.in_(symbols[i:i + IN_CHUNK]),
                                                 HOURLY.c.bucket >= start, HOURLY.c.bucket < end)
                            .order_by(HOURLY.c.symbol, HOURLY.c.bucket))
        for row in rows:
            out[row.symbol].append(_bar(int(_utc(row.bucket).timestamp()), row))
    return out


def documents(settings: Settings, symbols: Sequence[str], range_names: Iterable[str],
              now: dt.datetime | None = None, markets: Mapping[str, str] | None = None
              ) -> dict[tuple[str, str], dict[str, Any]]:
    """The chart documents of `symbols` x `range_names` from the database: one read per bar
    table covering every range asked (the ranges of a symbol nest, so they share it)."""
    now = now or dt.datetime.now(UTC)
    names = [ranges.parse_range(n) for n in range_names]
    days = {(s, n): ranges.chart_days(n, (markets or {}).get(s, STOCKS), now, settings.max_history_start)
            for s in symbols for n in names}
    bounds = {(s, n): market_day_bounds((markets or {}).get(s, STOCKS), *days[s, n]) for s, n in days}
    read: dict[str, dict[str, Bars]] = {}
    with get_engine(settings.database_url).connect() as conn:
        for timeframe in {ranges.PRESETS[n].timeframe for n in names}:
            mine = [k for k in days if ranges.PRESETS[k[1]].timeframe == timeframe]
            if timeframe == "1d":
                read[timeframe] = _daily(conn, list(symbols), min(days[k][0] for k in mine),
                                         max(days[k][1] for k in mine))
            else:
                read[timeframe] = _hourly(conn, list(symbols), min(bounds[k][0] for k in mine),
                                          max(bounds[k][1] for k in mine))
    generated = isoformat_utc(now)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (symbol, name), (first, last) in days.items():
        timeframe = ranges.PRESETS[name].timeframe
        low, high = (int(t.timestamp()) for t in bounds[symbol, name])
        if timeframe == "1d":  # daily bars are stamped at 00:00 UTC of their day
            low = int(dt.datetime.combine(first, dt.time(0), UTC).timestamp())
            high = int(dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), UTC).timestamp())
        out[symbol, name] = {
            "symbol": symbol, "range": name, "timeframe": timeframe, "first": first.isoformat(),
            "last": last.isoformat(), "generated_at": generated,
            "bars": [b for b in read[timeframe][symbol] if low <= b["time"] < high]}
    return out


def write_through(settings: Settings, symbols: Sequence[str], range_names: Iterable[str] = ranges.NAMES,
                  now: dt.datetime | None = None, markets: Mapping[str, str] | None = None) -> int:
    """Write the chart documents of symbols x ranges from committed rows; call after the
    commit of what changed them. Returns the keys written (0 with the cache off)."""
    mirror = get_mirror(settings)
    if mirror is None or not symbols:
        return 0
    docs = documents(settings, symbols, range_names, now,
                     markets if markets is not None else symbol_markets(settings, symbols))
    pipeline = mirror.client.pipeline(transaction=False)
    for (symbol, name), doc in docs.items():
        pipeline.set(key(symbol, name), _dumps(doc), ex=ranges.PRESETS[name].ttl)
    try:
        pipeline.execute()
    except redis.RedisError as exc:
        # The data is committed; a reader refills the keys from it. A cache must not fail a run.
        log.warning("chart caches of %d symbol(s) not written: %s", len(symbols), exc)
        return 0
    return len(docs)


def symbol_markets(settings: Settings, symbols: Sequence[str]) -> dict[str, str]:
    """Each registered symbol's market (an unregistered one is read as a stock)."""
    rows = registry.list_symbols(get_engine(settings.database_url), symbols=list(symbols))
    return {r.symbol: r.market.value for r in rows}


def read(settings: Settings, symbol: str, range_name: str, now: dt.datetime | None = None
         ) -> tuple[dict[str, Any], str]:
    """Cache-aside: (document, "hit" | "miss" | "off"). A miss reads the database and
    refills the key with its lifetime."""
    symbol, name = validate_symbol(symbol), ranges.parse_range(range_name)
    cache, ttl = ranges.PRESETS[name].cache, ranges.PRESETS[name].ttl
    mirror = get_mirror(settings)
    if mirror is not None:
        raw = mirror.client.get(key(symbol, name))
        if raw is not None:
            metrics.cache_request(cache, hit=True)
            return json.loads(raw), "hit"
    doc = documents(settings, [symbol], [name], now, symbol_markets(settings, [symbol]))[symbol, name]
    if mirror is None:
        return doc, "off"
    metrics.cache_request(cache, hit=False)
    mirror.client.set(key(symbol, name), _dumps(doc), ex=ttl)
    return doc, "miss"
