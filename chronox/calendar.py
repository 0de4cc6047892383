"""NYSE trading days and session windows (exchange-calendars), extended hours included.

Polygon's minute files cover pre-market from 04:00 to after-hours at 20:00 New York
time; on an early-close day the after-hours session ends at 17:00.
"""
from __future__ import annotations

import bisect
import datetime as dt
import functools
from collections.abc import Callable
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


@functools.lru_cache(maxsize=1)
def _session_range() -> tuple[dt.date, dt.date]:
    # The calendar's bounds are pandas lookups (microseconds each): asked once, not per call.
    cal = _xnys()
    return cal.first_session.date(), cal.last_session.date()


def _clip(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date] | None:
    first, last = _session_range()
    start, end = max(start, first), min(end, last)
    return (start, end) if start <= end else None


@functools.lru_cache(maxsize=64)
def _year_sessions(year: int) -> tuple[dt.date, ...]:
    # exchange-calendars answers in about 0.1 ms per call: planning and scanning thousands of
    # symbols ask it per year once instead of per symbol.
    bounds = _clip(dt.date(year, 1, 1), dt.date(year, 12, 31))
    if bounds is None:
        return ()
    return tuple(ts.date() for ts in _xnys().sessions_in_range(bounds[0].isoformat(), bounds[1].isoformat()))


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """NYSE sessions from start to end inclusive (holidays and weekends excluded)."""
    bounds = _clip(start, end)
    if bounds is None:
        return []
    out: list[dt.date] = []
    for year in range(bounds[0].year, bounds[1].year + 1):
        days = _year_sessions(year)
        out.extend(days[bisect.bisect_left(days, start):bisect.bisect_right(days, end)])
    return out


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


# -- a symbol's market: the real-time jobs' gating (chronox.realtime) -----------------------

CRYPTO = "crypto"  # trades around the clock; its day is the UTC day


def in_market_session(market: str, moment: dt.datetime) -> bool:
    """True while `market` trades at `moment`: for stocks the NYSE regular session
    (09:30-16:00 New York on trading days, early closes honoured), always for crypto."""
    if market == CRYPTO:
        return True
    day = moment.astimezone(NEW_YORK).date()
    if not is_trading_day(day):
        return False
    s = session(day)
    return s.regular_open <= moment < s.regular_close


def market_day(market: str, moment: dt.datetime) -> dt.date:
    """The calendar day `moment` falls on in the market's own time: New York for stocks, UTC for crypto."""
    return moment.astimezone(UTC).date() if market == CRYPTO else new_york_day(moment)


def latest_session_day(market: str, moment: dt.datetime) -> dt.date:
    """The market's day of `moment` if it trades that day, else its last trading day before."""
    today = market_day(market, moment)
    if market == CRYPTO:
        return today
    days = trading_days(today - dt.timedelta(days=14), today)
    return days[-1] if days else today


def market_day_bounds(market: str, first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start of `first`, end of `last`) of the market's days, in UTC."""
    if market == CRYPTO:
        return (dt.datetime.combine(first, dt.time(0), UTC),
                dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), UTC))
    return day_bounds_utc(first)[0], day_bounds_utc(last)[1]


# -- one calendar per market (DESIGN decision 11) ------------------------------------------


@dataclass(frozen=True)
class MarketCalendar:
    """Trading days, day bounds and sessions of one market.

    Stocks: NYSE sessions (holidays, early closes), New York days, extended hours
    04:00-20:00 (17:00 after an early close). Crypto: every UTC day, always in session.
    Day bounds, gaps, flat-file validation and stale checks all ask the symbol's calendar.
    """

    market: str

    @property
    def around_the_clock(self) -> bool:
        return self.market == CRYPTO

    def trading_days(self, start: dt.date, end: dt.date) -> list[dt.date]:
        if self.around_the_clock:
            return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        return trading_days(start, end)

    def is_trading_day(self, day: dt.date) -> bool:
        return self.around_the_clock or is_trading_day(day)

    def day_bounds(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """What a day file of the market covers, [start, end) in UTC."""
        return market_day_bounds(self.market, day, day)

    def day_of(self, moment: dt.datetime) -> dt.date:
        return market_day(self.market, moment)

    def extended_session(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """[open, close) of the day's trading, extended hours included; the whole day for crypto."""
        if self.around_the_clock:
            return self.day_bounds(day)
        s = session(day)
        return s.extended_open, s.extended_close

    def in_extended_session(self, moment: dt.datetime) -> bool:
        return True if self.around_the_clock else in_extended_session(moment)

    def last_complete_day(self, now: dt.datetime) -> dt.date | None:
        """The newest trading day whose (extended) session has ended."""
        return self._last_ended(now, lambda day: self.extended_session(day)[1])

    def last_closed_day(self, now: dt.datetime) -> dt.date | None:
        """The newest trading day whose regular session has closed (for crypto, whose UTC
        day has ended): REST has its day's bars, though after-hours may still trade."""
        return self._last_ended(now, self.regular_close)

    def regular_close(self, day: dt.date) -> dt.datetime:
        return self.day_bounds(day)[1] if self.around_the_clock else session(day).regular_close

    def _last_ended(self, now: dt.datetime, end_of: Callable[[dt.date], dt.datetime]) -> dt.date | None:
        today = self.day_of(now)
        for day in reversed(self.trading_days(today - dt.timedelta(days=14), today)):
            if end_of(day) <= now:
                return day
        return None


STOCKS = "stocks"
NYSE = MarketCalendar(STOCKS)


def calendar_for(market: str | None) -> MarketCalendar:
    """The calendar of a market (stocks when unknown: every symbol before markets was one)."""
    return MarketCalendar(CRYPTO if market == CRYPTO else STOCKS)
