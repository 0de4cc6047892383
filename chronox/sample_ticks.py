"""Synthetic tick day files in Polygon's exact `trades_v1` / `quotes_v1` layout and CSV format.

The values are SYNTHETIC, for tests and benchmarks only. Like Polygon's files they are
sorted by ticker then SIP timestamp, write several conditions quoted ("12,37"), times in
epoch nanoseconds, and 0 for the TRF fields of a trade an exchange reported.
"""
from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from chronox.calendar import session
from chronox.sources.flatfiles import relative_path
from chronox.ticks import KINDS

EXCHANGES = np.array([1, 2, 3, 4, 7, 8, 10, 11, 12, 15, 17, 19, 21], dtype=np.int64)
CONDITIONS = np.array([b"", b"12", b'"12,37"', b"37", b'"14,41"', b'"12,14,41"'], dtype=object)


def tick_file_path(root: Path, dataset: str, day: dt.date) -> Path:
    return Path(root) / relative_path(day, KINDS[dataset].file_dataset)


def write_tick_file(root: Path, dataset: str, day: dt.date, lines: Iterable[str | bytes],
                    header: str | None = None) -> Path:
    """A day file of `dataset` (trades, quotes) made of `lines` under Polygon's header."""
    path = tick_file_path(root, dataset, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as out:
        out.write(((header if header is not None else ",".join(KINDS[dataset].header)) + "\n").encode())
        for line in lines:
            out.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


def trade_lines(day: dt.date, tickers: Sequence[str], per_ticker: int, seed: int = 0,
                first_sequence: int = 1) -> pa.Array:
    """`per_ticker` trades of each ticker over the day's extended session as CSV lines (no line
    ends), tickers in order and each ticker's trades in time order, as Polygon sorts its files."""
    rng = np.random.default_rng(seed)
    s = session(day)
    start_ns = int(s.extended_open.timestamp()) * 1_000_000_000
    span_ns = int((s.extended_close - s.extended_open).total_seconds()) * 1_000_000_000
    count = len(tickers) * per_ticker
    ticker_of = np.repeat(np.arange(len(tickers)), per_ticker)
    sip = start_ns + np.sort(rng.integers(0, span_ns, size=(len(tickers), per_ticker)), axis=1).ravel()
    sequence = np.tile(np.arange(first_sequence, first_sequence + per_ticker, dtype=np.int64), len(tickers))
    participant = sip - rng.integers(1_000, 500_000, size=count)
    base = np.array([20.0 + (sum(map(ord, t)) * 7919 % 480) for t in tickers])
    price = np.round(base[ticker_of] * (1 + rng.normal(0, 0.002, size=count)), 2)
    size = rng.integers(1, 500, size=count)
    trade_id = rng.integers(10**13, 10**14, size=count)
    names = pa.array([t.encode() for t in tickers], pa.binary()).take(pa.array(ticker_of))
    text = [names, pa.array(CONDITIONS[rng.integers(0, len(CONDITIONS), size=count)], pa.binary()),
            pa.scalar(b"0", pa.binary())]
    for values in (EXCHANGES[rng.integers(0, len(EXCHANGES), size=count)], trade_id, participant):
        text.append(pc.cast(pa.array(values), pa.string()).cast(pa.binary()))
    text.append(pc.cast(pa.array(price), pa.string()).cast(pa.binary()))
    for values in (sequence, sip, size, rng.integers(1, 4, size=count)):
        text.append(pc.cast(pa.array(values), pa.string()).cast(pa.binary()))
    text += [pa.scalar(b"0", pa.binary()), pa.scalar(b"0", pa.binary())]
    return pc.binary_join_element_wise(*text, pa.scalar(b",", pa.binary()))
