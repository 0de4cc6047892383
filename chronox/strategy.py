"""Strategies are sets of phases written with '+' in canonical order."""
from __future__ import annotations

import datetime as dt
import functools
import re
from typing import overload

PHASES: tuple[str, ...] = ("flatpack", "api", "snapshot", "stream", "news", "trades", "quotes")

# Older configurations used upper-case enum names; accepted case-insensitively.
LEGACY_ALIASES: dict[str, tuple[str, ...]] = {
    "flatpack": ("flatpack",),
    "api": ("api",),
    "snapshot": ("snapshot",),
    "stream": ("stream",),
    "flatpack_api": ("flatpack", "api"),
    "snapshot_stream": ("snapshot", "stream"),
    "flatpack_snapshot_stream": ("flatpack", "snapshot", "stream"),
    "flatpack_api_snapshot_stream": ("flatpack", "api", "snapshot", "stream"),
}

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,9}$")
# The timeframes a symbol is registered at: the granularity its REST bars are fetched at and
# its Kafka envelopes carry. Minutes are stored whatever the timeframe (flat files hold
# them) and rolled up to 5m, 15m and 1h (chronox.rollups).
TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "1h", "1d")


class InvalidInput(ValueError):
    """A user-supplied value is unusable; str() is a one-line message for the user."""


def parse_strategy(text: str) -> tuple[str, ...]:
    """Phases of a strategy string, in canonical order; raises InvalidInput."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"empty strategy; use phases {'+'.join(PHASES)} joined with '+'")
    return _phases(text)


# A market's registry rows name a handful of strategies, asked for once per row and phase.
@functools.lru_cache(maxsize=256)
def _phases(text: str) -> tuple[str, ...]:
    key = text.strip().lower()
    if key in LEGACY_ALIASES:
        return LEGACY_ALIASES[key]
    parts = [p.strip() for p in key.split("+")]
    unknown = [p for p in parts if p not in PHASES]
    if unknown:
        raise InvalidInput(
            f"unknown phase {unknown[0]!r} in strategy {text!r}; valid phases: "
            f"{', '.join(PHASES)} (combine with '+', e.g. flatpack+api)"
        )
    if len(set(parts)) != len(parts):
        raise InvalidInput(f"strategy {text!r} repeats a phase")
    return tuple(p for p in PHASES if p in parts)


def canonical_strategy(text: str) -> str:
    return "+".join(parse_strategy(text))


def validate_symbol(text: str) -> str:
    """Upper-cases and checks a ticker so topic names, keys and paths built from it are safe."""
    if not isinstance(text, str):
        raise InvalidInput(f"symbol must be text, got {type(text).__name__}")
    symbol = text.strip().upper()
    # upper() turns some non-ASCII letters into ASCII ones ('ß' -> 'SS'): check what was typed.
    if not text.isascii() or not SYMBOL_PATTERN.fullmatch(symbol):
        raise InvalidInput(
            f"invalid symbol {text!r}: use 1-10 characters A-Z, 0-9, '.' or '-' (e.g. BRK.B)"
        )
    return symbol


def validate_timeframe(text: str) -> str:
    tf = (text or "").strip().lower() if isinstance(text, str) else ""
    if tf not in TIMEFRAMES:
        raise InvalidInput(f"unsupported timeframe {text!r}; supported: {', '.join(TIMEFRAMES)}")
    return tf


class DayText(dict[dt.date, str]):
    """ISO text of dates, each formatted once: a market's plans and reports name the same few
    hundred days tens of thousands of times, and formatting a date costs more than looking
    its text up."""

    def __missing__(self, day: dt.date) -> str:
        text = self[day] = day.isoformat()
        return text


@overload
def parse_day(value: str | dt.date, name: str = ...) -> dt.date: ...
@overload
def parse_day(value: None, name: str = ...) -> None: ...
@overload
def parse_day(value: str | dt.date | None, name: str = ...) -> dt.date | None: ...
def parse_day(value: str | dt.date | None, name: str = "day") -> dt.date | None:
    """A YYYY-MM-DD argument as a date (None stays None); raises InvalidInput."""
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None


def parse_moment(value: str | dt.datetime | None, name: str = "now") -> dt.datetime | None:
    """An ISO-8601 argument as a UTC datetime, naive meaning UTC (None stays None); raises InvalidInput."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        moment = value
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise InvalidInput(f"{name} {value!r} is not an ISO-8601 timestamp") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)
