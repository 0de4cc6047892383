"""Planning and executing registry runs: which symbols, phases and day files; no Celery here.

Tasks in chronox.tasks call these functions with plain JSON arguments.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kafka.errors import KafkaError
from sqlalchemy import func, select

from chronox import registry
from chronox.calendar import trading_days
from chronox.db import get_engine
from chronox.models import Coverage, Quarantine
from chronox.publish import PublishError, announce, drop_publisher, get_publisher, kafka_status
from chronox.rest import SKIP_WARNING, is_warning
from chronox.settings import Settings, validate_run_options
from chronox.sources.flatfiles import DayFileReader, FlatFileError, FlatFileStore, QuarantinedRow
from chronox.store import load_flat_day, outbox_size, publish_outbox_entries, quarantine_rows
from chronox.strategy import InvalidInput, parse_day, parse_strategy, validate_symbol, validate_timeframe

log = logging.getLogger(__name__)


@dataclass
class SymbolPlan:
    symbol: str
    phases: list[str]
    start: str
    end: str
    days: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunPlan:
    symbols: list[SymbolPlan]
    days: dict[str, list[str]]  # ISO day -> symbols loading that day file
    missing_files: list[str]  # trading days with no file although a later file exists
    unpublished: list[str]  # trading days after the newest published file
    newest_file_day: str | None
    options: dict[str, Any] = field(default_factory=dict)  # run overrides of settings (RUN_OPTIONS)

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbols": [s.as_dict() for s in self.symbols],
            "days": self.days,
            "missing_files": self.missing_files,
            "unpublished": self.unpublished,
            "newest_file_day": self.newest_file_day,
            "options": self.options,
        }

    def describe(self) -> str:
        lines = [f"{len(self.symbols)} symbol(s), {len(self.days)} day file(s)"]
        if self.options:
            lines.append("options " + ", ".join(f"{k}={v}" for k, v in sorted(self.options.items())))
        if self.newest_file_day:
            lines.append(f"flat files available up to {self.newest_file_day}")
        if self.unpublished:
            lines.append(f"not yet published by Polygon (skipped): {', '.join(self.unpublished)}")
        if self.missing_files:
            lines.append(f"missing day files (recorded as gaps): {', '.join(self.missing_files)}")
        return "; ".join(lines)


def plan_run(settings: Settings, symbols: Sequence[str] | None = None,
             start: str | dt.date | None = None, end: str | dt.date | None = None,
             strategy: str | None = None, today: dt.date | None = None,
             store: FlatFileStore | None = None, skip_phases: Sequence[str] = (),
             timeframe: str | None = None, options: dict[str, Any] | None = None) -> RunPlan:
    """Decide the work of one registry execution; raises InvalidInput for bad arguments.

    skip_phases drops phases from every symbol (`--no-stream`); a symbol left with no
    phase is not part of the run. timeframe keeps the symbols registered at it.
    """
    engine = get_engine(settings.database_url)
    start_day, end_day = parse_day(start, "start"), parse_day(end, "end")
    if start_day and end_day and start_day > end_day:
        raise InvalidInput(f"start {start_day} is after end {end_day}")
    override = list(parse_strategy(strategy)) if strategy else None
    timeframe = validate_timeframe(timeframe) if timeframe is not None else None
    checked_options = validate_run_options(options)
    if symbols:
        wanted = [validate_symbol(s) for s in symbols]
        rows = registry.list_symbols(engine, symbols=wanted)
        unknown = sorted(set(wanted) - {r["symbol"] for r in rows})
        if unknown:
            raise InvalidInput(f"not registered: {', '.join(unknown)} (add with `chronox symbols add`)")
    else:
        rows = registry.list_symbols(engine, enabled_only=True)
    today = today or dt.date.today()
    end_day = end_day or today
    store = store or FlatFileStore(settings)
    plans: list[SymbolPlan] = []
    wanted_days: dict[str, set[dt.date]] = {}
    for row in rows:
        if timeframe is not None and row["timeframe"] != timeframe:
            continue
        phases = [p for p in override or parse_strategy(row["strategy"]) if p not in skip_phases]
        if not phases:
            continue
        if start_day:
            first = start_day
        elif row["last_backfill"]:
            first = dt.date.fromisoformat(row["last_backfill"]) + dt.timedelta(days=1)
        else:
            first = settings.default_backfill_start(today)
            if end is not None and end_day < first:
                # Planning it would "complete" a run that did nothing.
                raise InvalidInput(f"end {end_day} is before {row['symbol']}'s default start {first} "
                                   "(CHRONOX_BACKFILL_START or 30 days back); pass --start as well")
        plans.append(SymbolPlan(row["symbol"], phases, first.isoformat(), end_day.isoformat()))
        if "flatpack" in phases and first <= end_day:
            wanted_days[row["symbol"]] = set(trading_days(first, end_day))
    all_days = sorted(set().union(*wanted_days.values())) if wanted_days else []
    available = [d for d in all_days if store.exists(d)]
    newest = max(available) if available else None
    available_set = set(available)
    missing = [d for d in all_days if d not in available_set and newest and d < newest]
    unpublished = [d for d in all_days if newest is None or d > newest]
    days: dict[str, list[str]] = defaultdict(list)
    for plan in plans:
        for day in sorted(wanted_days.get(plan.symbol, set()) & available_set):
            plan.days.append(day.isoformat())
            days[day.isoformat()].append(plan.symbol)
    return RunPlan(plans, dict(sorted(days.items())), [d.isoformat() for d in missing],
                   [d.isoformat() for d in unpublished], newest.isoformat() if newest else None,
                   checked_options)


def begin_run(settings: Settings, symbols: Sequence[str], rest_skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Mark the run's symbols running; those whose REST steps the run leaves out (no
    provider) carry the skip warning, which finalize keeps on the completed row."""
    engine = get_engine(settings.database_url)
    skipped = set(rest_skipped)
    registry.set_status(engine, [s for s in symbols if s not in skipped], "running")
    result: dict[str, Any] = {"running": len(symbols)}
    if skipped:
        registry.set_status(engine, [s for s in symbols if s in skipped], "running", error_message=SKIP_WARNING)
        log.warning("REST steps of %d symbol(s) left out: %s", len(skipped), SKIP_WARNING)
        result.update(step="REST steps", symbols=sorted(skipped), skipped=SKIP_WARNING)
    return result


