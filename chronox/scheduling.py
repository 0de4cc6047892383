"""The nightly gap scan: which symbols need a backfill, without doubling a running one.

A symbol whose registry status is `scheduled` or `running` is left alone; the registry
is the durable status every task already maintains, so no second bookkeeping system
can disagree with it. A status older than CHRONOX_BACKFILL_STALE_HOURS is presumed to
belong to a run that died (a lost worker, a flushed broker) and no longer blocks.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from chronox import registry
from chronox.bars import UTC
from chronox.db import get_engine
from chronox.gaps import find_gaps
from chronox.models import RegistryStatus
from chronox.settings import Settings


def gap_scan(settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    """Find gaps of every enabled backfilling symbol; mark the ones to backfill `scheduled`.

    Returns the backfills to dispatch (symbol, first and last missing day) so the task
    can send them; marking before sending means an overlapping scan skips them.
    """
    now = now or dt.datetime.now(UTC)
    found = [g for g in find_gaps(settings, now=now) if g.gaps]
    engine = get_engine(settings.database_url)
    busy = registry.busy_symbols(engine, now, dt.timedelta(hours=settings.backfill_stale_hours))
    due = [g for g in found if g.symbol not in busy]
    dispatch = [{"symbol": g.symbol, "start": g.gaps[0].isoformat(), "end": g.gaps[-1].isoformat(),
                 "gaps": len(g.gaps)} for g in due]
    registry.set_status(engine, [g.symbol for g in due], RegistryStatus.SCHEDULED)
    return {"with_gaps": len(found), "skipped_running": sorted(g.symbol for g in found if g.symbol in busy),
            "dispatch": dispatch}


BackfillSender = Callable[[str, str, str], None]  # symbol, start, end


def nightly_gap_scan(settings: Settings, now: dt.datetime | None, send: BackfillSender) -> dict[str, Any]:
    """The beat job: gap_scan, then one backfill sent per symbol with gaps."""
    result = gap_scan(settings, now=now)
    for item in result["dispatch"]:
        send(item["symbol"], item["start"], item["end"])
    return {**result, "dispatched": len(result["dispatch"])}
