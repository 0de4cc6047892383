"""Beat entries written in a time zone of their own, and the ETL / real-time jobs.

Celery reads every crontab in the app's time zone (UTC here, so the nightly gap scan
stays at 00:00 UTC). Since Celery 5.3 a crontab computes its next run in `self.tz`, on
wall-clock fields, and measures what remains in UTC; ZonedCrontab gives one entry a zone
of its own, so 16:30 New York is 21:30 UTC in winter and 20:30 UTC in summer. A wall time
that a spring-forward skips (02:00 on the second Sunday of March) runs at the same
instant as the next valid one (03:00); a time that the fall-back repeats runs once.
"""
from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab

from chronox.settings import ConfigError, Settings

CONTROL, REALTIME = "chronox.control", "chronox.realtime"


class ZonedCrontab(crontab):
    """A crontab whose fields are read in `zone` (an IANA name) instead of the app's time zone."""

    def __init__(self, minute: Any = "*", hour: Any = "*", day_of_week: Any = "*", day_of_month: Any = "*",
                 month_of_year: Any = "*", zone: str = "UTC", **kwargs: Any) -> None:
        self.zone = zone
        super().__init__(minute, hour, day_of_week, day_of_month, month_of_year, **kwargs)

    @property
    def tz(self) -> dt.tzinfo:
        return ZoneInfo(self.zone)

    def __reduce__(self) -> Any:
        # beat keeps its entries in a shelve: the zone must survive pickling
        return (self.__class__, (self._orig_minute, self._orig_hour, self._orig_day_of_week,
                                 self._orig_day_of_month, self._orig_month_of_year, self.zone), self._orig_kwargs)

    def __eq__(self, other: Any) -> bool:
        result = super().__eq__(other)
        if result is NotImplemented or not result:
            return result
        return self.zone == getattr(other, "zone", "UTC")

    def __repr__(self) -> str:
        return (f"<crontab: {self._orig_minute} {self._orig_hour} {self._orig_day_of_month} "
                f"{self._orig_month_of_year} {self._orig_day_of_week} ({self.zone})>")

    def next_run(self, after: dt.datetime) -> dt.datetime:
        """The first run strictly after `after`, in UTC."""
        last, delta, _ = self.remaining_delta(after)
        return (last + delta).astimezone(dt.UTC)


def zoned_cron(expression: str, zone: str, variable: str) -> ZonedCrontab:
    """A 5-field cron expression read in `zone`; ConfigError names `variable` if Celery refuses it."""
    minute, hour, day_of_month, month, day_of_week = expression.split()
    try:
        return ZonedCrontab(minute=minute, hour=hour, day_of_week=day_of_week, day_of_month=day_of_month,
                            month_of_year=month, zone=zone)
    except ValueError as exc:
        raise ConfigError(f"{variable}={expression!r}: {exc}") from None


def every_minutes(minutes: int, zone: str, variable: str) -> ZonedCrontab:
    return zoned_cron(f"*/{minutes} * * * *", zone, variable)


def etl_realtime_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """The ETL jobs (control queue, in CHRONOX_SCHEDULE_TZ) and the real-time jobs (their
    own queue; every N minutes, gated inside by the market session)."""
    zone = settings.schedule_tz
    prices_every = settings.latest_prices_minutes * 60
    hourly_every = settings.hourly_refresh_minutes * 60
    return {
        "daily_historical": {
            "task": "chronox.schedule.daily_historical",
            "schedule": zoned_cron(settings.daily_historical_cron, zone, "CHRONOX_DAILY_HISTORICAL_CRON"),
            "options": {"queue": CONTROL, "expires": 6 * 3600},
        },
        "weekly_backfill": {
            "task": "chronox.schedule.weekly_backfill",
            "schedule": zoned_cron(settings.weekly_backfill_cron, zone, "CHRONOX_WEEKLY_BACKFILL_CRON"),
            "options": {"queue": CONTROL, "expires": 24 * 3600},
        },
        "hourly_refresh": {
            "task": "chronox.realtime.hourly_refresh",
            "schedule": every_minutes(settings.hourly_refresh_minutes, zone, "CHRONOX_HOURLY_REFRESH_MINUTES"),
            "options": {"queue": REALTIME, "expires": hourly_every},
        },
        "latest_prices": {
            "task": "chronox.realtime.latest_prices",
            "schedule": every_minutes(settings.latest_prices_minutes, zone, "CHRONOX_LATEST_PRICES_MINUTES"),
            "options": {"queue": REALTIME, "expires": prices_every},
        },
    }
