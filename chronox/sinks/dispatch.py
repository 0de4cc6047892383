"""Which symbol-days the sinks are asked to write, and when; sending is the caller's
(chronox.tasks.sinks sends Celery tasks, or runs them in this process without a broker)."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select

from chronox import registry, sinks
from chronox.calendar import calendar_for
from chronox.db import get_engine
from chronox.models import Coverage, table
from chronox.settings import Settings
from chronox.sinks import frames

log = logging.getLogger(__name__)

COVERAGE = table(Coverage)
# send(settings, symbol, days): queue the configured sinks of one symbol's days.
Send = Callable[[Settings, str, list[str]], None]


def run_days(settings: Settings, symbols: Sequence[str], start: str, end: str) -> dict[str, list[str]]:
    """The days each symbol has coverage for between start and end: what a run committed."""
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    days: dict[str, list[str]] = {}
    with get_engine(settings.database_url).connect() as conn:
        for symbol, day in conn.execute(
                select(COVERAGE.c.symbol, COVERAGE.c.trading_day).distinct()
                .where(COVERAGE.c.symbol.in_(list(symbols)), COVERAGE.c.trading_day >= first,
                       COVERAGE.c.trading_day <= last)
                .order_by(COVERAGE.c.symbol, COVERAGE.c.trading_day)):
            days.setdefault(symbol, []).append(day.isoformat())
    return days


def after_run(settings: Settings, symbols: Sequence[str], start: str, end: str, send: Send) -> int:
    """After a run is finalized: the sinks of each symbol and the days the run covered.
    Nothing at all (not even a query) when no sink is configured."""
    if not sinks.configured(settings):
        return 0
    sent = 0
    for symbol, days in run_days(settings, symbols, start, end).items():
        send(settings, symbol, days)
        sent += 1
    return sent


def stream_day(settings: Settings, send: Send, day: str | None = None,
               now: dt.datetime | None = None) -> dict[str, Any]:
    """Once a market day is over: the sinks of every streaming symbol for that day (stream
    bars have no run that finalizes them). `day` defaults to each market's last complete day."""
    names = list(sinks.configured(settings))
    if not names:
        return {"days": {}, "symbols": 0, "sinks": names}
    now = now or dt.datetime.now(dt.UTC)
    engine = get_engine(settings.database_url)
    symbols = registry.symbols_with_phase(engine, "stream")
    days: dict[str, str] = {}
    sent = 0
    for symbol, market in frames.symbol_markets(engine, symbols).items():
        the_day = dt.date.fromisoformat(day) if day else calendar_for(market).last_complete_day(now)
        if the_day is None:
            continue
        days[market] = the_day.isoformat()
        send(settings, symbol, [the_day.isoformat()])
        sent += 1
    log.info("sinks of %d streaming symbol(s) sent for %s", sent, days)
    return {"days": days, "symbols": sent, "sinks": names}
