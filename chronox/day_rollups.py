"""A day file's rollups (ohlcv_5m, ohlcv_15m, ohlcv_1h), computed from the columns its rows
were read into while they stream into COPY, then written with COPY.

The rule is chronox.rollups': buckets on UTC clock boundaries, open of the first minute, close
of the last, high and low as max and min, volume summed, `bars` counted; 15m rolled up from
5m and 1h from 15m. A day's bounds are whole hours, so bucket k of a day starts k*N minutes
after the day's start. chronox.rollups.refresh computes the same in SQL from the stored
minutes; a PostgreSQL day load of a Polygon file computes it here, where the minutes already
are, which spares the database an aggregation of the whole day (tests/test_day_rollups.py
checks that both give the same rows).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import Connection

from chronox import pgcopy, rollups, store
from chronox.sources.flatfiles import MINUTES_PER_DAY, DayBatch, DayFileReader

CHUNK_ROWS = 20_000  # rollup rows per piece of COPY text


class _Bars:
    """Bars of one timeframe as columns, ordered by symbol then bucket; `firsts` and `lasts`
    (5-minute bars only): their first and last minute."""

    def __init__(self, symbols: np.ndarray, buckets: np.ndarray, prices: np.ndarray, bars: np.ndarray,
                 firsts: np.ndarray | None = None, lasts: np.ndarray | None = None):
        self.symbols, self.buckets, self.prices, self.bars = symbols, buckets, prices, bars
        self.firsts, self.lasts = firsts, lasts

    def rolled_up(self, factor: int) -> _Bars:
        """The bars of `factor` times this size (their buckets hold `factor` of these)."""
        return _group(self.symbols, self.buckets // factor, self.prices, self.bars)

    def only(self, keep: np.ndarray) -> _Bars:
        return _Bars(self.symbols[keep], self.buckets[keep], self.prices[keep], self.bars[keep])


def _bounds(symbols: np.ndarray, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last row of each run of one symbol and bucket."""
    change = np.flatnonzero((symbols[1:] != symbols[:-1]) | (buckets[1:] != buckets[:-1])) + 1
    return np.concatenate([[0], change]), np.concatenate([change, [len(symbols)]]) - 1


def _group(symbols: np.ndarray, buckets: np.ndarray, prices: np.ndarray, bars: np.ndarray) -> _Bars:
    """Consecutive rows of one symbol and bucket (input ordered by symbol, bucket, time) into one bar."""
    if not len(symbols):
        return _Bars(symbols, buckets, prices.reshape(0, 5), bars)
    starts, ends = _bounds(symbols, buckets)
    o, h, low, c, v = prices.T
    rolled = np.column_stack([o[starts], np.maximum.reduceat(h, starts), np.minimum.reduceat(low, starts), c[ends],
                              np.add.reduceat(v, starts)])
    return _Bars(symbols[starts], buckets[starts], rolled, np.add.reduceat(bars, starts))


