"""Polygon day flat files (`us_stocks_sip/minute_aggs_v1`) from a local directory or S3.

A day file holds every US ticker; it is streamed once, a block of lines at a time, and only
rows of the wanted symbols are kept, so memory does not grow with the file. Parsing, the
ticker filter, validation and the COPY text are Arrow compute kernels over each block, so a
day load is bound by PostgreSQL's COPY rather than by Python's per-row work.
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import logging
import math
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from chronox import pgcopy
from chronox.bars import MAX_TRANSACTIONS, QuarantinedRow, isoformat_utc, price_problem, raw_line
from chronox.calendar import day_bounds_utc
from chronox.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "us_stocks_sip/minute_aggs_v1"
# Polygon's day-file datasets: one file per day holding every ticker of the market.
US_STOCKS = "us_stocks"
GLOBAL_CRYPTO = "global_crypto"
PREFIXES = {US_STOCKS: PREFIX, GLOBAL_CRYPTO: "global_crypto/minute_aggs_v1"}
# Tick day files (chronox.ticks reads them): every US trade or NBBO quote of a day.
US_STOCKS_TRADES = "us_stocks_trades"
US_STOCKS_QUOTES = "us_stocks_quotes"
PREFIXES.update({US_STOCKS_TRADES: "us_stocks_sip/trades_v1", US_STOCKS_QUOTES: "us_stocks_sip/quotes_v1"})
HEADER = ("ticker", "volume", "open", "close", "high", "low", "window_start", "transactions")
MINUTE_NS = 60_000_000_000
MINUTES_PER_DAY = 25 * 60  # a New York day is 25 h long when clocks fall back
INF = math.inf



class FlatFileError(Exception):
    """The file as a whole cannot be read (corrupt gzip, wrong header); nothing is loaded."""


def relative_path(day: dt.date, dataset: str = US_STOCKS) -> str:
    return f"{PREFIXES[dataset]}/{day:%Y}/{day:%m}/{day.isoformat()}.csv.gz"


class FlatFileStore:
    """Where day files live: a local directory or an S3 bucket (Polygon's or a mirror)."""

    def __init__(self, settings: Settings, dataset: str = US_STOCKS):
        self.dataset = dataset
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
        return f"{self.root}/{relative_path(day, self.dataset)}" if self.root else relative_path(day, self.dataset)

    def location(self, day: dt.date) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self._key(day)}"
        return str(Path(self.root) / relative_path(day, self.dataset))

    def exists(self, day: dt.date) -> bool:
        if not self.is_s3:
            return (Path(self.root) / relative_path(day, self.dataset)).is_file()
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
            return open(Path(self.root) / relative_path(day, self.dataset), "rb")
        body = self._client().get_object(Bucket=self.bucket, Key=self._key(day))["Body"]
        return body  # botocore StreamingBody reads incrementally


@dataclass
class PublishedDays:
    """Which of the days a run wants have their day file out."""

    available: list[dt.date]  # published, in order
    missing: list[dt.date]  # not published though a later day is: gone, the REST fill takes them
    unpublished: list[dt.date]  # after the newest published day: not out yet
    newest: dt.date | None


def published_days(days: Collection[dt.date], published: Callable[[dt.date], bool]) -> PublishedDays:
    """`days` split by whether their file is out (`published`, one look-up per day)."""
    wanted = sorted(days)
    available = [d for d in wanted if published(d)]
    newest = available[-1] if available else None
    out = set(available)
    return PublishedDays(available, [d for d in wanted if d not in out and newest is not None and d < newest],
                         [d for d in wanted if newest is None or d > newest], newest)


class FlatRow(NamedTuple):
    symbol: str
    minute: int  # minutes since the start of the file's day (New York midnight for US stocks)
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


