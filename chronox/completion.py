"""The end of a symbol's run: status, `last_backfill`, the completion event, summaries.

Consumers of the registry service's events parse the completion event's `strategy`,
`phase`, `timestamp` and `results`; ChronoX events carry those beside their own fields.
`results` is built from run_steps (what each step of the run did) and coverage; a step
that failed shows as failed (`false`, or an `{"error": ...}` object), never as a zero.

A symbol outside the registry (an ad-hoc run with a strategy) gets the same data,
coverage and events; its status lives in run_steps only.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, func, select

from chronox import caches, metrics, registry, store
from chronox.bars import UTC, QuarantinedRow, isoformat_utc
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.models import Coverage, Ohlcv1d, Quarantine, RegistryStatus, SnapshotLatest
from chronox.publish import kafka_status
from chronox.settings import Settings
from chronox.strategy import parse_strategy

FLATPACK = "flatpack"
log = logging.getLogger(__name__)
RUN_STEP = "run"  # run_steps' record of how a symbol's run ended
REST_SKIPPED_STEP = "rest"  # run_steps' record that a run left the REST steps out (no provider)
Steps = dict[str, tuple[str, Any, dt.datetime]]


def record_failure(engine: Engine, symbols: Sequence[str], step: str, message: str, ends_run: bool) -> None:
    """A step failed for good: the error goes on the registry rows and into run_steps;
    `ends_run` when no finalize will follow (the failure stops the symbols' chains)."""
    with engine.begin() as conn:
        registry.fail(conn, symbols, message)
        store.record_steps(conn, symbols, step, "error", message)
        if ends_run:
            store.record_steps(conn, symbols, RUN_STEP, RegistryStatus.ERROR.value, {"error": message})


def record_bad_file(engine: Engine, origin: str, symbols: Sequence[str], step: str, error: Exception,
                    phase: str = "flatpack", provider: str = "polygon", symbol: str | None = None) -> dict[str, Any]:
    """A day file that cannot be read at all (not gzip, truncated, no header): one quarantine
    record names the file, its symbols are in error for `step` (their finalize follows), and
    the task itself succeeds, since the file is what failed. The result's `error` part."""
    message = str(error)
    log.error("%s", message)
    metrics.ingestion_error(phase, "bad_input", provider)
    with engine.begin() as conn:
        store.quarantine_rows(conn, [QuarantinedRow(origin, symbol, "", message)])
    record_failure(engine, symbols, step, message, ends_run=False)
    return {"error": message, "rows": 0, "symbols": len(symbols)}


def _step_value(steps: Steps, step: str, figure: Callable[[Any], Any]) -> Any:
    """A step's figure for `results` when it ran; else {"skipped": why} or {"error": message}."""
    if step in steps:
        outcome, detail, _ = steps[step]
        return figure(detail) if outcome == "ok" else {outcome: detail}
    if REST_SKIPPED_STEP in steps:
        return {"skipped": steps[REST_SKIPPED_STEP][1]}
    return {"error": "the step did not run"}


def legacy_results(symbol: str, phases: Sequence[str], steps: Steps, rows: int,
                   not_loaded: Sequence[str]) -> dict[str, Any]:
    """The registry service's `results` object for one symbol's run."""
    results: dict[str, Any] = {}
    if FLATPACK in phases:
        reference = steps.get("reference") or ("missing", None, None)
        results["reference"] = {symbol: reference[0] == "ok"}
        results["corporate_actions"] = _step_value(
            steps, "corporate_actions", lambda d: {"dividends": d["dividends"], "splits": d["splits"]})
        daily = _step_value(steps, "daily_bars", lambda d: d)
        results["daily_bars"] = {symbol: daily}
    if FLATPACK in phases or "api" in phases:
        failures = [f"day(s) not loaded: {', '.join(not_loaded)}"] if not_loaded else []
        for step in ("minute_bars", "api"):
            if steps.get(step, ("",))[0] == "error":
                failures.append(str(steps[step][1]))
        results["minute_bars"] = {symbol: {"error": "; ".join(failures), "rows": rows} if failures else rows}
    errors = {step: detail for step, (outcome, detail, _) in steps.items() if outcome == "error" and step != RUN_STEP}
    if errors:
        results["errors"] = errors
    return results


def finalize_symbol(settings: Settings, symbol: str, start: str, end: str, days: Sequence[str],
                    strategy: str | None = None, origin: tuple[str, str] | None = None) -> dict[str, Any]:
    """Stamp last_backfill, settle the status and announce completion with counts.

    `strategy` is the run's (the registry's, or an ad-hoc run's); without it the
    registry row's strategy is used.
    """
    engine = get_engine(settings.database_url)
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    try:
        row: registry.RegistryRow | None = registry.get_symbol(engine, symbol)
    except registry.UnknownSymbol:
        row = None  # an ad-hoc run
    with engine.connect() as conn:
        covered = store.coverage_by_day(conn, symbol, first, last)
        quarantined = store.quarantined_count(conn, symbol)
        steps = store.steps_of(conn, [symbol]).get(symbol, {})
    phases = parse_strategy(strategy) if strategy else (row.phases if row else ())
    not_loaded = [d for d in days if dt.date.fromisoformat(d) not in covered]
    newest = max(covered) if covered else None
    previous = row.last_backfill if row else None
    stamp = newest if newest and (previous is None or newest > previous) else None
    failed = [str(detail) for step, (outcome, detail, _) in steps.items() if outcome == "error" and step != RUN_STEP]
    note: registry.Note | None
    if row is not None and row.status == RegistryStatus.ERROR:
        status, note = RegistryStatus.ERROR, registry.Note.error(row.error_message or "failed")
    elif row is None and failed:
        status, note = RegistryStatus.ERROR, registry.Note.error(failed[-1])
    elif not_loaded:
        status, note = RegistryStatus.ERROR, registry.Note.error(f"day(s) not loaded: {', '.join(not_loaded)}")
    else:
        # A warning (REST steps skipped for lack of a key) stays on the completed row.
        status = RegistryStatus.COMPLETED
        warning = row.warning if row else (steps.get(REST_SKIPPED_STEP) or (None, None, None))[1]
        note = registry.Note(registry.NoteKind.WARNING, warning) if warning else None
    rows = int(sum(covered.values()))
    now = dt.datetime.now(UTC)
    summary = {
        "event": "backfill_completed",
        "symbol": symbol,
        "start": start,
        "end": end,
        "status": status.value,
        "days": len(covered),
        "rows": rows,
        "quarantined": quarantined,
        "last_backfill": str(stamp or previous or newest or "") or None,
        "version": "v1",
        # the registry service's fields
        "strategy": "+".join(phases),
        "phase": "completed",
        "timestamp": isoformat_utc(now),
        "results": legacy_results(symbol, phases, steps, rows, not_loaded),
        # where the symbol trades and who served it: the registry's, or an ad-hoc run's
        "market": (row.instrument.origin if row else origin or ("stocks", "polygon"))[0],
        "provider": (row.instrument.origin if row else origin or ("stocks", "polygon"))[1],
    }
    if note:
        summary["error" if status == RegistryStatus.ERROR else "warning"] = note.text
    with engine.begin() as conn:
        registry.set_status(conn, [symbol], status, note, last_backfill=stamp)
        store.record_steps(conn, [symbol], RUN_STEP, status.value, {
            "last_backfill": summary["last_backfill"], "rows": rows, "note": note.text if note else None})
    caches.write_through(settings, [symbol])  # the run's bars are committed: the charts' documents
    delivery = Delivery(settings, engine)
    if settings.kafka_enabled and not delivery.kafka_first:
        delivery.drain_outbox([(symbol, dt.date.fromisoformat(d), FLATPACK) for d in days])
    delivery.announce("backfill", symbol, summary)
    return summary


def finalize_symbols(settings: Settings, symbols: Sequence[str], start: str, end: str,
                     days: Sequence[str], strategy: str | None = None,
                     origin: tuple[str, str] | None = None) -> dict[str, Any]:
    """finalize_symbol for symbols sharing one window; a rerun after a failure redoes all,
    which is harmless: finalize is idempotent."""
    finished = [finalize_symbol(settings, symbol, start, end, days, strategy, origin) for symbol in symbols]
    return {"symbols": len(finished), "status": dict(sorted(Counter(f["status"] for f in finished).items())),
            "rows": sum(f["rows"] for f in finished)}


def settled(engine: Engine, symbols: Sequence[str], since: dt.datetime) -> dict[str, str]:
    """Symbols whose run ended after `since` (registered or ad-hoc): symbol -> completed|error."""
    with engine.connect() as conn:
        steps = store.steps_of(conn, symbols)
    return {s: outcome for s, by_step in steps.items()
            for outcome, _, at in [by_step.get(RUN_STEP, ("", None, since - dt.timedelta(1)))] if at >= since}


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
        steps = store.steps_of(conn, symbols)
    per_symbol: dict[str, dict[str, int]] = defaultdict(dict)
    for symbol, day, rows in coverage:
        per_symbol[symbol][day.isoformat()] = int(rows)
    out: dict[str, dict[str, Any]] = {}
    for r in registry.list_symbols(engine, symbols=list(symbols)):
        out[r.symbol] = {"status": r.status.value, "error": r.error, "warning": r.warning,
                         "last_backfill": r.last_backfill.isoformat() if r.last_backfill else None}
    for symbol in symbols:
        if symbol not in out:  # ad-hoc: what its run recorded
            outcome, detail, _ = steps.get(symbol, {}).get(RUN_STEP) or ("idle", {}, None)
            note = (detail or {}).get("note")
            is_error = outcome == RegistryStatus.ERROR
            out[symbol] = {"status": outcome, "error": (detail or {}).get("error") or note if is_error else None,
                           "warning": None if is_error else note,
                           "last_backfill": (detail or {}).get("last_backfill"), "registered": False}
    return {
        "symbols": {symbol: {**info, "rows_per_day": per_symbol.get(symbol, {}),
                             "quarantined": quarantined.get(symbol, 0)} for symbol, info in sorted(out.items())},
        "quarantined_total": sum(quarantined.values()),
        "kafka": kafka_status(settings),
    }


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