def _five_minute_bars(symbols: np.ndarray, minutes: np.ndarray, prices: np.ndarray) -> _Bars:
    """Minutes (ordered by symbol and minute) into 5-minute bars, with their first and last minute."""
    five = _group(symbols, minutes // 5, prices, np.ones(len(symbols), dtype=np.int16))
    starts, ends = _bounds(symbols, minutes // 5)
    # Narrow integers: a full market's day is some 700,000 of these.
    return _Bars(five.symbols.astype(np.int32), five.buckets.astype(np.int16), five.prices, five.bars,
                 minutes[starts].astype(np.int16), minutes[ends].astype(np.int16))


class DayRollups:
    """Rolls a day load's kept rows up a batch at a time and writes the rollups of the
    symbols that changed.

    A file in order (Polygon's: by ticker, then time) is rolled up as it goes: the rows of
    the last symbol-hour of a batch wait for the next batch, so every part is final and the
    day's minutes are never held together. A file out of order has its 5-minute parts merged
    and rolled up again at the end.
    """

    def __init__(self, reader: DayFileReader):
        self._reader = reader
        self._index = {s: i for i, s in enumerate(reader.symbols)}
        self._parts: list[tuple[_Bars, _Bars, _Bars]] = []  # 5m, 15m, 1h of each batch
        self._waiting: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the last symbol-hour's rows
        self._open_from = 0  # (symbol, minute) keys below this are rolled up already
        self._in_order = True

    def add(self, batch: DayBatch) -> None:
        symbols, minutes, prices, _ = self._reader.columns(batch)
        if self._waiting is not None:
            symbols, minutes, prices = (np.concatenate([w, n]) for w, n in zip(self._waiting,
                                                                               (symbols, minutes, prices),
                                                                               strict=True))
            self._waiting = None
        if not len(symbols):
            return
        keys = symbols * MINUTES_PER_DAY + minutes
        if np.any(keys[1:] < keys[:-1]):
            order = np.argsort(keys, kind="stable")
            symbols, minutes, prices, keys = symbols[order], minutes[order], prices[order], keys[order]
        if keys[0] < self._open_from:
            self._in_order = False  # an hour rolled up already gets more minutes: merged at the end
        last = _bounds(symbols, minutes // 60)[0][-1]
        self._waiting = (symbols[last:], minutes[last:], prices[last:])
        self._open_from = int(symbols[last]) * MINUTES_PER_DAY + int(minutes[last]) // 60 * 60
        if last:
            self._roll(symbols[:last], minutes[:last], prices[:last])

    def _roll(self, symbols: np.ndarray, minutes: np.ndarray, prices: np.ndarray) -> None:
        five = _five_minute_bars(symbols, minutes, prices)
        fifteen = five.rolled_up(3)
        self._parts.append((five, fifteen, fifteen.rolled_up(4)))

    def _timeframes(self) -> list[list[_Bars]]:
        """The day's 5m, 15m and 1h bars, each as a list of parts in order."""
        if self._waiting is not None:
            self._roll(*self._waiting)
            self._waiting = None
        parts, self._parts = self._parts, []
        if self._in_order:
            return [list(bars) for bars in zip(*parts, strict=True)] if parts else [[], [], []]
        five = _merged([p[0] for p in parts])
        fifteen = five.rolled_up(3)
        return [[five], [fifteen], [fifteen.rolled_up(4)]]

    def write(self, conn: Connection, changed: Sequence[str], start: dt.datetime, end: dt.datetime) -> None:
        """Replace the rollups of `changed` in [start, end) (the day's bounds) by the file's."""
        if not changed:
            return
        wanted = np.zeros(len(self._reader.symbols), dtype=bool)
        wanted[[self._index[s] for s in changed if s in self._index]] = True
        for timeframe, parts in zip(rollups.CHAIN[1:], self._timeframes(), strict=True):
            table, minutes = rollups.TIMEFRAME_TABLES[timeframe]
            chosen = parts if wanted.all() else [bars.only(wanted[bars.symbols]) for bars in parts]
            store.replace_rollups(conn, table.name, changed, start, end, self._binary(chosen, minutes, start))

    def _binary(self, parts: list[_Bars], minutes: int, start: dt.datetime) -> Iterator[bytes]:
        """Binary COPY of rollup rows in store.ROLLUP_COLUMNS order, a chunk at a time (the
        numbers as the doubles they are: nothing to render, nothing for PostgreSQL to parse)."""
        names = self._reader.names
        first, step = pgcopy.microseconds(start), minutes * 60_000_000
        yield pgcopy.HEADER
        for bars in parts:
            for offset in range(0, len(bars.symbols), CHUNK_ROWS):
                part = slice(offset, offset + CHUNK_ROWS)
                prices = bars.prices[part]
                yield pgcopy.symbol_rows(names, bars.symbols[part], [
                    pgcopy.Field(pgcopy.TIMESTAMPTZ, first + bars.buckets[part].astype(np.int64) * step),
                    *(pgcopy.Field(pgcopy.FLOAT8, prices[:, i]) for i in range(5)),
                    pgcopy.Field(pgcopy.INT4, bars.bars[part])])
        yield pgcopy.TRAILER


def _merged(parts: list[_Bars]) -> _Bars:
    """5-minute parts of a file out of order: put in order, and the parts of one bucket merged
    (open of the earliest minute, close of the latest)."""
    if not parts:
        empty = np.zeros(0, dtype=np.int32)
        return _Bars(empty, empty, np.zeros((0, 5)), empty)
    symbols, buckets, prices, bars = (np.concatenate([getattr(p, name) for p in parts])
                                      for name in ("symbols", "buckets", "prices", "bars"))
    firsts = np.concatenate([p.firsts for p in parts if p.firsts is not None])
    lasts = np.concatenate([p.lasts for p in parts if p.lasts is not None])
    keys = symbols.astype(np.int64) * (MINUTES_PER_DAY // 5) + buckets
    order = np.lexsort((firsts, keys))
    merged = _group(symbols[order], buckets[order], prices[order], bars[order])
    by_last = np.lexsort((lasts, keys))
    merged.prices[:, 3] = prices[by_last][_bounds(symbols[by_last], buckets[by_last])[1], 3]
    return merged

