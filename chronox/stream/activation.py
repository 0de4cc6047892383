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
from chronox.calendar import calendar_for, in_extended_session
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.models import RegistryStatus
from chronox.publish import ENVELOPE_VERSION, get_mirror
from chronox.settings import Settings
from chronox.strategy import parse_moment, validate_symbol

log = logging.getLogger(__name__)

CONTROL_CHANNEL = "chronox.control.stream"  # Redis pub/sub: "re-read the registry now"


def activate(settings: Settings, symbol: str, strategy: str | None = None) -> dict[str, Any]:
    """The `stream` phase: mark the symbol, announce it, and wake the stream process.

    The stream process follows the registry, so a symbol outside it (an ad-hoc run) is
    not activated.
    """
    symbol = validate_symbol(symbol)
    engine = get_engine(settings.database_url)
    try:
        row = registry.get_symbol(engine, symbol)
    except registry.UnknownSymbol:
        reason = "not registered: the stream process streams registry symbols (add it with `chronox symbols add`)"
        log.warning("%s not activated for streaming: %s", symbol, reason)
        return {"symbol": symbol, "activated": False, "reason": reason}
    if not row.enabled or "stream" not in row.phases:
        reason = "disabled" if not row.enabled else f"strategy {row.strategy} has no stream phase"
        log.warning("%s not activated for streaming: %s", symbol, reason)
        return {"symbol": symbol, "activated": False, "reason": reason}
    if row.status != RegistryStatus.ERROR:  # an earlier phase's error must survive to finalize
        registry.set_status(engine, [symbol], RegistryStatus.RUNNING)
    now = isoformat_utc(dt.datetime.now(UTC))
    # action, strategy and timestamp: the registry service's activation fields.
    event = {"event": "stream_activated", "symbol": symbol, "ts": now, "version": ENVELOPE_VERSION,
             "strategy": strategy or row.strategy, "action": "activate", "timestamp": now,
             "market": row.market.value, "provider": row.provider.value}
    published = Delivery(settings, engine).announce("stream", symbol, event)
    mirror = get_mirror(settings)
    if mirror is not None:
        mirror.client.publish(CONTROL_CHANNEL, json.dumps(event))
    return {"symbol": symbol, "activated": True, "published": published, "signalled": mirror is not None}


def check_health(settings: Settings, now: str | dt.datetime | None = None) -> dict[str, Any]:
    """Flag streaming symbols without a bar for CHRONOX_STREAM_STALE_MINUTES during their session.

    The clock starts at the later of the last bar, the registration and the session's
    extended open, so a symbol is never stale in the first minutes of a session.
    Outside the extended session (04:00-20:00 New York on trading days) no stock is stale;
    crypto trades around the clock, so its symbols are always in session (`in_session`
    reports the stock market's).
    """
    moment = parse_moment(now) or dt.datetime.now(UTC)
    engine = get_engine(settings.database_url)
    rows = registry.list_symbols(engine, enabled_only=True, phase="stream")
    result: dict[str, Any] = {"now": isoformat_utc(moment), "checked": len(rows),
                              "in_session": in_extended_session(moment), "stale": 0, "stale_symbols": []}
    limit = dt.timedelta(minutes=settings.stream_stale_minutes)
    for row in rows:
        calendar = calendar_for(row.market)
        if not calendar.in_extended_session(moment):
            continue
        last = row.last_stream
        since = last or row.created_at or moment
        if not calendar.around_the_clock:  # a session's first minutes follow a quiet night
            since = max(since, calendar.extended_session(calendar.day_of(moment))[0])
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
