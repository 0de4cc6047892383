"""The flatpack phase's REST steps (reference data, corporate actions, daily bars), and
what every REST phase shares: choosing the provider, skipping without one, and storing
and publishing bars that came from REST.

No provider (no POLYGON_API_KEY and CHRONOX_PROVIDER is not `replay`) is not an error:
the step is skipped, the registry row carries a `warning: ...` text in error_message
while its status is not `error`, and a flat-file-only deployment keeps working.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from kafka.errors import KafkaError
from sqlalchemy import Connection, Engine, delete, update

from chronox.bars import Bar, bar_problem, isoformat_utc
from chronox.db import get_engine
from chronox.models import Dividend, Ohlcv1d, Split, SymbolRegistry, TickerDetails
from chronox.publish import KafkaPublisher, PublishError, drop_publisher, get_publisher
from chronox.ratelimit import get_limiter
from chronox.settings import Settings
from chronox.sources.flatfiles import QuarantinedRow
from chronox.sources.polygon import PolygonRest, Provider, new_york_day
from chronox.sources.replay import ReplayProvider
from chronox.store import quarantine_rows, upsert
from chronox.strategy import parse_day

log = logging.getLogger(__name__)

WARNING_PREFIX = "warning: "
SKIP_WARNING = (f"{WARNING_PREFIX}Polygon REST steps skipped: POLYGON_API_KEY is not set (flat files "
                "still load; set the key, or CHRONOX_PROVIDER=replay to answer from local flat files)")
BAR_COLUMNS = ("open", "high", "low", "close", "volume", "vwap", "transactions", "source")


def is_warning(message: str | None) -> bool:
    return bool(message and message.startswith(WARNING_PREFIX))


def provider_configured(settings: Settings) -> bool:
    return settings.provider == "replay" or bool(settings.polygon_api_key)


def get_provider(settings: Settings) -> Provider | None:
    if not provider_configured(settings):
        return None
    if settings.provider == "replay":
        return ReplayProvider(settings)
    return PolygonRest(settings, get_limiter(settings))


def touch_registry(conn: Connection, symbols: Sequence[str], keep_errors: bool = False,
                   **values: Any) -> None:
    """Set columns of registry rows without changing their status (registry.set_status does)."""
    table = SymbolRegistry.__table__
    values["updated_at"] = dt.datetime.now(dt.timezone.utc)
    for i in range(0, len(symbols), 1000):  # SQLite caps the parameters of one statement
        query = update(table).where(table.c.symbol.in_(list(symbols[i:i + 1000])))
        if keep_errors:
            query = query.where(table.c.status != "error")
        conn.execute(query.values(**values))


def note_warning(engine: Engine, symbols: Sequence[str], text: str) -> None:
    """Put a warning on registry rows, unless a row already shows an error."""
    with engine.begin() as conn:
        touch_registry(conn, symbols, keep_errors=True, error_message=text)


def skipped(settings: Settings, symbols: Sequence[str], step: str) -> dict[str, Any]:
    log.warning("%s for %s: %s", step, ", ".join(symbols), SKIP_WARNING)
    note_warning(get_engine(settings.database_url), symbols, SKIP_WARNING)
    return {"step": step, "symbols": list(symbols), "skipped": SKIP_WARNING}


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


def publish_bars(publisher: KafkaPublisher, bars: Sequence[Bar], tf: str) -> None:
    for b in bars:
        publisher.send_bar(b.symbol, tf, isoformat_utc(b.ts), b.open, b.high, b.low, b.close,
                           b.volume, b.source)
    publisher.flush()


def store_and_publish(settings: Settings, tf: str,
                      write: Callable[[Connection], Sequence[Bar]]) -> Sequence[Bar]:
    """Run write(conn) in one transaction and publish the bars it returns, in publish-mode order.

    kafka-first: Kafka acknowledges every bar before the transaction commits.
    db-first: commit, then publish; a Kafka failure raises so the task retries, and
    the rerun rewrites the same rows and publishes again.
    """
    engine = get_engine(settings.database_url)
    kafka_first = settings.publish_mode == "kafka-first"
    try:
        publisher = get_publisher(settings)
        with engine.begin() as conn:
            bars = write(conn)
            if publisher is not None and kafka_first and bars:
                publish_bars(publisher, bars, tf)
        if publisher is not None and not kafka_first and bars:
            publish_bars(publisher, bars, tf)
    except (PublishError, KafkaError):
        drop_publisher(settings)
        raise
    return bars


def _text(value: Any, size: int) -> str | None:
    return None if value is None else str(value)[:size]


def load_reference(settings: Settings, symbol: str) -> dict[str, Any]:
    provider = get_provider(settings)
    if provider is None:
        return skipped(settings, [symbol], "reference data")
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
        upsert(conn, TickerDetails.__table__, [row], keys=("symbol",),
               updates=[c for c in row if c != "symbol"] + ["updated_at"])
    return {"symbol": symbol, "provider": provider.name, "name": row["name"]}


def _replace_actions(conn: Connection, table: Any, symbol: str, rows: list[dict[str, Any]]) -> None:
    # Replaced as a whole: Polygon corrects and withdraws announcements.
    conn.execute(delete(table).where(table.c.symbol == symbol))
    unique = list({r["id"]: r for r in rows}.values())
    upsert(conn, table, unique, keys=("id",), updates=[c for c in unique[0] if c != "id"] if unique else [])


def load_corporate_actions(settings: Settings, symbol: str) -> dict[str, Any]:
    provider = get_provider(settings)
    if provider is None:
        return skipped(settings, [symbol], "corporate actions")
    dividends = provider.dividends(symbol)
    splits = provider.splits(symbol)
    with get_engine(settings.database_url).begin() as conn:
        _replace_actions(conn, Dividend.__table__, symbol, dividends)
        _replace_actions(conn, Split.__table__, symbol, splits)
    return {"symbol": symbol, "provider": provider.name, "dividends": len(dividends), "splits": len(splits)}


def load_daily_bars(settings: Settings, symbol: str, start: str, end: str) -> dict[str, Any]:
    provider = get_provider(settings)
    if provider is None:
        return skipped(settings, [symbol], "daily bars")
    first, last = parse_day(start), parse_day(end)
    if first > last:
        return {"symbol": symbol, "provider": provider.name, "days": 0, "quarantined": 0}
    good, bad = checked(provider.daily_bars(symbol, first, last), f"{provider.name}:daily:{symbol}")
    # One row per day, the last bar winning: an upsert may not touch a row twice.
    rows = list({new_york_day(b): {"symbol": b.symbol, "day": new_york_day(b),
                                   **{c: getattr(b, c) for c in BAR_COLUMNS}} for b in good}.values())

    def write(conn: Connection) -> list[Bar]:
        upsert(conn, Ohlcv1d.__table__, rows, keys=("symbol", "day"), updates=BAR_COLUMNS)
        quarantine_rows(conn, bad)
        return good

    store_and_publish(settings, "1d", write)
    return {"symbol": symbol, "provider": provider.name, "days": len(rows), "quarantined": len(bad)}