# Numbers the kernels take as written: plain decimals, which Python's float() and int() and
# Arrow's parsers (correctly rounded both) read to the same value, and which PostgreSQL's COPY
# reads the same way too. Any other spelling (signs, exponents, spaces, digit separators,
# non-ASCII digits, junk) goes through the per-row rules, as does every row they refuse.
NUMBERS = ("open", "high", "low", "close", "volume")  # COPY order, also of DayBatch.prices
PLAIN = {
    **{name: r"[0-9]{1,20}(?:\.[0-9]{0,20})?" for name in NUMBERS},
    "window_start": r"[0-9]{1,18}|[1-8][0-9]{18}",  # within int64
    "transactions": r"[0-9]{0,10}",  # empty: no count
}
BLOCK_BYTES = 1 << 20  # decompressed bytes per block of lines: about 20,000 rows


def _line_end(buffer: bytearray) -> int:
    """Where the last complete line of `buffer` ends (0: none). A trailing \\r waits: it may
    be the first half of a \\r\\n still to come."""
    end = len(buffer)
    if end and buffer[end - 1] == 13:
        end -= 1
    return max(buffer.rfind(b"\n", 0, end), buffer.rfind(b"\r", 0, end)) + 1


def _normalized(block: bytes) -> bytes:
    """Line ends as Python's universal newlines split lines (\\r\\n, \\r, \\n), all written \\n."""
    if b"\r" in block:
        return block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return block


def _blocks(raw: IO[bytes]) -> Iterator[bytes]:
    """The decompressed stream in blocks of whole lines, about BLOCK_BYTES each (a longer
    line makes a longer block).

    A gzip error is raised after the complete lines before it were yielded, as a reader of
    lines would have seen them; the part line it cut is dropped.
    """
    gz = gzip.GzipFile(fileobj=raw, mode="rb")
    pending = bytearray()
    while True:
        try:
            chunk = gz.read1(BLOCK_BYTES)
        except (EOFError, zlib.error, OSError) as exc:  # gzip.BadGzipFile is an OSError
            error = exc
        else:
            if not chunk:
                if pending:
                    yield _normalized(bytes(pending))  # the last line may lack its end
                return
            pending += chunk
            if len(pending) >= BLOCK_BYTES and (cut := _line_end(pending)):
                yield _normalized(bytes(pending[:cut]))
                del pending[:cut]
            continue
        if cut := _line_end(pending):
            yield _normalized(bytes(pending[:cut]))
        raise error


@dataclass
class DayBatch:
    """The rows kept from one block of a day file, in file order.

    Most are numpy columns; `extra` holds the few rows only the per-row rules accepted (an
    odd spelling of a number), with their place in the block.
    """

    order: np.ndarray  # line of each row within its block
    symbols: np.ndarray  # index into DayFileReader.symbols
    minutes: np.ndarray  # index into DayFileReader.minute_times / minute_iso
    prices: np.ndarray  # float64, shape (rows, 5): open, high, low, close, volume
    transactions: np.ndarray  # int64, -1 where the file has none
    extra: list[tuple[int, FlatRow]]

    def __len__(self) -> int:
        return len(self.order) + len(self.extra)


KeptRow = tuple[int, int, float, float, float, float, float, int | None]  # symbol index, minute, o h l c v, n


