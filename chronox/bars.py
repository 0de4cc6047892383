"""The canonical bar and its validation rules, shared by every source."""
from __future__ import annotations

import datetime as dt
import math
from typing import NamedTuple

UTC = dt.timezone.utc
# Higher wins: a bar from a source never overwrites a bar from a higher-ranked one.
SOURCE_RANK = {"snapshot": 0, "stream": 1, "api": 2, "flatpack": 3}


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


def ts_from_ns(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )


def ts_from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


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


def isoformat_utc(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
