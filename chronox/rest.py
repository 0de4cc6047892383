"""The flatpack phase's REST steps (reference data, corporate actions, daily bars), and
what every REST phase shares: skipping without a provider, and checking bars that came
from REST before they are stored and published.

Without a provider (chronox.providers) a step is skipped: the registry row carries a
warning while its status is not `error`, and a flat-file-only deployment keeps working.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete

from chronox import registry
from chronox.bars import Bar, QuarantinedRow, bar_problem, isoformat_utc
from chronox.calendar import calendar_for
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.markets import Instrument, Market, ProviderId, as_instrument
from chronox.models import Dividend, Ohlcv1d, Split, TickerDetails, table
from chronox.providers import SKIP_DETAIL, get_provider
from chronox.settings import Settings
from chronox.sources.base import NotInPlan
from chronox.store import quarantine_rows, record_steps, upsert
from chronox.strategy import parse_day

log = logging.getLogger(__name__)

SKIP_WARNING = registry.Note.warning(SKIP_DETAIL).text
BAR_COLUMNS = ("open", "high", "low", "close", "volume", "vwap", "transactions", "source")


# Step -> what people call it; the keys name the steps in run_steps and in the completion
# event's `results` (the registry service's names).
STEPS = {"reference": "reference data", "corporate_actions": "corporate actions", "daily_bars": "daily bars",
         "api": "api gap fill", "snapshot": "snapshot"}


def set_aside(settings: Settings, symbols: Sequence[str], step: str, why: str, warn: bool) -> dict[str, Any]:
    """A step that cannot run for `symbols`: recorded in run_steps, and as the rows' warning
    when it is one."""
    with get_engine(settings.database_url).begin() as conn:
        if warn:
            registry.note_warning(conn, symbols, why)
        record_steps(conn, symbols, step, "skipped", registry.Note.warning(why).text if warn else why)
    return {"step": STEPS.get(step, step), "symbols": list(symbols), "skipped": why}


def skipped(settings: Settings, symbols: Sequence[str], step: str) -> dict[str, Any]:
    log.warning("%s for %s: %s", STEPS[step], ", ".join(symbols), SKIP_WARNING)
    result = set_aside(settings, symbols, step, SKIP_DETAIL, warn=True)
    return {**result, "skipped": SKIP_WARNING}


def not_offered(settings: Settings, symbol: str, step: str, why: str) -> dict[str, Any]:
    """A step that does not apply to the symbol's market or provider: recorded, no warning."""
    return set_aside(settings, [symbol], step, why, warn=False)


def not_in_plan(settings: Settings, symbol: str, step: str, refusal: NotInPlan) -> dict[str, Any]:
    """A step the account's plan does not include: a warning that names the plan, not a
    failure, so the symbol's other phases and the run go on."""
    log.warning("%s for %s: %s", STEPS[step], symbol, refusal)
    return set_aside(settings, [symbol], step, str(refusal), warn=True)


def checked(bars: Sequence[Bar], origin: str) -> tuple[list[Bar], list[QuarantinedRow]]:
    """Bars that can be real bars, and quarantine records with the reason for the others."""
    good, bad = [], []
    for bar in bars:
        problem = bar_problem(bar)
        if problem is None:
            good.append(bar)
        else:
            raw = json.dumps({**bar._asdict(), "ts": isoformat_utc(bar.ts)})
            bad.append(QuarantinedRow(origin, bar.symbol, raw, problem))
    return good, bad


def _text(value: Any, size: int) -> str | None:
    return None if value is None else str(value)[:size]


