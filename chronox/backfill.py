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

from sqlalchemy import Engine, func, select

from chronox import registry, store
from chronox.bars import QuarantinedRow, isoformat_utc
from chronox.calendar import day_bounds_utc, trading_days
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.models import Coverage, Ohlcv1d, Quarantine, RegistryStatus, SnapshotLatest
from chronox.providers import SKIP_DETAIL
from chronox.publish import kafka_status
from chronox.settings import Settings, validate_run_options
from chronox.sources.flatfiles import DayFileReader, DayFileRows, FlatFileError, FlatFileStore
from chronox.strategy import InvalidInput, parse_day, parse_strategy, validate_symbol, validate_timeframe

log = logging.getLogger(__name__)

FLATPACK = "flatpack"  # the source name of day-file bars


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
        unknown = sorted(set(wanted) - {r.symbol for r in rows})
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
        if timeframe is not None and row.timeframe != timeframe:
            continue
        phases = [p for p in override or row.phases if p not in skip_phases]
        if not phases:
            continue
        if start_day:
            first = start_day
        elif row.last_backfill:
            first = row.last_backfill + dt.timedelta(days=1)
        else:
            first = settings.default_backfill_start(today)
            if end is not None and end_day < first:
                # Planning it would "complete" a run that did nothing.
                raise InvalidInput(f"end {end_day} is before {row.symbol}'s default start {first} "
                                   "(CHRONOX_BACKFILL_START or 30 days back); pass --start as well")
        plans.append(SymbolPlan(row.symbol, phases, first.isoformat(), end_day.isoformat()))
        if "flatpack" in phases and first <= end_day:
            wanted_days[row.symbol] = set(trading_days(first, end_day))
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
    registry.set_status(engine, [s for s in symbols if s not in skipped], RegistryStatus.RUNNING)
    result: dict[str, Any] = {"running": len(symbols)}
    if skipped:
        note = registry.Note.warning(SKIP_DETAIL)
        registry.set_status(engine, [s for s in symbols if s in skipped], RegistryStatus.RUNNING, note)
        log.warning("REST steps of %d symbol(s) left out: %s", len(skipped), note.text)
        result.update(step="REST steps", symbols=sorted(skipped), skipped=note.text)
    return result


@dataclass
class DayLoadResult:
    day: dt.date
    rows: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    duplicates: int = 0
    published: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "rows": sum(self.rows.values()),
            "symbols": len(self.rows),
            "quarantined": self.quarantined,
            "duplicates": self.duplicates,
            "published": self.published,
        }


def load_flat_day(delivery: Delivery, reader: DayFileReader, symbols: Sequence[str],
                  source: str = FLATPACK) -> DayLoadResult:
    """Replace the symbol-days of `symbols` on reader.day with the file's rows, atomically.

    One transaction: the bars, coverage, quarantine and (db-first) the outbox commit
    together or not at all, so a file that turns out to be truncated half-way loads
    nothing. The delivery publishes the bars in publish-mode order.
    """
    day = reader.day
    result = DayLoadResult(day=day)
    with delivery.transaction() as out:
        store.lock_day(out.conn, day)
        rows = out.tap(DayFileRows(reader, source), store.TIMEFRAME, source)
        store.replace_day(out.conn, rows, symbols, *day_bounds_utc(day))
        stats = reader.stats
        result.rows = {s: stats.rows_kept.get(s, 0) for s in symbols}
        result.duplicates = stats.duplicates
        result.quarantined = store.quarantine_rows(out.conn, stats.quarantined)
        store.cover_day(out.conn, day, result.rows, source)
        out.symbol_days([(s, day, source) for s, n in result.rows.items() if n])
    result.published = out.published
    return result


