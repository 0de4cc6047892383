"""The Parquet lake (CHRONOX_LAKE_URL: a directory or s3://bucket/prefix), through fsspec.

Layout, Hive partitions that DuckDB, Polars, Spark and pyarrow.dataset read as one table:

    bars/market={market}/tf={tf}/symbol={SYMBOL}/date={YYYY-MM-DD}/part-0.parquet
    news/date={YYYY-MM-DD}/part-0.parquet

One file per symbol-day (per day for news), replaced whole: on a file system it is
written under a hidden temporary name (readers skip names starting with "."), then
renamed over the old one; on an object store it is one PUT. A reader never sees half a
day, and the same rows always give the same bytes.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from sqlalchemy import Engine

from chronox import registry, sinks
from chronox.calendar import calendar_for
from chronox.db import get_engine
from chronox.settings import Settings
from chronox.sinks import frames, state
from chronox.store import TIMEFRAME

log = logging.getLogger(__name__)

PART = "part-0.parquet"
# snappy: the Parquet default every reader has; zstd costs twice the time per small file.
COMPRESSION = "snappy"
WRITE_THREADS = 4  # file writes and PUTs overlap; encoding releases the GIL


class LakeError(Exception):
    """The lake is not usable as configured (a user mistake, said in one line)."""


@dataclass
class SyncResult:
    sink: str
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    rows: int = 0
    days: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"sink": self.sink, "written": self.written, "unchanged": self.unchanged, "removed": self.removed,
                "rows": self.rows, "days": self.days}


class Lake:
    """A lake root on a file system fsspec knows."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        try:
            fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise LakeError(f"CHRONOX_LAKE_URL={url!r}: {exc}") from None
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        if not settings.lake_url:
            raise LakeError("no lake configured: set CHRONOX_LAKE_URL (a directory or s3://bucket/prefix)")
        options: dict[str, Any] = {}
        if settings.lake_url.startswith(("s3://", "s3a://")):
            if settings.lake_s3_endpoint_url:
                options["endpoint_url"] = settings.lake_s3_endpoint_url
            if settings.lake_s3_access_key_id:
                options["key"] = settings.lake_s3_access_key_id
                options["secret"] = settings.lake_s3_secret_access_key
        return cls(settings.lake_url, options)

    # -- layout -------------------------------------------------------------------------

    def bars_dir(self, market: str, tf: str, symbol: str) -> str:
        return f"{self.root}/bars/market={market}/tf={tf}/symbol={symbol}"

    def bar_path(self, market: str, tf: str, symbol: str, day: dt.date) -> str:
        return f"{self.bars_dir(market, tf, symbol)}/date={day.isoformat()}/{PART}"

    def news_path(self, day: dt.date) -> str:
        return f"{self.root}/news/date={day.isoformat()}/{PART}"

    # -- files --------------------------------------------------------------------------

    def put(self, files: Sequence[tuple[str, bytes]]) -> None:
        """Write each (path, bytes) whole, replacing what was there."""
        self.put_tables([(path, data) for path, data in files])

    def put_tables(self, files: Sequence[tuple[str, bytes | pa.Table]]) -> None:
        """Write each (path, Parquet bytes or a table to encode) whole, replacing what was there.
        Encoding happens in the writer threads: pyarrow releases the GIL while it encodes."""
        if not files:
            return
        if not self.local:
            # One PUT per file, sent concurrently by the async file system.
            self.fs.pipe({path: data if isinstance(data, bytes) else encode(data) for path, data in files})
            return

        def write(item: tuple[str, bytes | pa.Table]) -> None:
            path, data = item
            _replace_file(path, data if isinstance(data, bytes) else encode(data))

        with ThreadPoolExecutor(min(WRITE_THREADS, len(files))) as pool:
            for _ in pool.map(write, files):
                pass

    def remove(self, paths: Iterable[str]) -> None:
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass

    def read(self, path: str) -> bytes:
        data: bytes = self.fs.cat_file(path)
        return data


