"""Trades and quotes: the `trades` and `quotes` phases (no Celery here).

Three sources fill the tick tables (chronox.tick_store), all with Polygon's identity fields:

- Day flat files `us_stocks_sip/trades_v1/YYYY/MM/YYYY-MM-DD.csv.gz` and `quotes_v1/...`: every
  US trade or quote of a New York day, read once per day for every registry symbol that wants
  it. pyarrow's streaming CSV reader parses the gzip stream in blocks; the ticker filter,
  the checks and the COPY text are Arrow and numpy kernels over each block, so a load is bound
  by the parse and PostgreSQL's COPY, not by Python's per-row work. A bad row of a wanted
  ticker goes to `quarantine` with its line (joined again from its fields) and the reason; a
  tick met twice (same symbol, SIP timestamp, sequence number) is kept once, the first.
- REST gap fill: `/v3/trades/{ticker}` and `/v3/quotes/{ticker}` for the trading days of a
  run's window no day file covered (not published yet, or missing), one symbol-day at a time.
- The stream process: `T.<SYM>` and `Q.<SYM>` events for symbols with the stream phase too.

A day file or a REST day replaces the symbol-day (both have nanosecond times; the stream's
millisecond ones are replaced by them) and records `tick_coverage`; gaps are trading days
without coverage of that dataset. Envelopes go to Kafka through chronox.delivery.
"""
from __future__ import annotations

import bisect
import codecs
import csv
import datetime as dt
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy import Connection

from chronox import metrics, tick_store
from chronox.bars import RAW_LIMIT, QuarantinedRow, raw_line, ts_from_ms, ts_from_ns
from chronox.calendar import NYSE
from chronox.completion import record_bad_file
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.markets import PROVIDER_PHASES, Instrument, Market, ProviderId, as_instrument
from chronox.providers import SKIP_DETAIL, get_provider
from chronox.rest import set_aside
from chronox.settings import Settings
from chronox.sources import shown
from chronox.sources.flatfiles import (
    US_STOCKS_QUOTES,
    US_STOCKS_TRADES,
    DayFileStats,
    FlatFileError,
    FlatFileStore,
    concatenated,
    published_days,
)
from chronox.store import DayLoadResult, quarantine_rows
from chronox.strategy import SYMBOL_PATTERN, parse_day, validate_symbol
from chronox.tick_store import QUOTES, TRADES, Row

log = logging.getLogger(__name__)

FLATPACK = "flatpack"  # tick_coverage.source of a day file, ticks' source column
REST = "api"  # ... of REST gap fill
STREAM = "stream"
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
BLOCK_BYTES = 1 << 23  # decompressed bytes Arrow parses at a time: about 90,000 trade lines


class Field(NamedTuple):
    """One value of a tick: its name in the day file and in Polygon's v3 JSON, its table
    column, its kind (how it is read and checked) and whether a tick needs it."""

    name: str
    column: str
    kind: str  # time | int64 | int32 | price | quote_price | size | codes | id
    required: bool


@dataclass(frozen=True)
class TickKind:
    """A tick dataset: its phase, table and coverage name, its day files and their columns."""

    name: str  # trades | quotes
    file_dataset: str  # chronox.sources.flatfiles dataset of its day files
    header: tuple[str, ...]  # the day file's columns, Polygon's documented order
    fields: tuple[Field, ...]  # checked in this order: a bad row's reason names the first bad field
    channel: str  # the stream's channel prefix (T, Q)

    @property
    def columns(self) -> tuple[str, ...]:
        return tick_store.COLUMNS[self.name]


# The fields every tick file has and every tick table keeps first (models.TickColumns):
# what identifies a tick on the tape.
IDENTITY_FIELDS = (Field("sip_timestamp", "sip_timestamp", "time", True),
                   Field("sequence_number", "sequence_number", "int64", True),
                   Field("participant_timestamp", "participant_timestamp", "int64", False),
                   Field("trf_timestamp", "trf_timestamp", "int64", False))
TRADE_KIND = TickKind(
    TRADES, US_STOCKS_TRADES,
    ("ticker", "conditions", "correction", "exchange", "id", "participant_timestamp", "price", "sequence_number",
     "sip_timestamp", "size", "tape", "trf_id", "trf_timestamp"),
    (*IDENTITY_FIELDS,
     Field("exchange", "exchange", "int32", True),
     Field("id", "trade_id", "id", True),
     Field("price", "price", "price", True),
     Field("size", "size", "size", True),
     Field("conditions", "conditions", "codes", False),
     Field("correction", "correction", "int32", False),
     Field("tape", "tape", "int32", False),
     Field("trf_id", "trf_id", "int32", False)),
    "T")
QUOTE_KIND = TickKind(
    QUOTES, US_STOCKS_QUOTES,
    ("ticker", "ask_exchange", "ask_price", "ask_size", "bid_exchange", "bid_price", "bid_size", "conditions",
     "indicators", "participant_timestamp", "sequence_number", "sip_timestamp", "tape", "trf_timestamp"),
    (*IDENTITY_FIELDS,
     Field("bid_exchange", "bid_exchange", "int32", False),
     Field("bid_price", "bid_price", "quote_price", False),
     Field("bid_size", "bid_size", "size", False),
     Field("ask_exchange", "ask_exchange", "int32", False),
     Field("ask_price", "ask_price", "quote_price", False),
     Field("ask_size", "ask_size", "size", False),
     Field("conditions", "conditions", "codes", False),
     Field("indicators", "indicators", "codes", False),
     Field("tape", "tape", "int32", False)),
    "Q")
