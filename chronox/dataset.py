"""Training datasets: one row per bar with the bar, the standard features and next-bar labels.

No look-ahead: the features of bar t come from bars up to t (chronox.features, with the
20 bars before the first day as history), and the labels of bar t from bar t+1 only:

    label_ret_1      log(close_t+1 / close_t), null for the series' newest bar
    label_direction  "up" / "down" / "flat" (|label_ret_1| <= the flat threshold), null with it

The bars come from the database (the record) or from the Parquet lake (no database load).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from chronox import features
from chronox.calendar import market_day_bounds
from chronox.db import get_engine
from chronox.settings import Settings
from chronox.sinks import frames
from chronox.sinks.lake import Lake, dataset
from chronox.store import TIMEFRAME
from chronox.strategy import InvalidInput

SOURCES = ("db", "lake")
LABELS = ("label_ret_1", "label_direction")
# How far before the first day (calendar days) the lake is searched for the feature history.
LAKE_HISTORY_REACH = (7, 60, 400)


def _from_db(settings: Settings, symbol: str, market: str, start: dt.datetime,
             end: dt.datetime) -> tuple[pa.Table, pa.Table, pa.Table]:
    with get_engine(settings.database_url).connect() as conn:
        return (frames.bars_before(conn, symbol, start, features.HISTORY),
                frames.read_bars(conn, [symbol], start, end), frames.bars_after(conn, symbol, end, 1))


def _lake_rows(source: Any, condition: Any) -> pa.Table:
    rows = source.to_table(filter=condition, columns=list(frames.COLUMNS))
    rows = rows.cast(frames.BAR_SCHEMA)
    return rows.sort_by("ts") if rows.num_rows else rows


def _from_lake(settings: Settings, symbol: str, market: str, tf: str, first: dt.date, last: dt.date,
               start: dt.datetime, end: dt.datetime) -> tuple[pa.Table, pa.Table, pa.Table]:
    import pyarrow.dataset as ds

    source = dataset(Lake.from_settings(settings), market, tf, symbol)
    if source is None:
        return (frames.BAR_SCHEMA.empty_table(),) * 3
    date, ts = ds.field("date"), ds.field("ts")
    # Partition filters first (whole files skipped), then the exact bounds.
    bars = _lake_rows(source, (date >= first.isoformat()) & (date <= last.isoformat()) & (ts >= start) & (ts < end))
    history = frames.BAR_SCHEMA.empty_table()
    for reach in LAKE_HISTORY_REACH:
        since = (first - dt.timedelta(days=reach)).isoformat()
        history = _lake_rows(source, (date >= since) & (date <= first.isoformat()) & (ts < start))
        if history.num_rows >= features.HISTORY:
            break
    history = history.slice(max(0, history.num_rows - features.HISTORY))
    following = frames.BAR_SCHEMA.empty_table()
    for reach in LAKE_HISTORY_REACH:
        until = (last + dt.timedelta(days=reach)).isoformat()
        following = _lake_rows(source, (date >= last.isoformat()) & (date <= until) & (ts >= end))
        if following.num_rows:
            break
    return history, bars, following.slice(0, 1)


def labels(close: np.ndarray, flat_threshold: float = 0.0) -> tuple[pa.Array, pa.Array]:
    """(label_ret_1, label_direction) of each bar from the close of the bar after it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.full(len(close), np.nan)
        ret[:-1] = np.log(close[1:] / close[:-1])
    ret = np.where(np.isfinite(ret), ret, np.nan)
    direction = np.where(ret > flat_threshold, "up", np.where(ret < -flat_threshold, "down", "flat"))
    ret_array = pa.array(ret, pa.float64(), from_pandas=True)
    return ret_array, pc.if_else(pc.is_null(ret_array), pa.scalar(None, pa.string()), pa.array(direction))


def build(settings: Settings, symbol: str, tf: str, first: dt.date, last: dt.date, source: str = "db",
          flat_threshold: float = 0.0) -> pa.Table:
    """The dataset of `symbol` from market day `first` to `last`, read from `source` (db or lake)."""
    if source not in SOURCES:
        raise InvalidInput(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    if first > last:
        raise InvalidInput(f"start {first} is after end {last}")
    if tf != TIMEFRAME:
        raise InvalidInput(f"datasets are built from {TIMEFRAME} bars (the lake's and ohlcv_1m's); not {tf}")
    market = frames.symbol_markets(get_engine(settings.database_url), [symbol])[symbol]
    start, end = market_day_bounds(market, first, last)
    if source == "db":
        history, bars, following = _from_db(settings, symbol, market, start, end)
    else:
        history, bars, following = _from_lake(settings, symbol, market, tf, first, last, start, end)
    if not bars.num_rows:
        raise InvalidInput(f"no {tf} bars of {symbol} from {first} to {last} in the "
                           f"{'database' if source == 'db' else 'lake'}")
    series = pa.concat_tables([history, bars, following])
    with_features = features.compute(series)
    label_ret, direction = labels(np.asarray(series.column("close").to_numpy(), dtype=float), flat_threshold)
    rows = with_features.append_column("label_ret_1", label_ret).append_column("label_direction", direction)
    return rows.slice(history.num_rows, bars.num_rows)


def write(rows: pa.Table, out: str) -> None:
    pq.write_table(rows, out)
