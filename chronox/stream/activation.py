"""The `stream` phase (activation) and the stream health check, both run by Celery tasks.

Activation marks the symbol, announces it, and wakes the stream process over Redis
pub/sub; the health check flags streaming symbols whose bars stopped during their session.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from chronox import registry
from chronox.bars import UTC, isoformat_utc
from chronox.calendar import NEW_YORK, in_extended_session, session
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.models import RegistryStatus
from chronox.publish import ENVELOPE_VERSION, get_mirror
from chronox.settings import Settings
from chronox.strategy import parse_moment, validate_symbol

log = logging.getLogger(__name__)

CONTROL_CHANNEL = "chronox.control.stream"  # Redis pub/sub: "re-read the registry now"


def activate(settings: Settings, symbol: str) -> dict[str, Any]:
    """The `stream` phase: mark the symbol, announce it, and wake the stream process."""
    symbol = validate_symbol(symbol)
    engine = get_engine(settings.database_url)
    row = registry.get_symbol(engine, symbol)
    if not row.enabled or "stream" not in row.phases:
        reason = "disabled" if not row.enabled else f"strategy {row.strategy} has no stream phase"
        log.warning("%s not activated for streaming: %s", symbol, reason)
        return {"symbol": symbol, "activated": False, "reason": reason}
    if row.status != RegistryStatus.ERROR:  # an earlier phase's error must survive to finalize
        registry.set_status(engine, [symbol], RegistryStatus.RUNNING)
    event = {"event": "stream_activated", "symbol": symbol, "ts": isoformat_utc(dt.datetime.now(UTC)),
             "version": ENVELOPE_VERSION}
    published = Delivery(settings, engine).announce("stream", symbol, event)
    mirror = get_mirror(settings)
    if mirror is not None:
        mirror.client.publish(CONTROL_CHANNEL, json.dumps(event))
    return {"symbol": symbol, "activated": True, "published": published, "signalled": mirror is not None}


def check_health(settings: Settings, now: str | dt.datetime | None = None) -> dict[str, Any]:
    """Flag streaming symbols without a bar for CHRONOX_STREAM_STALE_MINUTES during their session.

    The clock starts at the later of the last bar, the registration and the session's
    extended open, so a symbol is never stale in the first minutes of a session.
    Outside the extended session (04:00-20:00 New York on trading days) nothing is stale.
    """
    moment = parse_moment(now) or dt.datetime.now(UTC)
    engine = get_engine(settings.database_url)
    rows = registry.list_symbols(engine, enabled_only=True, phase="stream")
    result: dict[str, Any] = {"now": isoformat_utc(moment), "checked": len(rows), "in_session": False,
                              "stale": 0, "stale_symbols": []}
    if not in_extended_session(moment):
        return result
    result["in_session"] = True
    opened = session(moment.astimezone(NEW_YORK).date()).extended_open
    limit = dt.timedelta(minutes=settings.stream_stale_minutes)
    for row in rows:
        last = row.last_stream
        since = max(last or row.created_at or moment, opened)
        if moment - since <= limit:
            continue
        if last is None:
            detail = f"no bar received yet (streaming since {isoformat_utc(since)})"
        else:
            minutes = int((moment - last).total_seconds() // 60)
            detail = f"last bar {isoformat_utc(last)} ({minutes} min ago)"
        log.warning("%s: stream stale: %s", row.symbol, detail)
        registry.mark_stale(engine, [row.symbol], detail)
        result["stale_symbols"].append(row.symbol)
    result["stale"] = len(result["stale_symbols"])
    return result