KINDS: dict[str, TickKind] = {TRADES: TRADE_KIND, QUOTES: QUOTE_KIND}
BY_FILE_DATASET: dict[str, TickKind] = {k.file_dataset: k for k in KINDS.values()}


def tick_kind(dataset: str) -> TickKind:
    return KINDS[tick_store.check_kind(dataset)]


def serves_ticks(instrument: Instrument) -> bool:
    """Whether the symbol's provider serves ticks in its market (chronox.markets.PROVIDER_PHASES)."""
    return bool(set(KINDS) & PROVIDER_PHASES.get((instrument.market, instrument.provider), frozenset()))


# -- one value, by the rules every source shares --------------------------------------------

_INT = re.compile(r"[0-9]{1,19}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Codes as Polygon lists them, and trade ids: nothing COPY text or JSON would have to escape.
CODES_PATTERN = r"[0-9]{1,9}(?:,[0-9]{1,9}){0,63}"
ID_PATTERN = r"[0-9A-Za-z._:\-]{1,64}"
_CODES = re.compile(CODES_PATTERN)
_ID = re.compile(ID_PATTERN)
NUMERIC = frozenset({"time", "int64", "int32", "price", "quote_price", "size"})
INTEGERS = frozenset({"time", "int64", "int32"})


class BadValue(ValueError):
    """A value a tick cannot hold; str() is the quarantine reason."""


def parse_value(f: Field, value: Any) -> Any:
    """A field's value from a day file's text (str) or Polygon's JSON, checked; None when
    absent and allowed. Raises BadValue with the reason."""
    if value is None or value == "" or (f.kind == "codes" and value == []):
        if f.required:
            raise BadValue(f"{f.name} is missing")
        return None
    if f.kind in INTEGERS:
        if isinstance(value, str) and _INT.fullmatch(value):
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise BadValue(f"{f.name} {shown(value)} is not a non-negative integer")
        top = INT32_MAX if f.kind == "int32" else INT64_MAX
        if not 0 <= number <= top:
            raise BadValue(f"{f.name} {number} is not between 0 and {top}")
        return number
    if f.kind in NUMERIC:
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            real = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            real = float(value)
        else:
            raise BadValue(f"{f.name} {shown(value)} is not a number")
        if not math.isfinite(real) or real < 0 or (f.kind == "price" and real == 0):
            raise BadValue(f"{f.name} must be {'positive' if f.kind == 'price' else '>= 0'} and finite, "
                           f"got {real!r}")
        return real
    if f.kind == "codes":
        if isinstance(value, list) and value and all(isinstance(c, int) and not isinstance(c, bool) for c in value):
            value = ",".join(str(c) for c in value)
        if not isinstance(value, str) or not _CODES.fullmatch(value):
            raise BadValue(f"{f.name} {shown(value)} is not a list of codes")
        return value
    if not isinstance(value, str) or not _ID.fullmatch(value):  # id
        raise BadValue(f"{f.name} {shown(value)} is not a trade id of up to 64 letters and digits")
    return value


def checked_row(kind: TickKind, symbol: str, values: Mapping[str, Any], window: tuple[int, int],
                source: str) -> Row:
    """A tick from named values (day-file text or Polygon JSON), its SIP time in [window) (epoch
    ns); raises BadValue with the first problem."""
    row: Row = {"symbol": symbol, "source": source}
    for f in kind.fields:
        row[f.column] = parse_value(f, values.get(f.name))
    sip = row["sip_timestamp"]
    if not window[0] <= sip < window[1]:
        raise BadValue(f"sip_timestamp {sip} is not in the day ({window[0]} to {window[1]}, epoch nanoseconds)")
    row["ts"] = ts_from_ns(sip)
    return row


# -- day files ------------------------------------------------------------------------------


class _AfterHeader:
    """The decompressed stream from just after the header line, as the file Arrow's CSV reader
    pulls blocks from (the header was read first, to check it and name the columns)."""

    def __init__(self, stream: Any, rest: bytes, readable_text: bool = False):
        """`readable_text`: bytes that are not UTF-8 are written as backslash escapes (\\xff), as
        Arrow must be able to decode a malformed line to hand it to the quarantine."""
        self._stream = stream
        self._rest = rest
        self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace") if readable_text else None
        self.closed = False

    def read(self, size: int = -1) -> Any:
        if self._rest:
            out, self._rest = self._rest, b""
        else:
            out = self._stream.read_buffer(size if size and size > 0 else BLOCK_BYTES)
        if self._decoder is None:
            return out
        return self._decoder.decode(bytes(out), final=not out).encode()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class UndecodableRow(FlatFileError):
    """A malformed line that is not UTF-8 either: Arrow cannot hand it to the quarantine as it
    is, so the file is read again with such bytes escaped (TickFileReader(readable_text=True))."""


@dataclass
class TickBatch:
    """The ticks kept from one parsed block, in file order: the block's columns (text as
    written) for the rows kept, their symbols (index into TickFileReader.symbols) and SIP times."""

    columns: dict[str, Any]  # file column -> pyarrow binary array
    symbols: np.ndarray
    sip: np.ndarray

    def __len__(self) -> int:
        return len(self.symbols)


class _SeenKeys:
    """64-bit hashes of the tick keys a load has passed on, as sorted runs merged like a binary
    counter: membership of a block costs a binary search per run, memory 8 bytes a tick."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            found |= run[at] == keys
        return found

    def add(self, keys: np.ndarray) -> None:
        run = _distinct(np.sort(keys))
        while self._runs and len(self._runs[-1]) <= 2 * len(run):
            # Two sorted runs: the stable sort (timsort) merges them in one pass.
            run = _distinct(np.sort(np.concatenate([self._runs.pop(), run]), kind="stable"))
        self._runs.append(run)


def _distinct(ordered: np.ndarray) -> np.ndarray:
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _key_hash(symbols: np.ndarray, sip: np.ndarray, seq: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (symbols.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ sip.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ seq.astype(np.uint64) * np.uint64(0x165667B19E3779F9))
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        return h ^ (h >> np.uint64(29))


def _csv_field(value: bytes | None) -> str:
    text = "" if value is None else value.decode("utf-8", "backslashreplace")
    return f'"{text}"' if "," in text or '"' in text else text


class TickFileReader:
    """The valid ticks of wanted tickers in one tick day file, a block at a time.

    Raises FlatFileError when the file itself is broken (not gzip, truncated, no header or a
    header without the dataset's columns); callers load inside a transaction, so ticks read
    before the failure are never committed.
    """

    def __init__(self, raw: IO[bytes], kind: TickKind, day: dt.date, wanted: Collection[str], origin: str,
                 progress: Callable[[int], None] | None = None, progress_every: int = 200_000,
                 readable_text: bool = False):
        self.raw = raw
        self.readable_text = readable_text
        self.kind = kind
        self.day = day
        self.origin = origin
        self.progress = progress
        self.progress_every = progress_every
        self.wanted = frozenset(wanted)
        self.symbols = sorted(self.wanted)
        self.stats = DayFileStats()
        self.start, self.end = tick_store.day_window(day)
        self.window = (int(self.start.timestamp()) * 1_000_000_000, int(self.end.timestamp()) * 1_000_000_000)
        self._tickers = pa.array([s.encode() for s in self.symbols], pa.binary())  # also the symbols' COPY text
        self._seen = _SeenKeys()
        self._counts = np.zeros(len(self.symbols), dtype=np.int64)
        self._seconds: Any = None  # "YYYY-MM-DDTHH:MM:SS." per second of the day: the ts text
        # Ticks whose key hash an earlier block passed on: stored after the COPY by an insert
        # that keeps what is there (almost always a duplicate; a hash collision otherwise).
        self.late: list[Row] = []

    def __iter__(self) -> Iterator[TickBatch]:
        return self.batches()

    def batches(self) -> Iterator[TickBatch]:
        """The kept ticks, a block at a time; raises FlatFileError for a broken file."""
        try:
            yield from self._batches()
        except OSError as exc:  # Arrow's gzip stream: "Truncated compressed stream", "zlib inflate failed"
            raise FlatFileError(f"{self.origin}: corrupt or truncated gzip after {self.stats.rows_read} rows "
                                f"({exc})") from None
        except pa.ArrowInvalid as exc:
            if str(exc).startswith("CSV parse error") and not self.readable_text:
                # The invalid-row handler was not called: pyarrow could not decode the line.
                raise UndecodableRow(f"{self.origin}: a malformed line is not UTF-8 ({exc})") from None
            raise FlatFileError(f"{self.origin}: unreadable ({exc})") from None
        finally:
            self.stats.rows_kept = Counter({self.symbols[i]: int(n) for i, n in enumerate(self._counts) if n})

    def _open(self) -> Any:
        # Arrow's gzip stream inflates on Arrow's I/O thread, beside the parse; a truncated or
        # corrupt stream raises OSError there.
        stream = pa.CompressedInputStream(pa.PythonFile(self.raw, mode="r"), "gzip")
        head = b""
        while b"\n" not in head:
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            head += bytes(chunk)
        line, _, rest = head.partition(b"\n")
        if not line.strip():
            raise FlatFileError(f"{self.origin}: empty file, no header")
        try:
            names = [h.strip().lower() for h in next(csv.reader([line.decode("utf-8", "replace").rstrip("\r")]))]
        except (csv.Error, StopIteration) as exc:
            raise FlatFileError(f"{self.origin}: unreadable header ({exc})") from None
        missing = [h for h in self.kind.header if h not in names]
        if missing:
            raise FlatFileError(f"{self.origin}: header lacks {', '.join(missing)} "
                                f"(expected {','.join(self.kind.header)})")
        return pa_csv.open_csv(
            _AfterHeader(stream, rest, self.readable_text),
            read_options=pa_csv.ReadOptions(column_names=names, block_size=BLOCK_BYTES),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=self._invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.binary() for name in names}, include_columns=list(self.kind.header),
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True))

    def _invalid_row(self, row: Any) -> str:
        """A line of another width than the header: its values cannot be trusted."""
        text = row.text if isinstance(row.text, str) else bytes(row.text).decode("utf-8", "backslashreplace")
        ticker = text.split(",", 1)[0]
        self.stats.rows_read += 1
        if ticker not in self.wanted:
            self.stats.other_tickers += 1
        else:
            self._quarantine(ticker, text, f"expected {row.expected_columns} columns, got {row.actual_columns}")
        return "skip"

    def _quarantine(self, symbol: str | None, raw: str, reason: str) -> None:
        self.stats.quarantined.append(QuarantinedRow(self.origin, symbol, raw_line(raw), reason))

    def _batches(self) -> Iterator[TickBatch]:
        reader = self._open()
        kept = 0
        for block in reader:
            batch = self._batch(block)
            if batch is None:
                continue
            if self.progress is not None and (kept + len(batch)) // self.progress_every > kept // self.progress_every:
                self.progress(kept + len(batch))
            kept += len(batch)
            if len(batch):
                yield batch
        if self.progress is not None:
            self.progress(kept)

    def _batch(self, block: Any) -> TickBatch | None:
        self.stats.rows_read += block.num_rows
        tickers = block.column("ticker")
        hits = pc.index_in(tickers, value_set=self._tickers)
        wanted = hits.is_valid()
        count = int(pc.sum(wanted).as_py() or 0)
        self.stats.other_tickers += block.num_rows - count
        if not count:
            return None
        block = block.filter(wanted)
        symbols = pc.drop_null(hits).to_numpy(zero_copy_only=False).astype(np.int64)
        columns = {name: block.column(name) for name in self.kind.header}
        good = np.ones(count, dtype=bool)
        numbers: dict[str, np.ndarray] = {}
        for f in self.kind.fields:
            values = columns[f.name]
            present = values.is_valid().to_numpy(zero_copy_only=False)
            if f.kind in NUMERIC:
                numbers[f.name], ok = _numbers(values, f)
            else:
                pattern = CODES_PATTERN if f.kind == "codes" else ID_PATTERN
                ok = pc.fill_null(pc.match_substring_regex(values, f"^(?:{pattern})$"), False).to_numpy(
                    zero_copy_only=False)
            good &= np.where(present, ok, not f.required)
        sip = numbers["sip_timestamp"]
        good &= (sip >= self.window[0]) & (sip < self.window[1])
        if not good.all():
            for i in np.flatnonzero(~good).tolist():
                self._reject(self.symbols[symbols[i]], {name: columns[name][i].as_py() for name in self.kind.header})
        at = np.flatnonzero(good)
        copy, late = self._first_of_keys(symbols[at], sip[at], numbers["sequence_number"][at])
        if late.any():
            rows = block.take(pa.array(at[late]))
            self.late.extend(self.records(TickBatch({name: rows.column(name) for name in self.kind.header},
                                                    symbols[at[late]], sip[at[late]]), FLATPACK))
        keep = at[copy]
        if len(keep) < count:
            block = block.take(pa.array(keep))
            columns = {name: block.column(name) for name in self.kind.header}
        self._counts += np.bincount(symbols[keep], minlength=len(self.symbols))
        return TickBatch(columns, symbols[keep], sip[keep])

    def _reject(self, symbol: str, values: dict[str, bytes | None]) -> None:
        """Quarantine a row the column checks refused, with the reason the per-value rules give."""
        raw = ",".join(_csv_field(values.get(name)) for name in self.kind.header)
        text = {k: None if v is None else v.decode("utf-8", "backslashreplace") for k, v in values.items()}
        try:
            checked_row(self.kind, symbol, text, self.window, FLATPACK)
            reason = "refused by the column checks"  # the two rule sets disagree: kept apart, not stored
        except BadValue as exc:
            reason = str(exc)
        self._quarantine(symbol, raw, reason)

    def _first_of_keys(self, symbols: np.ndarray, sip: np.ndarray,
                       seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(to COPY, set aside) among these valid rows: the first of each key (symbol, SIP
        timestamp, sequence number) in the file is kept. Within the block exactly; a row whose
        key hash an earlier block passed on is set aside for the insert that keeps what is there
        (self.late): a duplicate, or rarely another key with the same hash."""
        order = np.lexsort((seq, sip, symbols))  # stable: equal keys stay in file order
        s_sym, s_sip, s_seq = symbols[order], sip[order], seq[order]
        repeat = np.zeros(len(order), dtype=bool)
        repeat[1:] = (s_sym[1:] == s_sym[:-1]) & (s_sip[1:] == s_sip[:-1]) & (s_seq[1:] == s_seq[:-1])
        first = np.empty(len(order), dtype=bool)
        first[order] = ~repeat
        self.stats.duplicates += int(repeat.sum())
        hashes = _key_hash(symbols, sip, seq)
        late = first & self._seen.contains(hashes)
        self._seen.add(hashes[first & ~late])
        return first & ~late, late

    def copy_text(self, batch: TickBatch, source: str) -> bytes:
        """A batch as PostgreSQL COPY text in tick_store.COLUMNS order; numbers as written in
        the file (checked by the kernels: PostgreSQL reads the same values)."""
        by_column = {f.column: batch.columns[f.name] for f in self.kind.fields}
        parts = []
        for column in self.kind.columns:
            if column == "symbol":
                parts.append(self._tickers.take(pa.array(batch.symbols)))
            elif column == "ts":
                parts.append(self._ts_text(batch.sip))
            elif column != "source":
                parts.append(by_column[column])
        lines = pc.binary_join_element_wise(*parts, pa.scalar(f"{source}\n".encode(), pa.binary()),
                                            pa.scalar(b"\t", pa.binary()), null_handling="replace",
                                            null_replacement="\\N")
        return concatenated(lines)

    def _ts_text(self, sip: np.ndarray) -> Any:
        """SIP times as timestamptz text cut to microseconds (what ts_from_ns gives)."""
        first = self.window[0] // 1_000_000_000
        if self._seconds is None:
            seconds_of_day = np.arange(first, self.window[1] // 1_000_000_000 + 1)
            stamps = np.datetime_as_string(seconds_of_day.astype("datetime64[s]"))
            self._seconds = pa.array(np.char.add(stamps, ".").astype("S"), pa.binary())
        seconds, micros = np.divmod(sip // 1000 - first * 1_000_000, 1_000_000)
        # 1,000,000 + micros is 7 digits: dropping the 1 pads the micros to 6.
        fraction = pc.binary_slice(pc.cast(pa.array(micros + 1_000_000), pa.string()).cast(pa.binary()), 1, 7)
        return pc.binary_join_element_wise(self._seconds.take(pa.array(seconds)), fraction,
                                           pa.scalar(b"+00", pa.binary()), pa.scalar(b"", pa.binary()))

    def records(self, batch: TickBatch, source: str) -> list[Row]:
        """A batch's ticks as rows (ts a UTC datetime), in file order."""
        values = {f.column: _typed(batch.columns[f.name], f) for f in self.kind.fields}
        names = list(values)
        out = []
        for i, symbol in enumerate(batch.symbols.tolist()):
            row: Row = {"symbol": self.symbols[symbol], "source": source}
            for name in names:
                row[name] = values[name][i]
            row["ts"] = ts_from_ns(row["sip_timestamp"])
            out.append(row)
        return out


def _numbers(values: Any, f: Field) -> tuple[np.ndarray, np.ndarray]:
    """Text as numbers (0 where absent or bad) and where they are valid (False where absent)."""
    integer = f.kind in INTEGERS
    kind = pa.int64() if integer else pa.float64()
    try:
        parsed = pc.cast(values, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Some value is no number: each by the per-value rules (the block's few bad rows).
        parsed_values = []
        for value in values.to_pylist():
            try:
                parsed_values.append(None if value is None else parse_value(f._replace(required=False),
                                                                            value.decode("utf-8", "replace")))
            except BadValue:
                parsed_values.append(None)
        parsed = pa.array(parsed_values, kind)
    numbers = pc.fill_null(parsed, 0).to_numpy(zero_copy_only=False)
    ok = parsed.is_valid().to_numpy(zero_copy_only=False)
    if integer:
        ok &= (numbers >= 0) & (numbers <= (INT32_MAX if f.kind == "int32" else INT64_MAX))
    else:
        ok &= np.isfinite(numbers) & (numbers > 0 if f.kind == "price" else numbers >= 0)
    return numbers, ok


def _typed(values: Any, f: Field) -> list[Any]:
    """A kept column's values as Python values of the table's types."""
    if f.kind in NUMERIC:
        return pc.cast(values, pa.int64() if f.kind in INTEGERS else pa.float64()).to_pylist()
    return [None if v is None else v.decode() for v in values.to_pylist()]


class TickTap(Protocol):
    def __call__(self, row: Row, /) -> None: ...


class DayTicks:
    """A tick day file's valid rows in the two shapes storage takes: COPY text (PostgreSQL) or
    rows (SQLite). With a tap (kafka-first) every tick is reported as it goes into storage."""

    def __init__(self, reader: TickFileReader, source: str = FLATPACK, tap: TickTap | None = None):
        self.reader = reader
        self.source = source
        self._tap = tap

    def copy_lines(self) -> Iterator[bytes]:
        for batch in self.reader.batches():
            if self._tap is not None:
                for row in self.reader.records(batch, self.source):
                    self._tap(row)
            yield self.reader.copy_text(batch, self.source)

    def records(self) -> Iterator[Row]:
        for batch in self.reader.batches():
            rows = self.reader.records(batch, self.source)
            if self._tap is not None:
                for row in rows:
                    self._tap(row)
            yield from rows


@dataclass
class TickLoadResult(DayLoadResult):
    dataset: str = field(kw_only=True)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, **super().as_dict()}


def _postgres(engine_or_conn: Any) -> bool:
    return bool(engine_or_conn.dialect.name == "postgresql")


def load_day(settings: Settings, dataset: str, day: str | dt.date, symbols: Sequence[str],
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Read one tick day file (`dataset` trades or quotes) once and load it for every given
    symbol: each symbol-day is replaced by the file's ticks, atomically, and covered (zero
    ticks too). A broken file quarantines one record for the whole file and puts its symbols
    in error; transient failures (database, Kafka, S3 connection) propagate for a retry."""
    kind = tick_kind(dataset)
    the_day = parse_day(day)
    symbols = sorted({validate_symbol(s) for s in symbols})  # a hand-made call is checked too
    engine = get_engine(settings.database_url)
    files = FlatFileStore(settings, kind.file_dataset)
    origin = files.location(the_day)
    # The day's partition in a short transaction of its own: attaching one locks out other
    # attaches until its transaction ends, which the load's would delay.
    with engine.begin() as conn:
        tick_store.ensure_day(conn, kind.name, the_day)
    delivery = Delivery(settings, engine)
    try:
        try:
            result = _load_file(delivery, files, kind, the_day, symbols, progress, readable_text=False)
        except UndecodableRow as exc:
            log.warning("%s; reading it again with such bytes escaped", exc)
            result = _load_file(delivery, files, kind, the_day, symbols, progress, readable_text=True)
    except FlatFileError as exc:
        return {"dataset": kind.name, "day": the_day.isoformat(),
                **record_bad_file(engine, origin, symbols, kind.name, exc, phase=kind.name)}
    if kind.name == TRADES:
        metrics.trades_ingested(sum(result.rows.values()))  # committed
    return result.as_dict()


def _load_file(delivery: Delivery, files: FlatFileStore, kind: TickKind, day: dt.date, symbols: Sequence[str],
               progress: Callable[[int], None] | None, readable_text: bool) -> TickLoadResult:
    """One transaction: the ticks, late repeats, quarantine, coverage and (db-first) outbox
    commit together or not at all, so a file that turns out to be truncated loads nothing."""
    start, end = tick_store.day_window(day)
    result = TickLoadResult(day, dataset=kind.name)
    with files.open(day) as raw:
        reader = TickFileReader(raw, kind, day, symbols, files.location(day), progress,
                                readable_text=readable_text)
        with delivery.transaction() as out:
            tick_store.lock_day(out.conn, kind.name, day)
            tap = out.tick_sender(kind.name)
            ticks = DayTicks(reader, FLATPACK, tap)
            if _postgres(out.conn):
                tick_store.replace_day(out.conn, kind.name, symbols, start, end, lines=ticks.copy_lines())
            else:
                tick_store.replace_day(out.conn, kind.name, symbols, start, end, records=ticks.records())
            rows = Counter(reader.stats.rows_kept)
            late = tick_store.insert_new(out.conn, kind.name, reader.late)
            for row in late:
                rows[row["symbol"]] += 1
                if tap is not None:
                    tap(row)
            result.rows = {s: rows.get(s, 0) for s in symbols}
            result.duplicates = reader.stats.duplicates + len(reader.late) - len(late)
            result.quarantined = quarantine_rows(out.conn, reader.stats.quarantined)
            tick_store.cover(out.conn, kind.name, day, result.rows, FLATPACK)
            out.tick_days(kind.name, [(s, day) for s, n in result.rows.items() if n])
    result.published = out.published
    return result


# -- planning a run's day files ---------------------------------------------------------------


class Planned(Protocol):
    """What planning needs of a symbol's plan (chronox.backfill.SymbolPlan)."""

    symbol: str
    phases: list[str]
    start: str
    end: str
    market: str
    provider: str


def plan_day_files(settings: Settings, plans: Sequence[Planned]) -> tuple[dict[str, dict[str, list[str]]],
                                                                          list[str], list[str]]:
    """The tick day files a run loads: file dataset -> ISO day -> symbols, one task each;
    and the run's missing and not yet published tick day files (`<dataset>:<day>`), which
    the tick gap fill takes from REST.

    A symbol-day a day file covered already is left out (a tick file is large, and a trades-
    only symbol's window does not move with last_backfill); one REST filled is loaded from
    the file once it is published, as flat files are authoritative.
    """
    wanted: dict[str, dict[str, set[dt.date]]] = {}
    for p in plans:
        if not any(name in p.phases for name in KINDS):
            continue
        instrument = Instrument(p.symbol, Market(p.market), ProviderId(p.provider))
        first, last = parse_day(p.start), parse_day(p.end)
        if not serves_ticks(instrument) or first > last:
            continue
        for name in KINDS:
            if name in p.phases:
                wanted.setdefault(name, {})[p.symbol] = set(NYSE.trading_days(first, last))
    files: dict[str, dict[str, list[str]]] = {}
    missing: list[str] = []
    unpublished: list[str] = []
    if not wanted:
        return files, missing, unpublished
    with get_engine(settings.database_url).connect() as conn:
        for name, per_symbol in wanted.items():
            span = set().union(*per_symbol.values())
            if not span:
                continue
            done = tick_store.covered(conn, name, sorted(per_symbol), min(span), max(span))
            for symbol, wanted_days in per_symbol.items():
                wanted_days -= {d for d, source in done.get(symbol, {}).items() if source == FLATPACK}
    for name, per_symbol in sorted(wanted.items()):
        kind = KINDS[name]
        found = published_days(set().union(*per_symbol.values()), FlatFileStore(settings, kind.file_dataset).exists)
        missing += [f"{kind.file_dataset}:{d}" for d in found.missing]
        unpublished += [f"{kind.file_dataset}:{d}" for d in found.unpublished]
        days: dict[str, list[str]] = {}
        for day in found.available:
            symbols = sorted(s for s, d in per_symbol.items() if day in d)
            if symbols:
                days[day.isoformat()] = symbols
        if days:
            files[kind.file_dataset] = days
    return files, missing, unpublished


# -- gaps and REST gap fill ------------------------------------------------------------------


def _skip(settings: Settings, symbol: str, dataset: str, why: str, warn: bool) -> dict[str, Any]:
    set_aside(settings, [symbol], dataset, why, warn)
    return {"symbol": symbol, "dataset": dataset, "skipped": why}


class TickSource(Protocol):
    """A provider that serves ticks (chronox.sources.polygon.PolygonRest)."""

    name: str

    def ticks(self, dataset: str, symbol: str, start_ns: int, end_ns: int) -> Iterator[list[dict[str, Any]]]: ...


def _tick_source(settings: Settings, instrument: Instrument, dataset: str) -> TickSource | dict[str, Any]:
    """The symbol's provider of ticks, or the result of a step that cannot run without one."""
    if not serves_ticks(instrument):
        return _skip(settings, instrument.symbol, dataset,
                     f"{instrument.provider} serves no {dataset} for {instrument.market}", warn=False)
    provider = get_provider(settings, instrument)
    if provider is None:
        return _skip(settings, instrument.symbol, dataset, SKIP_DETAIL, warn=True)
    if not callable(getattr(provider, "ticks", None)):
        return _skip(settings, instrument.symbol, dataset, f"the {provider.name} provider serves no {dataset}",
                     warn=False)
    source: TickSource = provider  # type: ignore[assignment]  # checked just above
    return source


def missing_tick_days(conn: Connection, dataset: str,
                      windows: Sequence[tuple[str, dt.date, dt.date]]) -> dict[str, list[dt.date]]:
    """For each (symbol, first, last): the NYSE trading days without coverage of `dataset`,
    with one query for all of them."""
    windows = [w for w in windows if w[1] <= w[2]]
    if not windows:
        return {}
    first, last = min(w[1] for w in windows), max(w[2] for w in windows)
    done = tick_store.covered(conn, tick_kind(dataset).name, sorted({w[0] for w in windows}), first, last)
    days = NYSE.trading_days(first, last)
    return {symbol: [d for d in days[bisect.bisect_left(days, since):bisect.bisect_right(days, until)]
                     if d not in done.get(symbol, ())]
            for symbol, since, until in windows}


def tick_gaps(settings: Settings, symbol: str, dataset: str, start: str | dt.date, end: str | dt.date,
              now: dt.datetime | None = None) -> list[dt.date]:
    """Trading days from start to end (up to the newest whose extended session is over)
    without coverage of `dataset` for the symbol."""
    first, last = parse_day(start), parse_day(end)
    newest = NYSE.last_complete_day(now or dt.datetime.now(dt.UTC))
    if newest is None:
        return []
    with get_engine(settings.database_url).connect() as conn:
        return missing_tick_days(conn, dataset, [(symbol, first, min(last, newest))]).get(symbol, [])


def plan_fill(settings: Settings, instrument: Instrument | str, dataset: str, start: str, end: str,
              now: dt.datetime | None = None) -> dict[str, Any]:
    """The tick gap fill's first step: one symbol's days without `dataset` coverage, to fill
    from REST one task each."""
    instrument = as_instrument(instrument)
    source = _tick_source(settings, instrument, dataset)
    if isinstance(source, dict):
        return source
    gaps = tick_gaps(settings, instrument.symbol, dataset, start, end, now)
    return {"symbol": instrument.symbol, "dataset": dataset, "since": start, "until": end,
            "gaps": [d.isoformat() for d in gaps]}


def rest_rows(kind: TickKind, symbol: str, records: Iterable[Any], origin: str,
              window: tuple[int, int]) -> tuple[list[Row], list[QuarantinedRow]]:
    """Polygon v3 records as ticks of the day `window`, and quarantine records for the others."""
    import json

    good: list[Row] = []
    bad: list[QuarantinedRow] = []
    for record in records:
        try:
            if not isinstance(record, dict):
                raise BadValue("record is not an object")
            good.append(checked_row(kind, symbol, record, window, REST))
        except BadValue as exc:
            bad.append(QuarantinedRow(origin, symbol, json.dumps(record, default=str)[:RAW_LIMIT], str(exc)))
    return good, bad


def fill_day(settings: Settings, instrument: Instrument | str, dataset: str, day: str | dt.date,
             now: dt.datetime | None = None) -> dict[str, Any]:
    """Fill one symbol-day of `dataset` from REST (`/v3/trades/{ticker}` or `/v3/quotes/...`,
    cursor pages of 50,000) unless something covers it meanwhile: the day's stream ticks are
    replaced by REST's (nanosecond times), bad records quarantined, the day covered once its
    extended session is over. Pages are stored as they come, inside one transaction."""
    instrument = as_instrument(instrument)
    kind, symbol, the_day = tick_kind(dataset), instrument.symbol, parse_day(day)
    source = _tick_source(settings, instrument, dataset)
    if isinstance(source, dict):
        return source
    engine = get_engine(settings.database_url)
    result: dict[str, Any] = {"symbol": symbol, "dataset": kind.name, "day": the_day.isoformat(),
                              "provider": source.name}
    with engine.connect() as conn:
        if tick_store.covered(conn, kind.name, [symbol], the_day, the_day):
            return {**result, "rows": 0, "covered": True}
    start, end = tick_store.day_window(the_day)
    window = (int(start.timestamp()) * 1_000_000_000, int(end.timestamp()) * 1_000_000_000)
    origin = f"{source.name}:{kind.name}:{symbol}:{the_day}"
    with engine.begin() as conn:
        tick_store.ensure_day(conn, kind.name, the_day)
    stored = duplicates = quarantined = 0
    delivery = Delivery(settings, engine)
    with delivery.transaction() as out:
        tick_store.lock_day(out.conn, kind.name, the_day, symbol)
        if tick_store.covered(out.conn, kind.name, [symbol], the_day, the_day):
            return {**result, "rows": 0, "covered": True}
        tick_store.delete_day(out.conn, kind.name, [symbol], start, end)  # the stream's: REST has them all
        tap = out.tick_sender(kind.name)
        for records in source.ticks(kind.name, symbol, *window):
            rows, bad = rest_rows(kind, symbol, records, origin, window)
            inserted = tick_store.insert_new(out.conn, kind.name, rows)
            stored += len(inserted)
            duplicates += len(rows) - len(inserted)
            quarantined += quarantine_rows(out.conn, bad)
            if tap is not None:
                for row in inserted:
                    tap(row)
        over = NYSE.extended_session(the_day)[1] <= (now or dt.datetime.now(dt.UTC))
        if over:
            tick_store.cover(out.conn, kind.name, the_day, {symbol: stored}, REST)
        out.tick_days(kind.name, [(symbol, the_day)] if stored else [])
    if kind.name == TRADES:
        metrics.trades_ingested(stored)
    return {**result, "rows": stored, "duplicates": duplicates, "quarantined": quarantined, "covered": over,
            "published": out.published}


# -- the stream ------------------------------------------------------------------------------

STREAM_KINDS: dict[str, TickKind] = {k.channel: k for k in KINDS.values()}
STREAM_ORIGIN = "polygon-ws"
# The stream's epoch milliseconds are checked as a bar's are, then kept in nanoseconds.
_EARLIEST_NS = int(dt.datetime(1980, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
_LATEST_NS = int(dt.datetime(2200, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def stream_channels(instrument: Instrument, phases: Collection[str]) -> list[str]:
    """The stream channels of a streaming symbol's tick phases: `T.AAPL`, `Q.AAPL`."""
    if not serves_ticks(instrument):
        return []
    return [f"{k.channel}.{instrument.symbol}" for k in KINDS.values() if k.name in phases]


def _ns(event: dict[str, Any], key: str) -> int | None:
    value = event.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadValue(f"{key}={shown(value)} is not epoch milliseconds")
    ts_from_ms(value)  # in range, or ValueError
    return value * 1_000_000


def stream_tick(event: Any) -> tuple[str, Row]:
    """A `T` or `Q` event as (dataset, tick); ValueError with the reason when unusable."""
    if not isinstance(event, dict) or event.get("ev") not in STREAM_KINDS:
        raise BadValue("not a T or Q event")
    kind = STREAM_KINDS[event["ev"]]
    symbol = event.get("sym")
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise BadValue(f"invalid symbol {shown(symbol)}")
    sip = _ns(event, "t")
    if kind.name == TRADES:
        values = {"sip_timestamp": sip, "sequence_number": event.get("q"), "exchange": event.get("x"),
                  "id": event.get("i"), "price": event.get("p"), "size": event.get("s"),
                  "conditions": event.get("c"), "tape": event.get("z"), "trf_id": event.get("trfi"),
                  "trf_timestamp": _ns(event, "trft")}
    else:
        condition = event.get("c")
        values = {"sip_timestamp": sip, "sequence_number": event.get("q"), "bid_exchange": event.get("bx"),
                  "bid_price": event.get("bp"), "bid_size": event.get("bs"), "ask_exchange": event.get("ax"),
                  "ask_price": event.get("ap"), "ask_size": event.get("as"),
                  "conditions": [condition] if isinstance(condition, int) and not isinstance(condition, bool)
                  else condition, "indicators": event.get("i"), "tape": event.get("z")}
    return kind.name, checked_row(kind, symbol, values, (_EARLIEST_NS, _LATEST_NS), STREAM)


def store_stream(conn: Any, ticks: Mapping[str, Sequence[Row]]) -> dict[str, int]:
    """A stream batch's ticks, added to what is stored (a tick stored already is left):
    dataset -> how many were new."""
    return {kind: len(tick_store.insert_new(conn, kind, rows)) for kind, rows in ticks.items() if rows}