def load_reference(settings: Settings, instrument: Instrument | str) -> dict[str, Any]:
    instrument = as_instrument(instrument)
    symbol = instrument.symbol
    if instrument.provider != ProviderId.POLYGON:
        return not_offered(settings, symbol, "reference", f"{instrument.provider} has no reference data")
    provider = get_provider(settings, instrument)
    if provider is None:
        return skipped(settings, [symbol], "reference")
    details = provider.ticker_details(symbol)
    try:
        list_date = dt.date.fromisoformat(str(details.get("list_date")))
    except ValueError:
        list_date = None
    row = {"symbol": symbol, "name": _text(details.get("name"), 255), "market": _text(details.get("market"), 32),
           "primary_exchange": _text(details.get("primary_exchange"), 16), "type": _text(details.get("type"), 16),
           "active": details.get("active") if isinstance(details.get("active"), bool) else None,
           "currency": _text(details.get("currency_name"), 16), "list_date": list_date,
           "raw": json.dumps(details, sort_keys=True)}
    with get_engine(settings.database_url).begin() as conn:
        upsert(conn, table(TickerDetails), [row], keys=("symbol",),
               updates=[c for c in row if c != "symbol"] + ["updated_at"])
        record_steps(conn, [symbol], "reference", "ok", True)
    return {"symbol": symbol, "provider": provider.name, "name": row["name"]}


def _replace_actions(conn: Connection, table: Any, symbol: str, rows: list[dict[str, Any]]) -> None:
    # Replaced as a whole: Polygon corrects and withdraws announcements.
    conn.execute(delete(table).where(table.c.symbol == symbol))
    unique = list({r["id"]: r for r in rows}.values())
    upsert(conn, table, unique, keys=("id",), updates=[c for c in unique[0] if c != "id"] if unique else [])


def load_corporate_actions(settings: Settings, instrument: Instrument | str) -> dict[str, Any]:
    instrument = as_instrument(instrument)
    symbol = instrument.symbol
    if instrument.market != Market.STOCKS:
        return not_offered(settings, symbol, "corporate_actions", f"{instrument.market} has no corporate actions")
    provider = get_provider(settings, instrument)
    if provider is None:
        return skipped(settings, [symbol], "corporate_actions")
    dividends = provider.dividends(symbol)
    splits = provider.splits(symbol)
    with get_engine(settings.database_url).begin() as conn:
        _replace_actions(conn, table(Dividend), symbol, dividends)
        _replace_actions(conn, table(Split), symbol, splits)
        record_steps(conn, [symbol], "corporate_actions", "ok", {"dividends": len(dividends), "splits": len(splits)})
    return {"symbol": symbol, "provider": provider.name, "dividends": len(dividends), "splits": len(splits)}


def load_daily_bars(settings: Settings, instrument: Instrument | str, start: str, end: str) -> dict[str, Any]:
    instrument = as_instrument(instrument)
    symbol = instrument.symbol
    provider = get_provider(settings, instrument)
    if provider is None:
        return skipped(settings, [symbol], "daily_bars")
    first, last = parse_day(start), parse_day(end)
    if first > last:
        with get_engine(settings.database_url).begin() as conn:
            record_steps(conn, [symbol], "daily_bars", "ok", 0)
        return {"symbol": symbol, "provider": provider.name, "days": 0, "quarantined": 0}
    try:
        fetched = provider.daily_bars(symbol, first, last)
    except NotInPlan as refusal:
        return not_in_plan(settings, symbol, "daily_bars", refusal)
    good, bad = checked(fetched, f"{provider.name}:daily:{symbol}")
    # One row per day, the last bar winning: an upsert may not touch a row twice.
    day_of = calendar_for(instrument.market).day_of
    rows = list({day_of(b.ts): {"symbol": b.symbol, "day": day_of(b.ts),
                                **{c: getattr(b, c) for c in BAR_COLUMNS}} for b in good}.values())

    with Delivery(settings, origin=instrument.origin).transaction() as out:
        upsert(out.conn, table(Ohlcv1d), rows, keys=("symbol", "day"), updates=BAR_COLUMNS)
        quarantine_rows(out.conn, bad)
        record_steps(out.conn, [symbol], "daily_bars", "ok", len(rows))
        out.bars(good, "1d")
    return {"symbol": symbol, "provider": provider.name, "days": len(rows), "quarantined": len(bad)}