def _replace_file(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
        os.replace(temporary, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def encode(rows: pa.Table) -> bytes:
    """Parquet bytes of a table; the same rows always give the same bytes."""
    out = pa.BufferOutputStream()
    pq.write_table(rows.combine_chunks(), out, compression=COMPRESSION)
    return bytes(out.getvalue())


# -- the bar sink ------------------------------------------------------------------------

def sync_bars(settings: Settings, symbols: Sequence[str], days: Sequence[str | dt.date],
              engine: Engine | None = None, lake: Lake | None = None) -> SyncResult:
    """Make the lake hold exactly the committed bars of these symbol-days.

    A symbol-day whose rows have the digest the lake already holds is not rewritten; one
    without rows any more (say a flat file replaced REST bars with nothing) loses its file.
    """
    engine = engine or get_engine(settings.database_url)
    lake = lake or Lake.from_settings(settings)
    result = SyncResult(sinks.LAKE)
    markets = frames.symbol_markets(engine, symbols)
    by_market: dict[str, list[str]] = {}
    for symbol in symbols:
        by_market.setdefault(markets[symbol], []).append(symbol)
    for the_day in sorted({_day(d) for d in days}):
        result.days.append(the_day.isoformat())
        for market, members in sorted(by_market.items()):
            _sync_day(engine, lake, market, members, the_day, result)
    return result


def _sync_day(engine: Engine, lake: Lake, market: str, symbols: Sequence[str], day: dt.date,
              result: SyncResult) -> None:
    start, end = calendar_for(market).day_bounds(day)
    with engine.connect() as conn:
        bars = frames.read_bars(conn, symbols, start, end)
        holds = state.held(conn, sinks.LAKE, list(symbols), [day])
    files: list[tuple[str, bytes | pa.Table]] = []
    entries: list[tuple[str, dt.date, int, str]] = []
    present = set()
    for symbol, rows in frames.by_symbol(bars):
        present.add(symbol)
        digest = frames.digest(rows)
        held = holds.get((symbol, day))
        entries.append((symbol, day, rows.num_rows, digest))  # unchanged too: checked against the database now
        if held is not None and held.digest == digest and held.rows == rows.num_rows:
            result.unchanged += 1
            continue
        files.append((lake.bar_path(market, TIMEFRAME, symbol, day), rows))
        result.rows += rows.num_rows
    gone = [s for s in symbols if s not in present and holds.get((s, day), state.Held(0, "")).rows]
    lake.put_tables(files)
    lake.remove(lake.bar_path(market, TIMEFRAME, s, day) for s in gone)
    with engine.begin() as conn:
        state.record(conn, sinks.LAKE, entries + [(s, day, 0, "") for s in gone])
    result.written += len(files)
    result.removed += len(gone)


def _day(value: str | dt.date) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


# -- reading and checking ----------------------------------------------------------------

def dataset(lake: Lake, market: str = frames.DEFAULT_MARKET, tf: str = TIMEFRAME,
            symbol: str | None = None) -> Any:
    """The bars under the lake (or one symbol's) as a pyarrow dataset with the Hive
    partition columns; the files' own `symbol` column is the partition's value."""
    import pyarrow.dataset as ds

    base = lake.bars_dir(market, tf, symbol) if symbol else f"{lake.root}/bars"
    if not lake.fs.exists(base):
        return None
    return ds.dataset(base, filesystem=lake.fs, format="parquet", partitioning="hive")


def file_rows(lake: Lake, paths: Sequence[str]) -> dict[str, int]:
    """Rows per file, read from each Parquet footer."""

    def rows(path: str) -> tuple[str, int]:
        with lake.fs.open(path, "rb") as handle:
            return path, pq.ParquetFile(handle).metadata.num_rows

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        return dict(pool.map(rows, paths))


def lake_counts(lake: Lake, first: dt.date, last: dt.date, symbols: Sequence[str] | None = None,
                tf: str = TIMEFRAME) -> dict[tuple[str, dt.date], int]:
    """Rows per (symbol, day) in the lake's bar files from `first` to `last`."""
    pattern = f"{lake.root}/bars/market=*/tf={tf}/symbol=*/date=*/{PART}"
    wanted = set(symbols) if symbols else None
    paths: dict[str, tuple[str, dt.date]] = {}
    for path in lake.fs.glob(pattern):
        parts = dict(p.split("=", 1) for p in path.split("/") if "=" in p)
        try:
            day = dt.date.fromisoformat(parts["date"])
        except (KeyError, ValueError):
            continue
        if first <= day <= last and (wanted is None or parts.get("symbol") in wanted):
            paths[path] = (parts["symbol"], day)
    return {paths[p]: n for p, n in file_rows(lake, list(paths)).items()}


def database_counts(engine: Engine, first: dt.date, last: dt.date,
                    symbols: Sequence[str] | None = None) -> dict[tuple[str, dt.date], int]:
    """Rows per (symbol, market day) of ohlcv_1m from `first` to `last`, for `symbols` or
    every registered symbol."""
    if symbols is None:
        symbols = [row.symbol for row in registry.list_symbols(engine)]
    by_market: dict[str, list[str]] = {}
    for symbol, market in frames.symbol_markets(engine, symbols).items():
        by_market.setdefault(market, []).append(symbol)
    counts: dict[tuple[str, dt.date], int] = {}
    with engine.connect() as conn:
        for market, members in by_market.items():
            counts.update(frames.day_counts(conn, members, market, first, last))
    return counts


def check(settings: Settings, first: dt.date, last: dt.date,
          symbols: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare lake and database row counts per symbol-day; the differences."""
    lake = Lake.from_settings(settings)
    engine = get_engine(settings.database_url)
    in_lake = lake_counts(lake, first, last, symbols)
    in_db = database_counts(engine, first, last, symbols)
    differences = [{"symbol": s, "day": d.isoformat(), "database": in_db.get((s, d), 0), "lake": in_lake.get((s, d))}
                   for s, d in sorted(set(in_lake) | set(in_db)) if in_db.get((s, d), 0) != in_lake.get((s, d), 0)]
    return {"lake": lake.url, "start": first.isoformat(), "end": last.isoformat(),
            "symbol_days": len(set(in_lake) | set(in_db)), "differences": differences}


# -- news ----------------------------------------------------------------------------------

def sync_news(settings: Settings, days: Sequence[str | dt.date], read_day: Callable[[dt.date], pa.Table],
              engine: Engine | None = None) -> SyncResult:
    """Rewrite the news file of each day from `read_day` (the committed articles), when changed."""
    engine = engine or get_engine(settings.database_url)
    lake = Lake.from_settings(settings)
    result = SyncResult(sinks.NEWS_LAKE)
    for the_day in sorted({_day(d) for d in days}):
        result.days.append(the_day.isoformat())
        rows = read_day(the_day)
        digest = frames.digest(rows)
        with engine.connect() as conn:
            held = state.held(conn, sinks.NEWS_LAKE, ["*"], [the_day]).get(("*", the_day))
        if held is not None and held.digest == digest:
            result.unchanged += 1
            continue
        if rows.num_rows:
            lake.put([(lake.news_path(the_day), encode(rows))])
            result.written += 1
        else:
            lake.remove([lake.news_path(the_day)])
        with engine.begin() as conn:
            state.record(conn, sinks.NEWS_LAKE, [("*", the_day, rows.num_rows, digest)])
        result.rows += rows.num_rows
    return result
