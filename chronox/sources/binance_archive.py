"""Day files of Binance's public data archive (data.binance.vision, or CHRONOX_BINANCE_DATA_URL).

`data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip` holds one CSV without a header,
one 1m kline per line in /api/v3/klines's 12 columns (open time, open, high, low, close,
volume, close time, quote volume, trades, taker buy base, taker buy quote, ignore). From
2025-01-01 the spot archive writes times in microseconds, before that in milliseconds: each
row's unit is told by its magnitude (an open time of 10**14 or more is microseconds), so
both load to the same bars.

A `.CHECKSUM` file beside the zip (sha256sum's output: `<hex>  <file name>`) is checked when
there is one; a mismatch, a corrupt zip or a zip without exactly one CSV is a file-level
error (ArchiveFileError, a FlatFileError: nothing of the file loads). A file that is not
there (404) is "no file": Binance publishes a day the next day, and not for days before a
pair was listed.

Rows are checked like Polygon's day files (chronox.sources.flatfiles): 12 columns, numbers
that parse, a minute of the file's UTC day, close time at the minute's end, positive finite
prices with high and low bounding open and close, volume >= 0; a bad row is quarantined
with its reason, a repeated minute is counted as a duplicate. vwap is quote volume / volume.

BinanceDayRows has DayFileRows's interface (copy_lines(), records(), tapped(tap)), and
BinanceDayReader has DayFileReader's `day`, `origin` and `stats`, so storage and delivery
take a Binance day unchanged.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import math
import re
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from chronox.bars import MAX_TRANSACTIONS, UTC, QuarantinedRow, isoformat_utc, price_problem, raw_line
from chronox.markets import binance_symbol
from chronox.settings import Settings
from chronox.sources import http
from chronox.sources.base import ProviderError, TransientProviderError
from chronox.sources.flatfiles import BarTap, DayFileStats, FlatFileError

log = logging.getLogger(__name__)

COLUMNS = 12
MINUTES = 1440
MICROSECONDS_FROM = 10**14  # epoch ms reach this in the year 5138; epoch µs passed it in 1973
PER_MINUTE = {"ms": 60_000, "us": 60_000_000}
HEADER_START = "open_time"  # Binance's futures archive has a header line; accepted if one turns up
_CHECKSUM = re.compile(r"([0-9a-fA-F]{64})\s+\*?(\S+)\s*")


class ArchiveFileError(FlatFileError):
    """The day file as a whole cannot be used (checksum mismatch, corrupt zip); nothing loads."""


def relative_path(symbol: str, day: dt.date) -> str:
    """The zip's path under the archive root, for a canonical symbol (BTC-USDT)."""
    name = binance_symbol(symbol)
    return f"data/spot/daily/klines/{name}/1m/{name}-1m-{day.isoformat()}.zip"


class BinanceArchive:
    """Fetches day files over HTTP; only the zip's bytes are held (about 60 KB a day)."""

    def __init__(self, settings: Settings):
        self._base = settings.binance_data_url.rstrip("/")
        self._timeout = settings.polygon_timeout

    def location(self, symbol: str, day: dt.date) -> str:
        return f"{self._base}/{relative_path(symbol, day)}"

    def _get(self, url: str) -> bytes | None:
        response = http.get("binance", url, None, {}, self._timeout)
        status = response.status_code
        if status == 200:
            return response.content
        if status == 404:
            return None
        message = f"Binance archive answered {status} ({http.body_text(response)}) for {url}"
        if status in (408, 429) or status >= 500:
            raise TransientProviderError(message, http.retry_after(response.headers.get("Retry-After")))
        raise ProviderError(message)

    def fetch(self, symbol: str, day: dt.date) -> bytes | None:
        """The zip's bytes, its checksum verified when published; None when there is no file."""
        url = self.location(symbol, day)
        data = self._get(url)
        if data is None:
            return None
        checksum = self._get(f"{url}.CHECKSUM")
        if checksum is None:
            log.info("%s: no .CHECKSUM published; loading unverified", url)
        else:
            verify(data, checksum, url)
        return data

    def open_day(self, symbol: str, day: dt.date) -> BinanceDayReader | None:
        data = self.fetch(symbol, day)
        return None if data is None else BinanceDayReader(data, symbol, day, self.location(symbol, day))


