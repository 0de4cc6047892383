"""Standard bar features, and the Redis feature store that serves them (CHRONOX_FEATURE_STORE).

Features of bar t use bars up to t only (the dataset builder's no-look-ahead rule):

    ret_1      log(close_t / close_t-1)
    range_pct  (high_t - low_t) / close_t
    vwap_dev   close_t / vwap_t - 1
    vol_z_20   (volume_t - mean) / std of the volumes of the 20 bars ending at t (population std)
    rv_20      sqrt(sum of ret_1^2 over the 20 bars ending at t), realized volatility

A feature without enough history (or a zero std, a missing vwap) is null. The store
computes a day with the 20 bars before it, so the day's first bar has its history.

Redis layout, per bar and per series:

    features:market:{SYMBOL}:{tf}:{ts_epoch}   hash: the bar and its features (null ones left out)
    features:market:{SYMBOL}:{tf}:_idx         sorted set: member ts_epoch, score ts_epoch

Only each symbol's newest CHRONOX_FEATURE_STORE_DAYS days are kept (a year of backfill
must not flood Redis); every key gets CHRONOX_FEATURE_TTL_SECONDS.
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view
from sqlalchemy import Connection, Engine, func, select

from chronox import sinks
from chronox.calendar import calendar_for
from chronox.db import get_engine
from chronox.redis_client import shared_client
from chronox.settings import Settings
from chronox.sinks import frames, state
from chronox.store import TIMEFRAME
from chronox.strategy import InvalidInput

FEATURES = ("ret_1", "range_pct", "vwap_dev", "vol_z_20", "rv_20")
WINDOW = 20
HISTORY = WINDOW  # bars before a day that its first bar's features need (rv_20: 20 returns)
PREFIX = "features:market"
SWEEP_PATTERN = f"{PREFIX}:*"
_FLOAT_FIELDS = ("open", "high", "low", "close", "volume", "vwap", *FEATURES)
_BATCH = 1000


# -- computing ---------------------------------------------------------------------------

def _column(bars: pa.Table, name: str) -> np.ndarray:
    return np.asarray(bars.column(name).to_numpy(zero_copy_only=False), dtype=float)


def compute(bars: pa.Table) -> pa.Table:
    """`bars` (one symbol, ordered by ts) with the feature columns appended."""
    close, high, low = _column(bars, "close"), _column(bars, "high"), _column(bars, "low")
    volume, vwap = _column(bars, "volume"), _column(bars, "vwap")
    n = len(close)
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.full(n, np.nan)
        ret[1:] = np.log(close[1:] / close[:-1])
        range_pct = (high - low) / close
        vwap_dev = close / vwap - 1.0
        vol_z = np.full(n, np.nan)
        rv = np.full(n, np.nan)
        if n >= WINDOW:
            windows = sliding_window_view(volume, WINDOW)
            mean, std = windows.mean(axis=1), windows.std(axis=1)
            vol_z[WINDOW - 1:] = np.where(std > 0, (volume[WINDOW - 1:] - mean) / std, np.nan)
            rv[WINDOW - 1:] = np.sqrt((sliding_window_view(ret, WINDOW) ** 2).sum(axis=1))
    out = bars
    for name, values in zip(FEATURES, (ret, range_pct, vwap_dev, vol_z, rv), strict=True):
        values = np.where(np.isfinite(values), values, np.nan)
        out = out.append_column(name, pa.array(values, pa.float64(), from_pandas=True))
    return out


# -- Redis keys and values ---------------------------------------------------------------

def series_key(symbol: str, tf: str) -> str:
    return f"{PREFIX}:{symbol}:{tf}"


def bar_key(symbol: str, tf: str, ts_epoch: int) -> str:
    return f"{series_key(symbol, tf)}:{ts_epoch}"


def index_key(symbol: str, tf: str) -> str:
    return f"{series_key(symbol, tf)}:_idx"


def _client(settings: Settings) -> Any:
    # Any: redis-py types every reply as bytes-or-str-or-list; with decode_responses they are str.
    if not settings.redis_url:
        raise InvalidInput("the feature store needs CHRONOX_REDIS_URL")
    return shared_client(settings.redis_url, decode_responses=True)


def _hashes(rows: pa.Table, tf: str) -> Iterator[tuple[int, dict[str, str]]]:
    for row in rows.to_pylist():
        epoch = int(row["ts"].timestamp())
        values: dict[str, str] = {"symbol": row["symbol"], "tf": tf, "ts": row["ts"].isoformat().replace("+00:00", "Z"),
                                  "source": row["source"]}
        for name in _FLOAT_FIELDS:
            value = row[name]
            if value is not None and math.isfinite(value):
                values[name] = repr(float(value))
        if row["transactions"] is not None:
            values["transactions"] = str(row["transactions"])
        yield epoch, values


def _decode(values: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(values)
    for name in _FLOAT_FIELDS:
        if name in out:
            out[name] = float(out[name])
    if "transactions" in out:
        out["transactions"] = int(out["transactions"])
    for name in ("vwap", *FEATURES):
        out.setdefault(name, None)
    return out


# -- the sink ----------------------------------------------------------------------------

def newest_days(conn: Connection, symbol: str, market: str, count: int) -> list[dt.date]:
    """The newest `count` market days on which `symbol` has bars, newest first."""
    day_of = calendar_for(market).day_of
    ts = frames.OHLCV.c.ts
    days: list[dt.date] = []
    bound: dt.datetime | None = None
    while len(days) < count:
        query = select(func.max(ts)).where(frames.OHLCV.c.symbol == symbol)
        if bound is not None:
            query = query.where(ts < bound)
        newest = conn.execute(query).scalar()
        if newest is None:
            break
        if isinstance(newest, str):
            newest = dt.datetime.fromisoformat(newest)
        moment = newest if newest.tzinfo else newest.replace(tzinfo=dt.UTC)
        days.append(day_of(moment))
        bound = calendar_for(market).day_bounds(days[-1])[0]
    return days


def sync(settings: Settings, symbol: str, days: Sequence[str | dt.date], tf: str = TIMEFRAME,
         engine: Engine | None = None) -> dict[str, Any]:
    """Put the features of `symbol` on `days` into Redis, for the days among its newest
    CHRONOX_FEATURE_STORE_DAYS; drop the days that fell out of that window."""
    engine = engine or get_engine(settings.database_url)
    client = _client(settings)
    market = frames.symbol_markets(engine, [symbol])[symbol]
    with engine.connect() as conn:
        keep = newest_days(conn, symbol, market, settings.feature_store_days)
    asked = sorted({d if isinstance(d, dt.date) else dt.date.fromisoformat(d) for d in days})
    result: dict[str, Any] = {"sink": sinks.FEATURES, "symbol": symbol, "written": 0, "unchanged": 0, "rows": 0,
                              "skipped_old_days": len([d for d in asked if d not in keep]), "pruned": 0}
    for day in (d for d in asked if d in keep):
        written = _sync_day(settings, engine, client, symbol, market, tf, day)
        if written is None:
            result["unchanged"] += 1
        else:
            result["written"] += 1
            result["rows"] += written
    if keep:
        result["pruned"] = _prune(engine, client, symbol, tf, calendar_for(market).day_bounds(min(keep))[0], min(keep))
    return result


def _sync_day(settings: Settings, engine: Engine, client: Any, symbol: str, market: str, tf: str,
              day: dt.date) -> int | None:
    """Rows written, or None when Redis already holds exactly these features."""
    start, end = calendar_for(market).day_bounds(day)
    with engine.connect() as conn:
        history = frames.bars_before(conn, symbol, start, HISTORY)
        bars = frames.read_bars(conn, [symbol], start, end)
        held = state.held(conn, sinks.FEATURES, [symbol], [day]).get((symbol, day))
    series = pa.concat_tables([history, bars])
    digest = frames.digest(series)
    rows = compute(series).slice(history.num_rows)
    if held is not None and held.digest == digest and held.rows == rows.num_rows and _still_there(client, rows, tf):
        with engine.begin() as conn:  # checked against the database now
            state.record(conn, sinks.FEATURES, [(symbol, day, rows.num_rows, digest)])
        return None
    ttl = settings.feature_ttl_seconds
    index = index_key(symbol, tf)
    epochs = set()
    pipe = client.pipeline(transaction=False)
    for i, (epoch, values) in enumerate(_hashes(rows, tf)):
        key = bar_key(symbol, tf, epoch)
        epochs.add(str(epoch))
        pipe.delete(key)  # a feature that became null must not survive from the last write
        pipe.hset(key, mapping=values)
        if ttl:
            pipe.expire(key, ttl)
        pipe.zadd(index, {str(epoch): epoch})
        if i % _BATCH == _BATCH - 1:
            pipe.execute()
    # Bars of the day the database no longer has (a flat file replaced REST bars).
    stale = [m for m in client.zrangebyscore(index, int(start.timestamp()), f"({int(end.timestamp())}")
             if m not in epochs]
    for member in stale:
        pipe.delete(bar_key(symbol, tf, int(member)))
    if stale:
        pipe.zrem(index, *stale)
    if ttl:
        pipe.expire(index, ttl)
    pipe.execute()
    with engine.begin() as conn:
        state.record(conn, sinks.FEATURES, [(symbol, day, rows.num_rows, digest)])
    return rows.num_rows


def _still_there(client: Any, rows: pa.Table, tf: str) -> bool:
    """The day's first and last hashes exist (a TTL may have taken what sink_state recorded)."""
    if not rows.num_rows:
        return True
    symbol = rows.column("symbol")[0].as_py()
    ends = [rows.column("ts")[i].as_py() for i in (0, rows.num_rows - 1)]
    return bool(client.exists(*(bar_key(symbol, tf, int(t.timestamp())) for t in ends)) == len(ends))


