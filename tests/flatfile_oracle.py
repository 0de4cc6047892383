"""The per-row day-file reader ChronoX used before the vectorized one, kept as a test oracle.

This is chronox/sources/flatfiles.py's DayFileReader as it was (Python's csv, float() and
int() per row): tests/test_flatfile_equivalence.py checks that the vectorized reader gives
exactly its rows, duplicates and quarantine records. Not used by the product.
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import math
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import IO, Any

from chronox.bars import MAX_TRANSACTIONS, QuarantinedRow, isoformat_utc, price_problem
from chronox.calendar import day_bounds_utc
from chronox.sources.flatfiles import HEADER, MINUTE_NS, MINUTES_PER_DAY, DayFileStats, FlatFileError, FlatRow
from chronox.strategy import SYMBOL_PATTERN

INF = math.inf
CsvReader = Any


def _printable(fields: list[str]) -> str:
    text = ",".join(fields)
    if len(text) > 2000:
        text = text[:2000] + f"...(+{len(text) - 2000} chars)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class DayFileReader:
    """Iterates the valid rows of wanted symbols in one day file; bad rows go to stats.

    Raises FlatFileError when the file itself is broken; callers load inside a
    transaction so rows read before the failure are never committed.
    """

    def __init__(self, raw: IO[bytes], day: dt.date, wanted: Collection[str] | None, origin: str,
                 progress: Callable[[int], None] | None = None, progress_every: int = 50_000,
                 bounds: tuple[dt.datetime, dt.datetime] | None = None, aliases: Mapping[str, str] | None = None):
        """`bounds`: the file's day in UTC (default the New York day of US stock files; a
        crypto file covers the UTC day). `aliases`: the file's ticker -> the canonical
        symbol, for files that spell tickers their own way (`X:BTC-USD`); `wanted` then
        names file tickers."""
        self.raw = raw
        self.progress = progress
        self.progress_every = progress_every
        self.day = day
        self.wanted = None if wanted is None else frozenset(wanted)
        self.aliases = dict(aliases) if aliases else None
        self.origin = origin
        self.stats = DayFileStats()
        start, end = self.bounds = bounds or day_bounds_utc(day)
        # 23, 24 or 25 hours: a minute past the day's end belongs to the next day's file, and
        # loaded here it would sit outside the window a reload of this day replaces.
        self.day_minutes = int((end - start).total_seconds()) // 60
        self.day_start_ns = int(start.timestamp()) * 1_000_000_000
        self.minute_times = [start + dt.timedelta(minutes=i) for i in range(MINUTES_PER_DAY)]
        self.minute_iso = [isoformat_utc(t) for t in self.minute_times]

    def _quarantine(self, symbol: str | None, fields: list[str], reason: str) -> None:
        self.stats.quarantined.append(QuarantinedRow(self.origin, symbol, _printable(fields), reason))

    def __iter__(self) -> Iterator[FlatRow]:
        for symbol, minute, o, h, low, c, v, n in self._checked(None):
            yield FlatRow(symbol, minute, o, h, low, c, v, n)

    def copy_lines(self, source: str) -> Iterator[str]:
        """PostgreSQL COPY text lines of the valid rows: the hot path of a day load.

        Rendered inside the parsing loop; numbers are passed through as written in the
        file once float() accepted them, which saves re-rendering five floats per row.
        A spelling PostgreSQL may read differently (digit separators, exponents that
        underflow, tabs or non-ASCII digits and spaces) is rendered from the float instead.
        """
        return self._checked(source)

    def _checked(self, copy_source: str | None) -> Iterator[Any]:
        text = io.TextIOWrapper(
            gzip.GzipFile(fileobj=self.raw, mode="rb"), encoding="utf-8",
            errors="surrogateescape", newline="",
        )
        # Polygon never quotes; a stray quote must not swallow the lines after it into one field.
        reader = csv.reader(text, quoting=csv.QUOTE_NONE)
        try:
            yield from self._rows(reader, copy_source)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise FlatFileError(
                f"{self.origin}: corrupt or truncated gzip after {self.stats.rows_read} rows ({exc})"
            ) from None
        except OSError as exc:
            raise FlatFileError(f"{self.origin}: unreadable ({exc})") from None

    def _header(self, reader: CsvReader) -> tuple[int, ...]:
        try:
            header = next(reader)
        except StopIteration:
            raise FlatFileError(f"{self.origin}: empty file, no header") from None
        except csv.Error as exc:
            raise FlatFileError(f"{self.origin}: unreadable header ({exc})") from None
        names = [h.strip().lower() for h in header]
        missing = [h for h in HEADER if h not in names]
        if missing:
            raise FlatFileError(
                f"{self.origin}: header lacks {', '.join(missing)} (expected {','.join(HEADER)})"
            )
        # A row of another width than the header is misaligned: its values cannot be trusted.
        return (*(names.index(h) for h in HEADER), len(names))

    def _rows(self, reader: CsvReader, copy_source: str | None) -> Iterator[Any]:
        """Valid rows as tuples, or as COPY lines when copy_source is given.

        One loop with everything inlined: this runs for every row of a 1-3 M row file.
        """
        i_sym, i_vol, i_open, i_close, i_high, i_low, i_ws, i_n, width = self._header(reader)
        wanted = self.wanted
        aliases = self.aliases
        stats = self.stats
        day_start_ns = self.day_start_ns
        progress, every = self.progress, self.progress_every
        iso = self.minute_iso
        day_minutes = self.day_minutes
        null = "\\N"
        seen: dict[str, bytearray] = {}
        kept_total = 0
        try:
            while True:
                try:
                    for fields in reader:
                        if len(fields) != width:
                            symbol = fields[i_sym] if len(fields) > i_sym else None
                            if symbol is not None and wanted is not None and symbol not in wanted:
                                stats.other_tickers += 1
                                continue
                            if symbol is not None and aliases is not None:
                                symbol = aliases.get(symbol, symbol)
                            self._quarantine(symbol, fields, f"expected {width} columns, got {len(fields)}")
                            continue
                        symbol = fields[i_sym]
                        if wanted is not None:
                            if symbol not in wanted:
                                stats.other_tickers += 1
                                continue
                            if aliases is not None:
                                symbol = aliases[symbol]
                        elif symbol not in seen and not SYMBOL_PATTERN.fullmatch(symbol):
                            self._quarantine(None, fields, f"ticker {symbol!r} is not a valid symbol")
                            continue
                        try:
                            ws = int(fields[i_ws])
                            o = float(fields[i_open])
                            h = float(fields[i_high])
                            low = float(fields[i_low])
                            c = float(fields[i_close])
                            v = float(fields[i_vol])
                            raw_n = fields[i_n]
                            n = int(raw_n) if raw_n else None
                        except ValueError as exc:
                            self._quarantine(symbol, fields, f"unparseable field: {exc}")
                            continue
                        minute, rest = divmod(ws - day_start_ns, MINUTE_NS)
                        if rest or not 0 <= minute < day_minutes:
                            self._quarantine(
                                symbol, fields,
                                f"window_start {ws} is not a minute of {self.day} (epoch nanoseconds expected)",
                            )
                            continue
                        if not (o > 0 and c > 0 and low > 0 and v >= 0 and h >= o and h >= c
                                and low <= o and low <= c and h < INF and v < INF):
                            self._quarantine(symbol, fields, price_problem(o, h, low, c, v) or "invalid prices")
                            continue
                        if n is not None and not 0 <= n <= MAX_TRANSACTIONS:
                            self._quarantine(symbol, fields, f"transactions must be >= 0, got {n}" if n < 0 else
                                             f"transactions must be <= {MAX_TRANSACTIONS}, got {n}")
                            continue
                        minutes = seen.get(symbol)
                        if minutes is None:
                            minutes = seen[symbol] = bytearray(MINUTES_PER_DAY)
                        if minutes[minute]:
                            stats.duplicates += 1
                            continue
                        minutes[minute] = 1
                        kept_total += 1
                        if progress is not None and kept_total % every == 0:
                            progress(kept_total)
                        if copy_source is None:
                            yield symbol, minute, o, h, low, c, v, n
                            continue
                        numbers = (f"{fields[i_open]}\t{fields[i_high]}\t{fields[i_low]}\t"
                                   f"{fields[i_close]}\t{fields[i_vol]}")
                        # float() also takes tabs, Unicode digits and spaces around a number, which
                        # would break the COPY line or PostgreSQL's float parser.
                        if not numbers.isascii() or numbers.count("\t") != 4 \
                                or "_" in numbers or "e" in numbers or "E" in numbers:
                            numbers = f"{o!r}\t{h!r}\t{low!r}\t{c!r}\t{v!r}"
                        yield f"{symbol}\t{iso[minute]}\t{numbers}\t{null}\t{null if n is None else n}\t{copy_source}\n"
                    break
                except csv.Error as exc:
                    # The csv module rejects a record (NUL byte, oversized field) and can go on.
                    self._quarantine(None, [], f"unparseable CSV line near row {reader.line_num}: {exc}")
        finally:
            stats.rows_read = reader.line_num - 1
            # Counted from the per-symbol minute maps: cheaper than a counter per row.
            for symbol, minutes in seen.items():
                stats.rows_kept[symbol] = minutes.count(1)
        if progress is not None:
            progress(kept_total)
