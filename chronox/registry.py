"""The symbol registry: what to ingest per symbol, and the durable status of its runs."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from chronox.bars import isoformat_utc
from chronox.models import SymbolRegistry
from chronox.strategy import InvalidInput, canonical_strategy, validate_symbol, validate_timeframe

REGISTRY = SymbolRegistry.__table__
COLUMNS = ("symbol", "strategy", "timeframe", "enabled", "last_backfill", "last_snapshot",
           "last_stream", "status", "error_message", "created_at", "updated_at")


class UnknownSymbol(InvalidInput):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_dict(row: Any) -> dict[str, Any]:
    """Registry row as JSON-able dict: timestamps ISO-8601 UTC, dates ISO, or null."""
    out: dict[str, Any] = {}
    for column in COLUMNS:
        value = getattr(row, column)
        if isinstance(value, dt.datetime):
            value = isoformat_utc(value)
        elif isinstance(value, dt.date):
            value = value.isoformat()
        out[column] = value
    return out


def add_symbol(engine: Engine, symbol: str, strategy: str, timeframe: str = "1m",
               enabled: bool = True) -> dict[str, Any]:
    symbol = validate_symbol(symbol)
    values = {"symbol": symbol, "strategy": canonical_strategy(strategy),
              "timeframe": validate_timeframe(timeframe), "enabled": enabled, "status": "idle",
              "created_at": _now(), "updated_at": _now()}
    try:
        with engine.begin() as conn:
            conn.execute(REGISTRY.insert().values(**values))
    except IntegrityError:
        raise InvalidInput(f"symbol {symbol} is already registered; use `symbols update`") from None
    return get_symbol(engine, symbol)


def get_symbol(engine: Engine, symbol: str) -> dict[str, Any]:
    symbol = validate_symbol(symbol)
    with engine.connect() as conn:
        row = conn.execute(select(REGISTRY).where(REGISTRY.c.symbol == symbol)).first()
    if row is None:
        raise UnknownSymbol(f"symbol {symbol} is not registered")
    return as_dict(row)


def list_symbols(engine: Engine, enabled_only: bool = False,
                 symbols: Sequence[str] | None = None) -> list[dict[str, Any]]:
    query = select(REGISTRY).order_by(REGISTRY.c.symbol)
    if enabled_only:
        query = query.where(REGISTRY.c.enabled.is_(True))
    if symbols is not None:
        query = query.where(REGISTRY.c.symbol.in_([validate_symbol(s) for s in symbols]))
    with engine.connect() as conn:
        return [as_dict(row) for row in conn.execute(query)]


def update_symbol(engine: Engine, symbol: str, strategy: str | None = None,
                  timeframe: str | None = None, enabled: bool | None = None) -> dict[str, Any]:
    symbol = validate_symbol(symbol)
    values: dict[str, Any] = {"updated_at": _now()}
    if strategy is not None:
        values["strategy"] = canonical_strategy(strategy)
    if timeframe is not None:
        values["timeframe"] = validate_timeframe(timeframe)
    if enabled is not None:
        values["enabled"] = enabled
    with engine.begin() as conn:
        changed = conn.execute(update(REGISTRY).where(REGISTRY.c.symbol == symbol).values(**values)).rowcount
    if not changed:
        raise UnknownSymbol(f"symbol {symbol} is not registered")
    return get_symbol(engine, symbol)


def remove_symbol(engine: Engine, symbol: str) -> None:
    symbol = validate_symbol(symbol)
    with engine.begin() as conn:
        removed = conn.execute(REGISTRY.delete().where(REGISTRY.c.symbol == symbol)).rowcount
    if not removed:
        raise UnknownSymbol(f"symbol {symbol} is not registered")


def set_status(engine: Engine, symbols: Sequence[str], status: str,
               error_message: str | None = None, **stamps: Any) -> None:
    """Move symbols to a status; `completed`/`running` clear the error message."""
    if not symbols:
        return
    values: dict[str, Any] = {"status": status, "updated_at": _now(), **stamps}
    if status == "error":
        values["error_message"] = (error_message or "failed")[:2000]
    elif status in ("running", "scheduled", "completed"):
        values["error_message"] = error_message
    with engine.begin() as conn:
        conn.execute(update(REGISTRY).where(REGISTRY.c.symbol.in_(list(symbols))).values(**values))


def status_of(engine: Engine, symbols: Sequence[str]) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(REGISTRY.c.symbol, REGISTRY.c.status)
                            .where(REGISTRY.c.symbol.in_(list(symbols))))
        return {s: st for s, st in rows}


STREAM_STALE_PREFIX = "stream stale:"


def status_report(engine: Engine) -> dict[str, Any]:
    """What `chronox status` shows: counts by status, errors, stale streams, last stamps."""
    rows = list_symbols(engine)
    counts = {status: 0 for status in ("idle", "scheduled", "running", "completed", "error")}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    errors = [{"symbol": r["symbol"], "error_message": r["error_message"]} for r in rows
              if r["status"] == "error" and not (r["error_message"] or "").startswith(STREAM_STALE_PREFIX)]
    stale = [{"symbol": r["symbol"], "last_stream": r["last_stream"], "error_message": r["error_message"]}
             for r in rows if (r["error_message"] or "").startswith(STREAM_STALE_PREFIX)]
    stamps = [{k: r[k] for k in ("symbol", "strategy", "enabled", "status", "last_backfill", "last_snapshot",
                                 "last_stream")} for r in rows]
    return {"total": len(rows), "by_status": counts, "errors": errors, "stale_streams": stale, "symbols": stamps}
