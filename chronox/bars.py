"""The canonical bar and its validation rules, shared by every source."""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import NamedTuple, overload

UTC = dt.UTC
# Higher wins: a bar from a source never overwrites a bar from a higher-ranked one.
SOURCE_RANK = {"snapshot": 0, "stream": 1, "api": 2, "flatpack": 3}
MAX_TRANSACTIONS = 2**31 - 1  # ohlcv_1m.transactions is a 32-bit integer
# An epoch time outside these years is garbage or in the wrong unit (seconds or nanoseconds
# read as milliseconds land in 1970 or far beyond 2200), never a US-equity market time.
EARLIEST = dt.datetime(1980, 1, 1, tzinfo=UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=UTC)


class Bar(NamedTuple):
    symbol: str
    ts: dt.datetime  # UTC window start
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float | None
    transactions: int | None
    source: str


@dataclass
class QuarantinedRow:
    """Input that cannot be a bar, kept with where it came from and why."""

    origin: str
    symbol: str | None
    raw: str
    reason: str


RAW_LIMIT = 2000  # characters of a quarantined input kept


def raw_line(text: str) -> str:
    """A quarantined line as stored: cut to RAW_LIMIT characters (saying how many more there
    were), and undecodable bytes kept as backslash escapes, which the database can store."""
    if len(text) > RAW_LIMIT:
        text = text[:RAW_LIMIT] + f"...(+{len(text) - RAW_LIMIT} chars)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _epoch(value: int, per_second: int, unit: str) -> dt.datetime:
    """A UTC datetime; ValueError when `value` cannot be a market time in `unit`."""
    seconds, rest = divmod(value, per_second)
    if not EARLIEST.timestamp() <= seconds < LATEST.timestamp():
        raise ValueError(f"{value!r} is not epoch {unit} between {EARLIEST.year} and {LATEST.year}")
    return dt.datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest * 1_000_000 // per_second)


def ts_from_ns(ns: int) -> dt.datetime:
    return _epoch(ns, 1_000_000_000, "nanoseconds")


def ts_from_ms(ms: int) -> dt.datetime:
    return _epoch(ms, 1000, "milliseconds")


def price_problem(open_: float, high: float, low: float, close: float, volume: float) -> str | None:
    """Why a bar's numbers cannot be a real bar, or None when they can."""
    for name, value in (("open", open_), ("high", high), ("low", low), ("close", close)):
        if not math.isfinite(value) or value <= 0:
            return f"{name} must be a positive finite price, got {value!r}"
    if not math.isfinite(volume) or volume < 0:
        return f"volume must be finite and >= 0, got {volume!r}"
    if high < max(open_, close):
        return f"high {high!r} below max(open, close) {max(open_, close)!r}"
    if low > min(open_, close):
        return f"low {low!r} above min(open, close) {min(open_, close)!r}"
    if low > high:
        return f"low {low!r} above high {high!r}"
    return None


def bar_problem(bar: Bar) -> str | None:
    """price_problem, and what else the bar tables cannot hold: a bad vwap or transactions count."""
    problem = price_problem(bar.open, bar.high, bar.low, bar.close, bar.volume)
    if problem:
        return problem
    if bar.vwap is not None and (not math.isfinite(bar.vwap) or bar.vwap < 0):
        return f"vwap must be finite and >= 0, got {bar.vwap!r}"
    if bar.transactions is not None and not 0 <= bar.transactions <= MAX_TRANSACTIONS:
        return f"transactions must be between 0 and {MAX_TRANSACTIONS}, got {bar.transactions!r}"
    return None


@overload
def isoformat_utc(moment: dt.datetime) -> str: ...
@overload
def isoformat_utc(moment: None) -> None: ...
def isoformat_utc(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