class DayFileReader:
    """The valid rows of wanted symbols in one day file, a block at a time; bad rows go to stats.

    Columnar: a block of about 20,000 lines is split, filtered to the wanted tickers and
    checked with Arrow compute kernels. The few rows the kernels do not accept as plainly
    valid (odd spellings of numbers, bad values, rows of another width, lines the csv module
    would refuse) go through the per-row rules, so every row gets exactly the outcome and
    quarantine reason Python's csv, float() and int() give it.

    Raises FlatFileError when the file itself is broken; callers load inside a
    transaction so rows read before the failure are never committed.
    """

    def __init__(self, raw: IO[bytes], day: dt.date, wanted: Collection[str], origin: str,
                 progress: Callable[[int], None] | None = None, progress_every: int = 50_000,
                 bounds: tuple[dt.datetime, dt.datetime] | None = None, aliases: Mapping[str, str] | None = None):
        """`bounds`: the file's day in UTC (default the New York day of US stock files; a
        crypto file covers the UTC day). `wanted`: the file's tickers to keep; `aliases`: the
        file's ticker -> the canonical symbol, for files that spell tickers their own way
        (`X:BTC-USD`)."""
        self.raw = raw
        self.progress = progress
        self.progress_every = progress_every
        self.day = day
        self.wanted = frozenset(wanted)
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
        tickers = sorted(self.wanted)
        self.symbols = sorted({self._canonical(t) for t in tickers})
        self._symbol_index = {s: i for i, s in enumerate(self.symbols)}
        self._tickers = pa.array([t.encode() for t in tickers], pa.binary())
        self._symbol_of_ticker = np.array([self._symbol_index[self._canonical(t)] for t in tickers], dtype=np.int64)
        self.names = pgcopy.Names([s.encode() for s in self.symbols])
        self._day_start_us = pgcopy.microseconds(start)
        # A bit per symbol-minute kept (a full market's day: 1.8 MB; a byte each was 14 MB of
        # the load's peak), and the rows kept per symbol.
        self._seen = np.zeros((len(self.symbols) * MINUTES_PER_DAY + 7) // 8, dtype=np.uint8)
        self._kept = np.zeros(len(self.symbols), dtype=np.int64)
        self._columns: dict[str, int] = {}
        self._width = 0
        self._plain_row = ""  # a line whose fields the kernels read as they are (see PLAIN)

    def _canonical(self, ticker: str) -> str:
        return self.aliases.get(ticker, ticker) if self.aliases is not None else ticker

    def _quarantine(self, symbol: str | None, fields: list[str], reason: str) -> None:
        self.stats.quarantined.append(QuarantinedRow(self.origin, symbol, raw_line(",".join(fields)), reason))

    def __iter__(self) -> Iterator[FlatRow]:
        for batch in self.batches():
            yield from self.rows(batch)

    def batches(self) -> Iterator[DayBatch]:
        """The kept rows, a block at a time; raises FlatFileError for a broken file."""
        try:
            yield from self._batches()
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise FlatFileError(
                f"{self.origin}: corrupt or truncated gzip after {self.stats.rows_read} rows ({exc})"
            ) from None
        except OSError as exc:
            raise FlatFileError(f"{self.origin}: unreadable ({exc})") from None
        finally:
            self.stats.rows_kept = Counter({self.symbols[i]: int(self._kept[i]) for i in np.flatnonzero(self._kept)})

    def _batches(self) -> Iterator[DayBatch]:
        line = 1  # the file's line number of the next line; the header is line 1
        kept = 0
        progress, every = self.progress, self.progress_every
        for block in _blocks(self.raw):
            if line == 1:
                end = block.find(b"\n")
                self._header(block if end < 0 else block[:end])
                line = 2
                block = b"" if end < 0 else block[end + 1:]
                if not block:
                    continue
            lines = pc.split_pattern(pa.array([block[:-1] if block.endswith(b"\n") else block], pa.binary()),
                                     pattern="\n").flatten()
            batch = self._batch(lines, line)
            line += len(lines)
            self.stats.rows_read = line - 2
            if progress is not None and (kept + len(batch)) // every > kept // every:
                progress(kept + len(batch))
            kept += len(batch)
            if len(batch):
                yield batch
        if line == 1:
            raise FlatFileError(f"{self.origin}: empty file, no header")
        if progress is not None:
            progress(kept)

    def _header(self, line: bytes) -> None:
        try:
            header = next(csv.reader([line.decode("utf-8", "surrogateescape")], quoting=csv.QUOTE_NONE))
        except csv.Error as exc:
            raise FlatFileError(f"{self.origin}: unreadable header ({exc})") from None
        names = [h.strip().lower() for h in header]
        missing = [h for h in HEADER if h not in names]
        if missing:
            raise FlatFileError(
                f"{self.origin}: header lacks {', '.join(missing)} (expected {','.join(HEADER)})"
            )
        self._columns = {h: names.index(h) for h in HEADER}
        self._plain_row = "^" + ",".join(f"(?:{PLAIN[name]})" if name in PLAIN and names.index(name) == i else "[^,]*"
                                         for i, name in enumerate(names)) + "$"
        # A row of another width than the header is misaligned: its values cannot be trusted.
        self._width = len(names)

    def _batch(self, lines: Any, first_line: int) -> DayBatch:
        """The kept rows of one block's lines (`first_line`: the file's line number of the first)."""
        width, columns = self._width, self._columns
        fields = pc.split_pattern(lines, pattern=",")
        # Lines of another width, and lines long enough to hold a field the csv module refuses,
        # are for the per-row rules.
        regular = ((pc.list_value_length(fields).to_numpy(zero_copy_only=False) == width)
                   & (pc.binary_length(lines).to_numpy(zero_copy_only=False) <= csv.field_size_limit()))
        regular_lines = None if regular.all() else np.flatnonzero(regular)
        values = (fields if regular_lines is None else fields.filter(pa.array(regular))).flatten()
        count = len(values) // width
        hits = pc.index_in(values.take(pa.array(np.arange(count, dtype=np.int64) * width + columns["ticker"])),
                           value_set=self._tickers)
        wanted = hits.is_valid().to_numpy(zero_copy_only=False)
        self.stats.other_tickers += count - int(wanted.sum())
        at = np.flatnonzero(wanted)
        lines_at = at if regular_lines is None else regular_lines[at]
        symbols = self._symbol_of_ticker[pc.drop_null(hits).to_numpy(zero_copy_only=False).astype(np.int64)]
        text = {name: values.take(pa.array(at * width + columns[name])) for name in (*NUMBERS, "window_start",
                                                                                   "transactions")}
        # One pass over each wanted line, rather than one per field.
        plain = pc.match_substring_regex(lines.take(pa.array(lines_at)), self._plain_row).to_numpy(zero_copy_only=False)
        prices = np.column_stack([_numbers(text[name], plain, pa.float64()) for name in NUMBERS])
        o, h, low, c, v = prices.T
        no_count = pc.binary_length(text["transactions"]).to_numpy(zero_copy_only=False) == 0
        counts = np.where(no_count, -1, _numbers(text["transactions"], plain & ~no_count, pa.int64()))
        minutes, rest = np.divmod(_numbers(text["window_start"], plain, pa.int64()) - self.day_start_ns, MINUTE_NS)
        good = (plain & (rest == 0) & (minutes >= 0) & (minutes < self.day_minutes)
                & (o > 0) & (c > 0) & (low > 0) & (v >= 0) & (h >= o) & (h >= c) & (low <= o) & (low <= c)
                & (counts <= MAX_TRANSACTIONS))
        # The per-row rules, in file order: they may keep a row or quarantine it with its reason.
        extra: list[tuple[int, KeptRow]] = []
        for i in sorted([*np.flatnonzero(~regular).tolist(), *lines_at[~good].tolist()]):
            row = self._row(lines[i].as_py(), first_line + i)
            if row is not None:
                extra.append((i, row))
        good_at = np.flatnonzero(good)
        keep, keep_extra = self._first_of_each_minute(lines_at[good_at], symbols[good_at] * MINUTES_PER_DAY
                                                      + minutes[good_at], extra)
        chosen = good_at[keep]
        return DayBatch(
            order=lines_at[chosen], symbols=symbols[chosen], minutes=minutes[chosen], prices=prices[chosen],
            transactions=counts[chosen],
            extra=[(i, FlatRow(self.symbols[s], m, o_, h_, l_, c_, v_, n_))
                   for (i, (s, m, o_, h_, l_, c_, v_, n_)), k in zip(extra, keep_extra, strict=True) if k])

    def _first_of_each_minute(self, lines_at: np.ndarray, keys: np.ndarray,
                              extra: list[tuple[int, KeptRow]]) -> tuple[np.ndarray, list[bool]]:
        """Which valid rows are the first of their symbol-minute in the file: a duplicate keeps
        the first bar. (mask over the column rows, flags for `extra`)"""
        if extra:
            lines_at = np.concatenate([lines_at, np.array([i for i, _ in extra], dtype=np.int64)])
            keys = np.concatenate([keys, np.array([r[0] * MINUTES_PER_DAY + r[1] for _, r in extra], dtype=np.int64)])
        order = np.argsort(lines_at, kind="stable")
        in_order = keys[order]
        first = np.zeros(len(in_order), dtype=bool)
        first[np.unique(in_order, return_index=True)[1]] = True
        fresh = first & (((self._seen[in_order >> 3] >> (in_order & 7).astype(np.uint8)) & 1) == 0)
        kept = in_order[fresh]
        np.bitwise_or.at(self._seen, kept >> 3, np.left_shift(1, kept & 7).astype(np.uint8))
        self._kept += np.bincount(kept // MINUTES_PER_DAY, minlength=len(self._kept))
        self.stats.duplicates += len(in_order) - int(fresh.sum())
        keep = np.empty(len(keys), dtype=bool)
        keep[order] = fresh
        split = len(keys) - len(extra)
        return keep[:split], keep[split:].tolist()

    def _row(self, line: bytes, line_no: int) -> KeptRow | None:
        """One line by the per-row rules (Python's csv, float() and int()): the row to keep,
        or None when it is quarantined (with its reason) or another ticker's."""
        stats = self.stats
        try:
            fields = next(csv.reader([line.decode("utf-8", "surrogateescape")], quoting=csv.QUOTE_NONE))
        except csv.Error as exc:
            # The csv module refuses the line (a field beyond its limit): no fields to show.
            self._quarantine(None, [], f"unparseable CSV line near row {line_no}: {exc}")
            return None
        columns = self._columns
        i_sym = columns["ticker"]
        if len(fields) != self._width:
            symbol: str | None = fields[i_sym] if len(fields) > i_sym else None
            if symbol is not None and symbol not in self.wanted:
                stats.other_tickers += 1
                return None
            self._quarantine(None if symbol is None else self._canonical(symbol), fields,
                             f"expected {self._width} columns, got {len(fields)}")
            return None
        if fields[i_sym] not in self.wanted:
            stats.other_tickers += 1
            return None
        symbol = self._canonical(fields[i_sym])
        try:
            ws = int(fields[columns["window_start"]])
            o = float(fields[columns["open"]])
            h = float(fields[columns["high"]])
            low = float(fields[columns["low"]])
            c = float(fields[columns["close"]])
            v = float(fields[columns["volume"]])
            raw_n = fields[columns["transactions"]]
            n = int(raw_n) if raw_n else None
        except ValueError as exc:
            self._quarantine(symbol, fields, f"unparseable field: {exc}")
            return None
        minute, rest = divmod(ws - self.day_start_ns, MINUTE_NS)
        if rest or not 0 <= minute < self.day_minutes:
            self._quarantine(symbol, fields,
                             f"window_start {ws} is not a minute of {self.day} (epoch nanoseconds expected)")
            return None
        if not (o > 0 and c > 0 and low > 0 and v >= 0 and h >= o and h >= c
                and low <= o and low <= c and h < INF and v < INF):
            self._quarantine(symbol, fields, price_problem(o, h, low, c, v) or "invalid prices")
            return None
        if n is not None and not 0 <= n <= MAX_TRANSACTIONS:
            self._quarantine(symbol, fields, f"transactions must be >= 0, got {n}" if n < 0 else
                             f"transactions must be <= {MAX_TRANSACTIONS}, got {n}")
            return None
        return self._symbol_index[symbol], minute, o, h, low, c, v, n

    def rows(self, batch: DayBatch) -> list[FlatRow]:
        """A batch's rows as tuples, in file order."""
        symbols = self.symbols
        counts = batch.transactions.tolist()
        rows = [FlatRow(symbols[s], m, o, h, low, c, v, None if n < 0 else n)
                for s, m, (o, h, low, c, v), n in zip(batch.symbols.tolist(), batch.minutes.tolist(),
                                                      batch.prices.tolist(), counts, strict=True)]
        if not batch.extra:
            return rows
        merged = sorted([*zip(batch.order.tolist(), rows, strict=True), *batch.extra], key=lambda item: item[0])
        return [row for _, row in merged]

    def columns(self, batch: DayBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every kept row of a batch as columns, `extra` rows after the others: symbol
        indexes, minutes, prices (open, high, low, close, volume), transactions (-1: none)."""
        if not batch.extra:
            return batch.symbols, batch.minutes, batch.prices, batch.transactions
        extra = [row for _, row in batch.extra]
        return (np.concatenate([batch.symbols, [self._symbol_index[r.symbol] for r in extra]]).astype(np.int64),
                np.concatenate([batch.minutes, [r.minute for r in extra]]).astype(np.int64),
                np.concatenate([batch.prices, [[r.open, r.high, r.low, r.close, r.volume] for r in extra]]),
                np.concatenate([batch.transactions, [-1 if r.transactions is None else r.transactions
                                                     for r in extra]]).astype(np.int64))

    def copy_binary(self, batch: DayBatch, source: str) -> bytes:
        """A batch's rows as binary COPY rows (chronox.pgcopy) in store.COPY_COLUMNS order:
        the doubles the checks read, which PostgreSQL stores as they are (a text COPY had it
        parse every number and timestamp again)."""
        symbols, minutes, prices, counts = self.columns(batch)
        return pgcopy.symbol_rows(self.names, symbols, [
            pgcopy.Field(pgcopy.TIMESTAMPTZ, self._day_start_us + minutes * 60_000_000),
            *(pgcopy.Field(pgcopy.FLOAT8, prices[:, i]) for i in range(5)),
            pgcopy.Field.null(),  # vwap: day files have none
            pgcopy.Field(pgcopy.INT4, counts, nulls=counts < 0),
            pgcopy.Field.text(source.encode())])


def _numbers(values: Any, plain: np.ndarray, kind: Any) -> np.ndarray:
    """`values` (text) as numbers where `plain`, 0 elsewhere."""
    if not plain.all():
        values = pc.if_else(pa.array(plain), values, pa.scalar(b"0", pa.binary()))
    return pc.cast(values, kind).to_numpy(zero_copy_only=False)


def concatenated(values: Any) -> bytes:
    """The bytes of a binary array's values, back to back."""
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=len(values) + 1, offset=values.offset * 4)
    return memoryview(values.buffers()[2])[offsets[0]:offsets[-1]].tobytes()


class BarTap(Protocol):
    """Called for each row a day load stores: symbol, ts (ISO UTC), open, high, low, close, volume."""

    def __call__(self, symbol: str, ts: str, o: float, h: float, low: float, c: float, v: float, /) -> None: ...


class DayFileRows:
    """A day file's valid rows in the shapes storage takes (chronox.store.DayRows).

    `copy_lines()` is the fast path: COPY text rendered by Arrow a block of rows at a time.
    With a tap (kafka-first publishing) every row is reported as it streams into storage;
    `watch` sees each batch of rows as it goes by (chronox.day_rollups rolls them up).
    """

    def __init__(self, reader: DayFileReader, source: str, tap: BarTap | None = None,
                 watch: Callable[[DayBatch], None] | None = None):
        self.reader = reader
        self.source = source
        self._tap = tap
        self._watch = watch

    def tapped(self, tap: BarTap) -> DayFileRows:
        return DayFileRows(self.reader, self.source, tap, self._watch)

    def _report(self, rows: list[FlatRow]) -> None:
        if self._tap is not None:
            tap, iso = self._tap, self.reader.minute_iso
            for r in rows:
                tap(r.symbol, iso[r.minute], r.open, r.high, r.low, r.close, r.volume)

    binary = True  # copy_lines() is a binary COPY stream

    def copy_lines(self) -> Iterator[bytes]:
        """Binary COPY (chronox.pgcopy): the header, a block of rows at a time, the trailer."""
        reader = self.reader
        yield pgcopy.HEADER
        for batch in reader.batches():
            if self._watch is not None:
                self._watch(batch)
            if self._tap is not None:
                self._report(reader.rows(batch))
            yield reader.copy_binary(batch, self.source)
        yield pgcopy.TRAILER

    def records(self) -> Iterator[dict[str, Any]]:
        times = self.reader.minute_times
        for batch in self.reader.batches():
            if self._watch is not None:
                self._watch(batch)
            rows = self.reader.rows(batch)
            self._report(rows)
            for r in rows:
                yield {"symbol": r.symbol, "ts": times[r.minute], "open": r.open, "high": r.high, "low": r.low,
                       "close": r.close, "volume": r.volume, "vwap": None, "transactions": r.transactions,
                       "source": self.source}
