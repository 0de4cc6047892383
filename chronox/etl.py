"""The ETL side's beat jobs, in exchange time: the day just closed (16:30 New York on
NYSE trading days) and the weekly re-check of a year (Sunday 02:00 New York).

Both go through the normal registry execution (chronox.registry.execute) and leave alone
symbols a run owns (`scheduled`/`running`, as the nightly gap scan does). No Celery here:
the task layer passes the function that sends an execution.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from chronox import registry
from chronox.bars import UTC
from chronox.calendar import is_trading_day, new_york_day
from chronox.db import get_engine
from chronox.gaps import find_gaps
from chronox.markets import Market
from chronox.models import RegistryStatus
from chronox.realtime import skip
from chronox.settings import Settings

DAILY_HISTORICAL = "daily_historical"
WEEKLY_BACKFILL = "weekly_backfill"

ExecutionSender = Callable[[list[str], str, str], None]  # symbols, start, end


def _free(settings: Settings, symbols: Sequence[str], now: dt.datetime) -> tuple[list[str], list[str]]:
    """(symbols no run owns, those a run owns)."""
    busy = registry.busy_symbols(get_engine(settings.database_url), now,
                                 dt.timedelta(hours=settings.backfill_stale_hours))
    return [s for s in symbols if s not in busy], sorted(s for s in symbols if s in busy)


def daily_historical(settings: Settings, now: dt.datetime | None, send: ExecutionSender) -> dict[str, Any]:
    """Every enabled stock's New York day of `now`, through a registry execution (stream
    phase left out): daily bars, snapshots and the minute bars so far from REST. The day
    stays a gap until its after-hours are over; then the nightly gap scan completes it,
    from the day file Polygon publishes the next morning where the symbol has a flatpack
    phase (chronox.gaps)."""
    now = now or dt.datetime.now(UTC)
    day = new_york_day(now)
    if not is_trading_day(day):
        return skip(DAILY_HISTORICAL, f"{day} is not an NYSE trading day", day=day.isoformat())
    # A crypto day ends at 00:00 UTC, where the nightly gap scan runs; 16:30 New York closes stocks'.
    enabled = [r.symbol for r in registry.list_symbols(get_engine(settings.database_url), enabled_only=True)
               if r.market == Market.STOCKS]
    due, busy = _free(settings, enabled, now)
    if not due:
        return skip(DAILY_HISTORICAL, "no enabled symbol free to run", day=day.isoformat(), skipped_running=busy)
    send(due, day.isoformat(), day.isoformat())
    return {"job": DAILY_HISTORICAL, "day": day.isoformat(), "symbols": len(due), "skipped_running": busy}


def weekly_backfill(settings: Settings, now: dt.datetime | None, send: ExecutionSender) -> dict[str, Any]:
    """The last CHRONOX_WEEKLY_BACKFILL_DAYS of every enabled backfilling symbol: gaps are
    filled, present days cost only the coverage check.

    One execution per gap window (runs of consecutive missing trading days), with every
    symbol missing that window: a day file is read once for all of them, and no day that
    is present is loaded again, however far apart a symbol's gaps lie.
    """
    now = now or dt.datetime.now(UTC)
    today = new_york_day(now)
    start = today - dt.timedelta(days=settings.weekly_backfill_days)
    found = find_gaps(settings, start=start.isoformat(), end=today.isoformat(), now=now)
    gapped = [g for g in found if g.gaps]
    due, busy = _free(settings, [g.symbol for g in gapped], now)
    windows: dict[tuple[dt.date, dt.date], list[str]] = defaultdict(list)
    for g in gapped:
        if g.symbol in due:
            for first, last in g.windows:
                windows[first, last].append(g.symbol)
    registry.set_status(get_engine(settings.database_url), due, RegistryStatus.SCHEDULED)
    for (first, last), symbols in sorted(windows.items()):
        send(symbols, first.isoformat(), last.isoformat())
    return {"job": WEEKLY_BACKFILL, "since": start.isoformat(), "checked": len(found), "with_gaps": len(gapped),
            "skipped_running": busy, "executions": len(windows),
            "gap_days": sum(len(g.gaps) for g in gapped if g.symbol in due)}
