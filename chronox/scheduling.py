"""The nightly gap scan: which symbols need a backfill, without doubling a running one.

A symbol whose registry status is `scheduled` or `running` is left alone; the registry
is the durable status every task already maintains, so no second bookkeeping system
can disagree with it. A status older than CHRONOX_BACKFILL_STALE_HOURS is presumed to
belong to a run that died (a lost worker, a flushed broker) and no longer blocks.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from chronox import registry
from chronox.bars import UTC
from chronox.db import get_engine
from chronox.gaps import find_gaps
from chronox.models import SymbolRegistry
from chronox.settings import Settings

BUSY = ("scheduled", "running")


def busy_symbols(settings: Settings, now: dt.datetime) -> set[str]:
    cutoff = now - dt.timedelta(hours=settings.backfill_stale_hours)
    table = SymbolRegistry.__table__
    with get_engine(settings.database_url).connect() as conn:
        rows = conn.execute(select(table.c.symbol, table.c.updated_at).where(table.c.status.in_(BUSY)))
        return {symbol for symbol, updated in rows
                if updated is not None and (updated if updated.tzinfo else updated.replace(tzinfo=UTC)) > cutoff}


def gap_scan(settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    """Find gaps of every enabled backfilling symbol; mark the ones to backfill `scheduled`.

    Returns the backfills to dispatch (symbol, first and last missing day) so the task
    can send them; marking before sending means an overlapping scan skips them.
    """
    now = now or dt.datetime.now(UTC)
    found = [g for g in find_gaps(settings, now=now) if g.gaps]
    busy = busy_symbols(settings, now)
    dispatch = [{"symbol": g.symbol, "start": g.gaps[0].isoformat(), "end": g.gaps[-1].isoformat(),
                 "gaps": len(g.gaps)} for g in found if g.symbol not in busy]
    registry.set_status(get_engine(settings.database_url), [d["symbol"] for d in dispatch], "scheduled")
    return {"with_gaps": len(found), "skipped_running": sorted(g.symbol for g in found if g.symbol in busy),
            "dispatch": dispatch}