def load_day(settings: Settings, day: str, symbols: Sequence[str],
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Read one day file once and load it for every given symbol (DESIGN decision 1).

    A broken file quarantines one record for the whole file and marks its symbols in
    error; transient failures (database, Kafka, S3 connection) propagate for a retry.
    """
    engine = get_engine(settings.database_url)
    the_day = dt.date.fromisoformat(day)
    files = FlatFileStore(settings)
    origin = files.location(the_day)
    try:
        with files.open(the_day) as raw:
            reader = DayFileReader(raw, the_day, symbols, origin, progress=progress)
            result = load_flat_day(Delivery(settings, engine), reader, symbols)
    except FlatFileError as exc:
        log.error("%s", exc)
        with engine.begin() as conn:
            store.quarantine_rows(conn, [QuarantinedRow(origin, None, "", str(exc))])
            registry.fail(conn, list(symbols), str(exc))
        return {"day": day, "error": str(exc), "rows": 0, "symbols": len(symbols)}
    return result.as_dict()


def drain_outbox(settings: Settings) -> dict[str, Any]:
    """Publish every symbol-day still in the outbox (db-first mode after a Kafka outage)."""
    if not settings.kafka_enabled:
        return {"published": 0, "kafka": kafka_status(settings)}
    delivery = Delivery(settings)
    published = delivery.drain_outbox()
    with delivery.engine.connect() as conn:
        return {"published": published, "pending": store.outbox_size(conn)}


def finalize_symbol(settings: Settings, symbol: str, start: str, end: str,
                    days: Sequence[str]) -> dict[str, Any]:
    """Stamp last_backfill, settle the status and announce completion with counts."""
    engine = get_engine(settings.database_url)
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    with engine.connect() as conn:
        covered = store.coverage_by_day(conn, symbol, first, last)
        quarantined = store.quarantined_count(conn, symbol)
    row = registry.get_symbol(engine, symbol)
    not_loaded = [d for d in days if dt.date.fromisoformat(d) not in covered]
    newest = max(covered) if covered else None
    previous = row.last_backfill
    stamp = newest if newest and (previous is None or newest > previous) else None
    note: registry.Note | None
    if row.status == RegistryStatus.ERROR:
        status, note = RegistryStatus.ERROR, registry.Note.error(row.error_message or "failed")
    elif not_loaded:
        status, note = RegistryStatus.ERROR, registry.Note.error(f"day(s) not loaded: {', '.join(not_loaded)}")
    else:
        # A warning (REST steps skipped for lack of a key) stays on the completed row.
        status = RegistryStatus.COMPLETED
        note = registry.Note(registry.NoteKind.WARNING, row.warning) if row.warning else None
    registry.set_status(engine, [symbol], status, note, last_backfill=stamp)
    summary = {
        "event": "backfill_completed",
        "symbol": symbol,
        "start": start,
        "end": end,
        "status": status.value,
        "days": len(covered),
        "rows": int(sum(covered.values())),
        "quarantined": quarantined,
        "last_backfill": str(stamp or previous or newest or "") or None,
        "version": "v1",
    }
    if note:
        summary["error" if status == RegistryStatus.ERROR else "warning"] = note.text
    delivery = Delivery(settings, engine)
    if settings.kafka_enabled and not delivery.kafka_first:
        delivery.drain_outbox([(symbol, dt.date.fromisoformat(d), FLATPACK) for d in days])
    delivery.announce("backfill", symbol, summary)
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
        quarantined: dict[str | None, int] = {s: n for s, n in conn.execute(
            select(Quarantine.symbol, func.count()).group_by(Quarantine.symbol))}
    per_symbol: dict[str, dict[str, int]] = defaultdict(dict)
    for symbol, day, rows in coverage:
        per_symbol[symbol][day.isoformat()] = int(rows)
    registered = registry.list_symbols(engine, symbols=list(symbols))
    return {
        "symbols": {
            r.symbol: {"status": r.status.value, "error": r.error, "warning": r.warning,
                       "last_backfill": r.last_backfill.isoformat() if r.last_backfill else None,
                       "rows_per_day": per_symbol.get(r.symbol, {}),
                       "quarantined": quarantined.get(r.symbol, 0)}
            for r in registered
        },
        "quarantined_total": sum(quarantined.values()),
        "kafka": kafka_status(settings),
    }


def schedule(settings: Settings, plan: RunPlan) -> None:
    registry.set_status(get_engine(settings.database_url), [s.symbol for s in plan.symbols],
                        RegistryStatus.SCHEDULED)


def rest_extras(engine: Engine) -> dict[str, Any]:
    """What the REST phases stored, per symbol: api gap days, daily bars, the latest snapshot."""
    with engine.connect() as conn:
        api_days = {s: n for s, n in conn.execute(select(Coverage.symbol, func.count()).where(Coverage.source == "api")
                                                  .group_by(Coverage.symbol).order_by(Coverage.symbol))}
        daily = {s: n for s, n in conn.execute(select(Ohlcv1d.symbol, func.count()).group_by(Ohlcv1d.symbol)
                                               .order_by(Ohlcv1d.symbol))}
        snaps = conn.execute(select(SnapshotLatest).order_by(SnapshotLatest.symbol)).all()
    return {"api_days": api_days, "daily_bars": daily,
            "snapshots": [{"symbol": s.symbol, "price": s.price, "ts": isoformat_utc(s.ts), "method": s.method}
                          for s in snaps]}