def verify(data: bytes, checksum: bytes, origin: str) -> None:
    """Raise ArchiveFileError unless `checksum` (sha256sum's line) names this zip and its digest."""
    text = checksum.decode("utf-8", "replace").strip()
    match = _CHECKSUM.fullmatch(text)
    if match is None:
        raise ArchiveFileError(f"{origin}: unreadable .CHECKSUM file ({text[:100]!r})")
    digest, name = match.groups()
    expected_name = origin.rsplit("/", 1)[-1]
    if name != expected_name:
        raise ArchiveFileError(f"{origin}: .CHECKSUM is for {name[:100]!r}, not {expected_name}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest.lower():
        raise ArchiveFileError(f"{origin}: checksum mismatch (sha256 {actual}, .CHECKSUM says {digest.lower()})")


class KlineRow(NamedTuple):
    minute: int  # minutes since 00:00 UTC of the file's day
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float | None
    transactions: int


class BinanceDayReader:
    """The valid rows of one symbol's day file; bad rows go to `stats.quarantined`.

    Raises ArchiveFileError at once for a corrupt zip (every member's CRC is checked here,
    before anything loads) or one without exactly one CSV.
    """

    def __init__(self, data: bytes, symbol: str, day: dt.date, origin: str):
        self.symbol = symbol
        self.day = day
        self.origin = origin
        self.stats = DayFileStats()
        start = dt.datetime.combine(day, dt.time(0), UTC)
        self.day_start_ms = int(start.timestamp()) * 1000
        self.minute_times = [start + dt.timedelta(minutes=i) for i in range(MINUTES)]
        self.minute_iso = [isoformat_utc(t) for t in self.minute_times]
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            bad = archive.testzip()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise ArchiveFileError(f"{origin}: corrupt zip ({exc})") from None
        if bad is not None:
            raise ArchiveFileError(f"{origin}: corrupt zip (bad CRC in {bad})")
        members = [i for i in archive.infolist() if not i.is_dir()]
        if len(members) != 1 or not members[0].filename.lower().endswith(".csv"):
            raise ArchiveFileError(f"{origin}: expected one CSV in the zip, found "
                                   f"{', '.join(m.filename for m in members)[:200] or 'nothing'}")
        self._csv = archive.read(members[0])

    def _quarantine(self, fields: list[str], reason: str) -> None:
        self.stats.quarantined.append(QuarantinedRow(self.origin, self.symbol, raw_line(",".join(fields)), reason))

    def __iter__(self) -> Iterator[KlineRow]:
        text = io.StringIO(self._csv.decode("utf-8", "surrogateescape"), newline="")
        reader = csv.reader(text, quoting=csv.QUOTE_NONE)
        seen = bytearray(MINUTES)
        stats = self.stats
        try:
            while True:
                try:
                    for fields in reader:
                        row = self._row(fields, reader.line_num)
                        if row is None:
                            continue
                        if seen[row.minute]:
                            stats.duplicates += 1
                            continue
                        seen[row.minute] = 1
                        yield row
                    break
                except csv.Error as exc:
                    self._quarantine([], f"unparseable CSV line near row {reader.line_num}: {exc}")
        finally:
            stats.rows_read = reader.line_num
            stats.rows_kept[self.symbol] = seen.count(1)

    def _row(self, fields: list[str], line: int) -> KlineRow | None:
        if not fields:
            return None
        if len(fields) != COLUMNS:
            if line == 1 and fields[0].strip().lower() == HEADER_START:
                return None
            self._quarantine(fields, f"expected {COLUMNS} columns, got {len(fields)}")
            return None
        try:
            opened, closed = int(fields[0]), int(fields[6])
            o, h, low, c, v, quote = (float(fields[i]) for i in (1, 2, 3, 4, 5, 7))
            trades = int(fields[8])
        except ValueError as exc:
            self._quarantine(fields, f"unparseable field: {exc}")
            return None
        unit = "us" if opened >= MICROSECONDS_FROM else "ms"
        per_minute = PER_MINUTE[unit]
        day_start = self.day_start_ms * (per_minute // 60_000)
        minute, rest = divmod(opened - day_start, per_minute)
        if rest or not 0 <= minute < MINUTES:
            self._quarantine(fields, f"open time {opened} is not a minute of {self.day} (UTC; epoch ms, or µs "
                                     "from 2025)")
            return None
        if closed != opened + per_minute - 1:
            self._quarantine(fields, f"close time {closed} is not the end of the minute opened at {opened} "
                                     f"(epoch {unit})")
            return None
        if not (o > 0 and c > 0 and low > 0 and v >= 0 and h >= o and h >= c and low <= o and low <= c
                and h < math.inf and v < math.inf):
            self._quarantine(fields, price_problem(o, h, low, c, v) or "invalid prices")
            return None
        if not (math.isfinite(quote) and quote >= 0):
            self._quarantine(fields, f"quote asset volume must be finite and >= 0, got {quote!r}")
            return None
        if not 0 <= trades <= MAX_TRANSACTIONS:
            self._quarantine(fields, f"number of trades must be between 0 and {MAX_TRANSACTIONS}, got {trades}")
            return None
        return KlineRow(minute, o, h, low, c, v, quote / v if v > 0 else None, trades)


class BinanceDayRows:
    """A Binance day file's valid rows in the shapes storage takes (chronox.store.DayRows),
    like chronox.sources.flatfiles.DayFileRows; with a tap, each row is reported as it
    streams into storage (kafka-first)."""

    def __init__(self, reader: BinanceDayReader, source: str, tap: BarTap | None = None):
        self.reader = reader
        self.source = source
        self._tap = tap

    def tapped(self, tap: BarTap) -> BinanceDayRows:
        return BinanceDayRows(self.reader, self.source, tap)

    def _rows(self) -> Iterator[KlineRow]:
        tap, iso, symbol = self._tap, self.reader.minute_iso, self.reader.symbol
        for r in self.reader:
            if tap is not None:
                tap(symbol, iso[r.minute], r.open, r.high, r.low, r.close, r.volume)
            yield r

    binary = False  # copy_lines() is COPY text

    def copy_lines(self) -> Iterator[str]:
        iso, symbol, source = self.reader.minute_iso, self.reader.symbol, self.source
        for r in self._rows():
            vwap = "\\N" if r.vwap is None else repr(r.vwap)
            yield (f"{symbol}\t{iso[r.minute]}\t{r.open!r}\t{r.high!r}\t{r.low!r}\t{r.close!r}\t{r.volume!r}\t"
                   f"{vwap}\t{r.transactions}\t{source}\n")

    def records(self) -> Iterator[dict[str, Any]]:
        times, symbol = self.reader.minute_times, self.reader.symbol
        for r in self._rows():
            yield {"symbol": symbol, "ts": times[r.minute], "open": r.open, "high": r.high, "low": r.low,
                   "close": r.close, "volume": r.volume, "vwap": r.vwap, "transactions": r.transactions,
                   "source": self.source}