def _prune(engine: Engine, client: Any, symbol: str, tf: str, cutoff: dt.datetime, first_day: dt.date) -> int:
    """Drop the symbol's bars before `cutoff` (days that fell out of the kept window)."""
    index = index_key(symbol, tf)
    old = client.zrangebyscore(index, "-inf", f"({int(cutoff.timestamp())}")
    for i in range(0, len(old), _BATCH):
        chunk = old[i:i + _BATCH]
        client.delete(*(bar_key(symbol, tf, int(m)) for m in chunk))
        client.zrem(index, *chunk)
    with engine.begin() as conn:
        state.forget(conn, sinks.FEATURES, symbol, first_day)
    return len(old)


# -- reading -----------------------------------------------------------------------------

def epoch_of(value: int | float | str | dt.datetime) -> int:
    """Epoch seconds from epoch seconds (or ms), an ISO-8601 time or a datetime (naive = UTC)."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        number = int(value)
        return number // 1000 if abs(number) >= 10**11 else number  # milliseconds given
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"{value!r} is not a time: give epoch seconds or ISO-8601 "
                               "(2024-01-02T14:30:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def get(settings: Settings, symbol: str, tf: str, times: Iterable[int | float | str | dt.datetime]
        ) -> list[dict[str, Any] | None]:
    """The stored bar and features at each time (None where Redis has none)."""
    client = _client(settings)
    epochs = [epoch_of(t) for t in times]
    pipe = client.pipeline(transaction=False)
    for epoch in epochs:
        pipe.hgetall(bar_key(symbol, tf, epoch))
    return [_decode(values) | {"ts_epoch": epoch} if values else None
            for epoch, values in zip(epochs, pipe.execute(), strict=True)]


def range_(settings: Settings, symbol: str, tf: str, start: int | float | str | dt.datetime,
           end: int | float | str | dt.datetime, limit: int | None = None) -> list[dict[str, Any]]:
    """Stored bars with start <= ts <= end, oldest first (at most `limit`)."""
    client = _client(settings)
    members = client.zrangebyscore(index_key(symbol, tf), epoch_of(start), epoch_of(end),
                                   start=0 if limit else None, num=limit or None)
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.hgetall(bar_key(symbol, tf, int(member)))
    return [_decode(values) | {"ts_epoch": int(member)}
            for member, values in zip(members, pipe.execute(), strict=True) if values]


# -- the TTL sweep -------------------------------------------------------------------------

def ttl_sweep(settings: Settings, pattern: str = SWEEP_PATTERN, ttl_default: int | None = None,
              max_keys: int | None = None) -> dict[str, Any]:
    """Give keys matching `pattern` that have no TTL one (`ttl_default`, else
    CHRONOX_FEATURE_TTL_SECONDS; none when both are unset/0), and remove `_idx` members
    whose hash expired. SCAN, never KEYS: Redis keeps serving while it runs."""
    if not pattern.startswith(f"{PREFIX}:"):
        raise InvalidInput(f"pattern {pattern!r} must start with {PREFIX}: (the sweep only touches feature keys)")
    ttl = settings.feature_ttl_seconds if ttl_default is None else (ttl_default or None)
    client = _client(settings)
    scanned = ttl_set = pruned = 0
    indexes: list[str] = []
    batch: list[str] = []

    def settle(keys: list[str]) -> int:
        if not ttl or not keys:
            return 0
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        missing = [k for k, left in zip(keys, pipe.execute(), strict=True) if left == -1]
        for key in missing:
            pipe.expire(key, ttl, nx=True)
        return sum(1 for ok in pipe.execute() if ok) if missing else 0

    for key in client.scan_iter(match=pattern, count=1000):
        scanned += 1
        batch.append(key)
        if key.endswith(":_idx"):
            indexes.append(key)
        if len(batch) >= _BATCH:
            ttl_set += settle(batch)
            batch = []
        if max_keys is not None and scanned >= max_keys:
            break
    ttl_set += settle(batch)
    for index in indexes:
        prefix = index[: -len("_idx")]
        members: list[str] = []
        for member, _score in client.zscan_iter(index, count=1000):
            members.append(member)
            if len(members) >= _BATCH:
                pruned += _prune_members(client, index, prefix, members)
                members = []
        pruned += _prune_members(client, index, prefix, members)
    return {"pattern": pattern, "scanned": scanned, "ttl_set": ttl_set, "pruned": pruned}


def _prune_members(client: Any, index: str, prefix: str, members: list[str]) -> int:
    if not members:
        return 0
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.exists(prefix + member)
    gone = [m for m, there in zip(members, pipe.execute(), strict=True) if not there]
    if gone:
        client.zrem(index, *gone)
    return len(gone)