def load_day(settings: Settings, day: str, symbols: Sequence[str],
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Read one day file once and load it for every given symbol (DESIGN decision 1).

    A broken file quarantines one record for the whole file and marks its symbols in
    error; transient failures (database, Kafka, S3 connection) propagate for a retry.
    """
    engine = get_engine(settings.database_url)
    the_day = dt.date.fromisoformat(day)
    store = FlatFileStore(settings)
    origin = store.location(the_day)
    # db-first commits before it talks to Kafka, so an unreachable Kafka cannot block the load.
    publisher = get_publisher(settings) if settings.publish_mode == "kafka-first" else None
    try:
        with store.open(the_day) as raw:
            reader = DayFileReader(raw, the_day, symbols, origin)
            result = load_flat_day(engine, reader, symbols, publisher=publisher,
                                   record_outbox=settings.kafka_enabled and settings.publish_mode == "db-first",
                                   progress=progress)
    except FlatFileError as exc:
        log.error("%s", exc)
        with engine.begin() as conn:
            quarantine_rows(conn, [QuarantinedRow(origin, None, "", str(exc))])
        registry.set_status(engine, list(symbols), "error", error_message=str(exc))
        return {"day": day, "error": str(exc), "rows": 0, "symbols": len(symbols)}
    except PublishError:
        drop_publisher(settings)
        raise
    summary = result.as_dict()
    if settings.publish_mode == "db-first" and settings.kafka_enabled:
        summary["published"] = _drain(settings, [(s, the_day, "flatpack") for s, n in result.rows.items() if n])
    return summary


def _drain(settings: Settings, entries: list[tuple[str, dt.date, str]] | None) -> int:
    """db-first: bars are already committed; a Kafka outage leaves them in the outbox."""
    try:
        publisher = get_publisher(settings)
        if publisher is None:
            return 0
        return publish_outbox_entries(get_engine(settings.database_url), publisher, entries)
    except (PublishError, KafkaError) as exc:
        drop_publisher(settings)
        log.warning("Kafka unavailable, %s symbol-day(s) stay in the publish outbox: %s",
                    "all" if entries is None else len(entries), exc)
        return 0


def drain_outbox(settings: Settings) -> dict[str, Any]:
    """Publish every symbol-day still in the outbox (db-first mode after a Kafka outage)."""
    if not settings.kafka_enabled:
        return {"published": 0, "kafka": kafka_status(settings)}
    published = _drain(settings, None)
    return {"published": published, "pending": outbox_size(get_engine(settings.database_url))}


def finalize_symbol(settings: Settings, symbol: str, start: str, end: str,
                    days: Sequence[str]) -> dict[str, Any]:
    """Stamp last_backfill, settle the status and announce completion with counts."""
    engine = get_engine(settings.database_url)
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    with engine.connect() as conn:
        covered = dict(conn.execute(
            select(Coverage.trading_day, func.sum(Coverage.rows))
            .where(Coverage.symbol == symbol, Coverage.trading_day >= first,
                   Coverage.trading_day <= last)
            .group_by(Coverage.trading_day)).all())
        quarantined = conn.execute(select(func.count()).select_from(Quarantine)
                                   .where(Quarantine.symbol == symbol)).scalar_one()
    row = registry.get_symbol(engine, symbol)
    not_loaded = [d for d in days if dt.date.fromisoformat(d) not in covered]
    newest = max(covered) if covered else None
    stamps: dict[str, Any] = {}
    previous = row["last_backfill"]
    if newest and (previous is None or newest > dt.date.fromisoformat(previous)):
        stamps["last_backfill"] = newest
    if row["status"] == "error":
        status, message = "error", row["error_message"]
    elif not_loaded:
        status, message = "error", f"day(s) not loaded: {', '.join(not_loaded)}"
    else:
        # A warning (REST steps skipped for lack of a key) stays on the completed row.
        warning = row["error_message"] if is_warning(row["error_message"]) else None
        status, message = "completed", warning
    registry.set_status(engine, [symbol], status, error_message=message, **stamps)
    summary = {
        "event": "backfill_completed",
        "symbol": symbol,
        "start": start,
        "end": end,
        "status": status,
        "days": len(covered),
        "rows": int(sum(covered.values())),
        "quarantined": quarantined,
        "last_backfill": str(stamps.get("last_backfill") or previous or newest or "") or None,
        "version": "v1",
    }
    if message:
        summary["error" if status == "error" else "warning"] = message
    if settings.publish_mode == "db-first" and settings.kafka_enabled:
        _drain(settings, [(symbol, dt.date.fromisoformat(d), "flatpack") for d in days])
    announce(settings, "backfill", symbol, summary)
    return summary


def finalize_symbols(settings: Settings, symbols: Sequence[str], start: str, end: str,
                     days: Sequence[str]) -> dict[str, Any]:
    """finalize_symbol for symbols sharing one window; a rerun after a failure redoes all,
    which is harmless: finalize is idempotent."""
    finished = [finalize_symbol(settings, symbol, start, end, days) for symbol in symbols]
    return {"symbols": len(finished), "status": dict(sorted(Counter(f["status"] for f in finished).items())),
            "rows": sum(f["rows"] for f in finished)}


def run_summary(settings: Settings, symbols: Sequence[str]) -> dict[str, Any]:
    """Rows per symbol and day, quarantine counts and Kafka status, for people to read."""
    engine = get_engine(settings.database_url)
    with engine.connect() as conn:
        coverage = conn.execute(select(Coverage.symbol, Coverage.trading_day, func.sum(Coverage.rows))
                                .where(Coverage.symbol.in_(list(symbols)))
                                .group_by(Coverage.symbol, Coverage.trading_day)
                                .order_by(Coverage.symbol, Coverage.trading_day)).all()
        quarantined = dict(conn.execute(select(Quarantine.symbol, func.count())
                                        .group_by(Quarantine.symbol)).all())
    per_symbol: dict[str, dict[str, int]] = defaultdict(dict)
    for symbol, day, rows in coverage:
        per_symbol[symbol][day.isoformat()] = int(rows)
    rows = registry.list_symbols(engine, symbols=list(symbols))
    return {
        "symbols": {
            r["symbol"]: {"status": r["status"],
                          "error": None if is_warning(r["error_message"]) else r["error_message"],
                          "warning": r["error_message"] if is_warning(r["error_message"]) else None,
                          "last_backfill": r["last_backfill"],
                          "rows_per_day": per_symbol.get(r["symbol"], {}),
                          "quarantined": quarantined.get(r["symbol"], 0)}
            for r in rows
        },
        "quarantined_total": sum(quarantined.values()),
        "kafka": kafka_status(settings),
    }


def schedule(settings: Settings, plan: RunPlan) -> None:
    registry.set_status(get_engine(settings.database_url), [s.symbol for s in plan.symbols], "scheduled")
