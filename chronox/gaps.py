"""Gaps in coverage, and the `api` phase that fills them from REST minute aggregates.

A gap is an NYSE trading day (holidays excluded, early closes included) in a symbol's
window that has no coverage row of any source. Coverage, not a minute grid: Polygon
writes no bar for a minute without trades. The window runs from the day after
`last_backfill` (or --start; CHRONOX_BACKFILL_START or 30 days back for a symbol never
backfilled) to --end or today, and stops at the newest complete trading day: a session
is not a gap until its extended hours (04:00-20:00 New York, 17:00 after an early
close) are over.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from chronox import registry
from chronox.backfill import plan_run
from chronox.bars import UTC
from chronox.calendar import NEW_YORK, new_york_day, session, trading_days
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.providers import get_provider
from chronox.rest import checked, skipped
from chronox.settings import Settings
from chronox.store import cover_days, covered_days, lock_day, quarantine_rows, upsert_bars
from chronox.strategy import parse_day

WINDOW_DAYS = 7


def last_complete_day(now: dt.datetime | None = None) -> dt.date | None:
    """The newest trading day whose extended session has ended."""
    now = now or dt.datetime.now(UTC)
    today = now.astimezone(NEW_YORK).date()
    for day in reversed(trading_days(today - dt.timedelta(days=14), today)):
        if session(day).extended_close <= now:
            return day
    return None


def missing_days(conn: Connection, symbol: str, first: dt.date, last: dt.date) -> list[dt.date]:
    covered = covered_days(conn, symbol, first, last)
    return [d for d in trading_days(first, last) if d not in covered]


def windows(days: Sequence[dt.date], span: int = WINDOW_DAYS) -> list[tuple[dt.date, dt.date]]:
    """Runs of consecutive trading days, cut so that none spans more than `span` calendar days."""
    if not days:
        return []
    index = {d: i for i, d in enumerate(trading_days(days[0], days[-1]))}
    out: list[tuple[dt.date, dt.date]] = []
    first = prev = days[0]
    for day in days[1:]:
        if index[day] == index[prev] + 1 and (day - first).days < span:
            prev = day
            continue
        out.append((first, prev))
        first = prev = day
    out.append((first, prev))
    return out


@dataclass
class SymbolGaps:
    symbol: str
    since: dt.date
    until: dt.date
    gaps: list[dt.date] = field(default_factory=list)

    @property
    def windows(self) -> list[tuple[dt.date, dt.date]]:
        return windows(self.gaps)

    def as_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "since": self.since.isoformat(), "until": self.until.isoformat(),
                "gaps": [d.isoformat() for d in self.gaps],
                "windows": [[a.isoformat(), b.isoformat()] for a, b in self.windows]}


def symbol_gaps(settings: Settings, symbol: str, start: str | dt.date, end: str | dt.date,
                now: dt.datetime | None = None) -> SymbolGaps:
    since = parse_day(start)
    until = parse_day(end)
    newest = last_complete_day(now)
    until = min(until, newest) if newest else since - dt.timedelta(days=1)
    if since > until:
        return SymbolGaps(symbol, since, until)
    with get_engine(settings.database_url).connect() as conn:
        return SymbolGaps(symbol, since, until, missing_days(conn, symbol, since, until))


def find_gaps(settings: Settings, symbols: Sequence[str] | None = None, start: str | None = None,
              end: str | None = None, now: dt.datetime | None = None) -> list[SymbolGaps]:
    """Gaps of the named symbols, or of every enabled symbol that backfills (flatpack or api)."""
    if not symbols:
        rows = registry.list_symbols(get_engine(settings.database_url), enabled_only=True)
        symbols = [r.symbol for r in rows if {"flatpack", "api"} & set(r.phases)]
        if not symbols:
            return []
    today = (now or dt.datetime.now(UTC)).astimezone(NEW_YORK).date()
    # The api strategy has no flatpack phase, so planning looks up no flat files.
    plan = plan_run(settings, symbols=symbols, start=start, end=end, strategy="api", today=today)
    return [symbol_gaps(settings, p.symbol, p.start, p.end, now) for p in plan.symbols]


def plan_fill(settings: Settings, symbol: str, start: str, end: str) -> dict[str, Any]:
    """The api phase's first step: the gaps of one symbol, as windows to fill one task each."""
    if get_provider(settings) is None:
        return skipped(settings, [symbol], "api gap fill")
    return symbol_gaps(settings, symbol, start, end).as_dict()


def fill_window(settings: Settings, symbol: str, start: str, end: str) -> dict[str, Any]:
    """Fill the still-uncovered trading days of one window from REST minute aggregates.

    Days covered meanwhile (a flat-file load, an earlier run) are left alone, so REST bars
    never mix into a flat-file day and a rerun requests nothing.
    """
    provider = get_provider(settings)
    if provider is None:
        return skipped(settings, [symbol], "api gap fill")
    first, last = parse_day(start), parse_day(end)
    engine = get_engine(settings.database_url)
    with engine.connect() as conn:
        days = missing_days(conn, symbol, first, last)
    result = {"symbol": symbol, "window": [first.isoformat(), last.isoformat()], "provider": provider.name}
    if not days:
        return {**result, "days": 0, "rows": 0, "quarantined": 0}
    fetched = provider.minute_bars(symbol, days[0], days[-1])
    good, bad = checked(fetched, f"{provider.name}:minute:{symbol}:{days[0]}..{days[-1]}")
    with Delivery(settings).transaction() as out:
        for day in days:
            lock_day(out.conn, day)  # the lock a flat-file load of the day takes
        still = set(missing_days(out.conn, symbol, days[0], days[-1])) & set(days)
        # One bar per minute, the last winning as in the upsert, so the counts match the rows.
        bars = list({b.ts: b for b in good if new_york_day(b.ts) in still}.values())
        counts = Counter(new_york_day(b.ts) for b in bars)
        upsert_bars(out.conn, bars)
        # A day REST has no bar for is covered too: the symbol did not trade.
        cover_days(out.conn, symbol, {d: counts[d] for d in still}, "api")
        quarantine_rows(out.conn, bad)
        out.bars(bars, "1m")
    return {**result, "days": len(still), "rows": len(bars), "quarantined": len(bad)}
