"""Polygon day flat files (`us_stocks_sip/minute_aggs_v1`) from a local directory or S3.

A day file holds every US ticker; it is streamed once and only rows of the wanted
symbols are kept, so memory does not grow with the file.
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import logging
import math
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

from chronox.bars import MAX_TRANSACTIONS, QuarantinedRow, isoformat_utc, price_problem
from chronox.calendar import day_bounds_utc
from chronox.settings import Settings
from chronox.strategy import SYMBOL_PATTERN

log = logging.getLogger(__name__)

PREFIX = "us_stocks_sip/minute_aggs_v1"
HEADER = ("ticker", "volume", "open", "close", "high", "low", "window_start", "transactions")
MINUTE_NS = 60_000_000_000
MINUTES_PER_DAY = 25 * 60  # a New York day is 25 h long when clocks fall back
INF = math.inf


CsvReader = Any  # csv.reader() objects: iterators of rows with a line_num; typeshed names no public type


class FlatFileError(Exception):
    """The file as a whole cannot be read (corrupt gzip, wrong header); nothing is loaded."""


def relative_path(day: dt.date) -> str:
    return f"{PREFIX}/{day:%Y}/{day:%m}/{day.isoformat()}.csv.gz"


class FlatFileStore:
    """Where day files live: a local directory or an S3 bucket (Polygon's or a mirror)."""

    def __init__(self, settings: Settings):
        self.url = settings.flatfiles_url
        self._settings = settings
        self._s3: Any = None
        self.bucket: str | None = None
        if self.url.startswith("s3://"):
            bucket_and_prefix = self.url[len("s3://"):].strip("/")
            self.bucket, _, self.root = bucket_and_prefix.partition("/")
        else:
            self.root = self.url[len("file://"):] if self.url.startswith("file://") else self.url

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def _client(self):  # type: ignore[no-untyped-def]
        if self._s3 is None:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config

            s = self._settings
            config = Config(retries={"max_attempts": 5, "mode": "standard"})
            if not s.s3_access_key_id:
                config = config.merge(Config(signature_version=UNSIGNED))
            self._s3 = boto3.session.Session().client(
                "s3",
                endpoint_url=s.s3_endpoint_url,
                aws_access_key_id=s.s3_access_key_id,
                aws_secret_access_key=s.s3_secret_access_key,
                region_name="us-east-1",
                config=config,
            )
        return self._s3

    def _key(self, day: dt.date) -> str:
        return f"{self.root}/{relative_path(day)}" if self.root else relative_path(day)

    def location(self, day: dt.date) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self._key(day)}"
        return str(Path(self.root) / relative_path(day))

    def exists(self, day: dt.date) -> bool:
        if not self.is_s3:
            return (Path(self.root) / relative_path(day)).is_file()
        from botocore.exceptions import ClientError

        try:
            self._client().head_object(Bucket=self.bucket, Key=self._key(day))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def open(self, day: dt.date) -> IO[bytes]:
        """The raw (gzip-compressed) byte stream of a day file."""
        if not self.is_s3:
            return open(Path(self.root) / relative_path(day), "rb")
        body = self._client().get_object(Bucket=self.bucket, Key=self._key(day))["Body"]
        return body  # botocore StreamingBody reads incrementally


class FlatRow(NamedTuple):
    symbol: str
    minute: int  # minutes since New York midnight of the file's day
    open: float
    high: float
    low: float
    close: float
    volume: float
    transactions: int | None


@dataclass
class DayFileStats:
    rows_read: int = 0
    rows_kept: Counter = field(default_factory=Counter)
    duplicates: int = 0
    other_tickers: int = 0
    quarantined: list[QuarantinedRow] = field(default_factory=list)


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
                 progress: Callable[[int], None] | None = None, progress_every: int = 50_000):
        self.raw = raw
        self.progress = progress
        self.progress_every = progress_every
        self.day = day
        self.wanted = None if wanted is None else frozenset(wanted)
        self.origin = origin
        self.stats = DayFileStats()
        start, end = day_bounds_utc(day)
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
                            self._quarantine(symbol, fields, f"expected {width} columns, got {len(fields)}")
                            continue
                        symbol = fields[i_sym]
                        if wanted is not None:
                            if symbol not in wanted:
                                stats.other_tickers += 1
                                continue
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
                        numbers = f"{fields[i_open]}\t{fields[i_high]}\t{fields[i_low]}\t{fields[i_close]}\t{fields[i_vol]}"
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


class BarTap(Protocol):
    """Called for each row a day load stores: symbol, ts (ISO UTC), open, high, low, close, volume."""

    def __call__(self, symbol: str, ts: str, o: float, h: float, low: float, c: float, v: float, /) -> None: ...


class DayFileRows:
    """A day file's valid rows in the shapes storage takes (chronox.store.DayRows).

    `copy_lines()` is the fast path: COPY lines rendered in the parsing loop. With a tap
    (kafka-first publishing) every row is reported as it streams into storage.
    """

    def __init__(self, reader: DayFileReader, source: str, tap: BarTap | None = None):
        self.reader = reader
        self.source = source
        self._tap = tap

    def tapped(self, tap: BarTap) -> DayFileRows:
        return DayFileRows(self.reader, self.source, tap)

    def _rows(self) -> Iterator[FlatRow]:
        tap, iso = self._tap, self.reader.minute_iso
        for r in self.reader:
            if tap is not None:
                tap(r.symbol, iso[r.minute], r.open, r.high, r.low, r.close, r.volume)
            yield r

    def copy_lines(self) -> Iterator[str]:
        if self._tap is None:
            yield from self.reader.copy_lines(self.source)
            return
        iso, source = self.reader.minute_iso, self.source
        for r in self._rows():
            n = "\\N" if r.transactions is None else r.transactions
            yield (f"{r.symbol}\t{iso[r.minute]}\t{r.open!r}\t{r.high!r}\t{r.low!r}\t"
                   f"{r.close!r}\t{r.volume!r}\t\\N\t{n}\t{source}\n")

    def records(self) -> Iterator[dict[str, Any]]:
        times = self.reader.minute_times
        for r in self._rows():
            yield {"symbol": r.symbol, "ts": times[r.minute], "open": r.open, "high": r.high, "low": r.low,
                   "close": r.close, "volume": r.volume, "vwap": None, "transactions": r.transactions,
                   "source": self.source}
