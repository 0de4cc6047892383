"""NYSE trading days and session windows (exchange-calendars), extended hours included.

Polygon's minute files cover pre-market from 04:00 to after-hours at 20:00 New York
time; on an early-close day the after-hours session ends at 17:00.
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC
EXTENDED_OPEN = dt.time(4, 0)
EXTENDED_CLOSE = dt.time(20, 0)
EARLY_CLOSE_EXTENDED_CLOSE = dt.time(17, 0)
REGULAR_CLOSE = dt.time(16, 0)


@functools.lru_cache(maxsize=1)
def _xnys():  # type: ignore[no-untyped-def]
    import exchange_calendars

    return exchange_calendars.get_calendar("XNYS")


@dataclass(frozen=True)
class Session:
    day: dt.date
    extended_open: dt.datetime  # UTC
    regular_open: dt.datetime
    regular_close: dt.datetime
    extended_close: dt.datetime

    @property
    def early_close(self) -> bool:
        return self.regular_close.astimezone(NEW_YORK).time() < REGULAR_CLOSE


def _clip(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date] | None:
    cal = _xnys()
    first, last = cal.first_session.date(), cal.last_session.date()
    start, end = max(start, first), min(end, last)
    return (start, end) if start <= end else None


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """NYSE sessions from start to end inclusive (holidays and weekends excluded)."""
    bounds = _clip(start, end)
    if bounds is None:
        return []
    return [ts.date() for ts in _xnys().sessions_in_range(bounds[0].isoformat(), bounds[1].isoformat())]


def is_trading_day(day: dt.date) -> bool:
    return bool(trading_days(day, day))


def session(day: dt.date) -> Session:
    """Extended and regular session bounds of a trading day, in UTC."""
    if not is_trading_day(day):
        raise ValueError(f"{day} is not an NYSE trading day")
    cal = _xnys()
    regular_open = cal.session_open(day.isoformat()).to_pydatetime()
    regular_close = cal.session_close(day.isoformat()).to_pydatetime()
    early = regular_close.astimezone(NEW_YORK).time() < REGULAR_CLOSE
    close_time = EARLY_CLOSE_EXTENDED_CLOSE if early else EXTENDED_CLOSE
    return Session(
        day=day,
        extended_open=dt.datetime.combine(day, EXTENDED_OPEN, NEW_YORK).astimezone(UTC),
        regular_open=regular_open.astimezone(UTC),
        regular_close=regular_close.astimezone(UTC),
        extended_close=dt.datetime.combine(day, close_time, NEW_YORK).astimezone(UTC),
    )


def day_bounds_utc(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The New York calendar day [midnight, next midnight) in UTC: what a day file covers."""
    start = dt.datetime.combine(day, dt.time(0), NEW_YORK)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), NEW_YORK)
    return start.astimezone(UTC), end.astimezone(UTC)


def new_york_day(moment: dt.datetime) -> dt.date:
    """The New York calendar day a UTC moment falls on: the day file it belongs to."""
    return moment.astimezone(NEW_YORK).date()


def in_extended_session(moment: dt.datetime) -> bool:
    """True while pre-market, regular or after-hours trading runs on a trading day."""
    local_day = moment.astimezone(NEW_YORK).date()
    if not is_trading_day(local_day):
        return False
    s = session(local_day)
    return s.extended_open <= moment < s.extended_close
