"""Range presets (1D 7D 1M 3M 6M YTD 1Y 3Y 5Y MAX): the one place their dates, bar sizes
and cache lifetimes are decided, for `chronox run --range`, the tasks' `range` kwarg,
the chart caches and `chronox prices`.

A range ends today (the market's day) and starts the same calendar point one period
back: 1M on 2024-03-31 starts 2024-02-29 (a month end is clamped to the shorter month),
YTD on January 1 of the market's year, MAX on CHRONOX_MAX_HISTORY_START (default
2003-09-10, the first day of Polygon's minute flat files). A chart of 1D shows the
market's latest session (the day itself while it trades, Friday on a weekend).
"""
from __future__ import annotations

import calendar as _calendar
import datetime as dt
from dataclasses import dataclass

from chronox.calendar import latest_session_day, market_day
from chronox.strategy import InvalidInput


@dataclass(frozen=True)
class Preset:
    name: str
    months: int = 0  # the period back from today: months, or else days
    days: int = 0
    timeframe: str = "1d"  # the bars a chart of it draws: "1h" (ohlcv_1h) or "1d" (ohlcv_1d)
    ttl: int = 300  # seconds its chart document stays in Redis
    cache: str = "asset_data"  # the Redis key's prefix (the system ChronoX replaces named them)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("1D", timeframe="1h", ttl=120, cache="hourly_data"),
    # A week of daily bars is five points; its chart draws hours, as the 1D chart does.
    Preset("7D", days=7, timeframe="1h"),
    Preset("1M", months=1),
    Preset("3M", months=3),
    Preset("6M", months=6),
    Preset("YTD"),
    Preset("1Y", months=12),
    Preset("3Y", months=36),
    Preset("5Y", months=60),
    Preset("MAX", ttl=3600),
)}
NAMES: tuple[str, ...] = tuple(PRESETS)
# The ranges of `asset_data:{symbol}:{range}` (1D has its own key, hourly_data:{symbol}:1D).
ASSET_RANGES: tuple[str, ...] = tuple(n for n in NAMES if PRESETS[n].cache == "asset_data")


def parse_range(text: str) -> str:
    """A range name, case-insensitive (`1y` is 1Y); raises InvalidInput naming the valid ones."""
    name = text.strip().upper() if isinstance(text, str) else ""
    if name not in PRESETS:
        raise InvalidInput(f"unknown range {text!r}; use one of {', '.join(NAMES)}")
    return name


def preset(name: str) -> Preset:
    return PRESETS[parse_range(name)]


def months_back(day: dt.date, months: int) -> dt.date:
    """The same day `months` earlier, clamped to the end of a shorter month."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    return dt.date(year, month + 1, min(day.day, _calendar.monthrange(year, month + 1)[1]))


def start_date(name: str, today: dt.date, max_history_start: dt.date) -> dt.date:
    """The first day a range covers when it ends on `today` (the market's day)."""
    p = preset(name)
    if p.name == "MAX":
        return max_history_start
    if p.name == "YTD":
        return dt.date(today.year, 1, 1)
    if p.months:
        return months_back(today, p.months)
    return today - dt.timedelta(days=p.days)


def check_run_request(range_name: str | None, start: str | dt.date | None) -> str | None:
    """A run's `range` checked against its `start` (both set the first day): the normalised
    name, or None; raises InvalidInput."""
    if range_name is None:
        return None
    if start is not None:
        raise InvalidInput("give --range or --start, not both: the range sets the start day")
    return parse_range(range_name)


def chart_days(name: str, market: str, now: dt.datetime, max_history_start: dt.date) -> tuple[dt.date, dt.date]:
    """(first, last) market day a chart of the range draws at `now`."""
    if preset(name).name == "1D":
        day = latest_session_day(market, now)
        return day, day
    today = market_day(market, now)
    return start_date(name, today, max_history_start), today
