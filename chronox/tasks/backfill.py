"""Registry execution as a Celery canvas, and the thin phase tasks it is made of.

Shape of one execution (DESIGN decisions 1 and 5):

    begin(symbols) -> chord(group(flatpack_day(day, symbols_of_day) ...),
                            fanout(per-symbol specs))
    fanout -> group(chain(<per-symbol phases> ..., finalize(symbol)) ...)

The in-process runner executes exactly these signatures, one after another.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import chain, chord, group, signature
from celery.canvas import Signature, _chain

from chronox import backfill
from chronox.celery_app import app
from chronox.settings import load_settings, run_settings
from chronox.tasks.base import ChronoxTask

# Phase -> tasks of a symbol's own chain that run beside the shared day loads, before
# the minute bars are needed (reference data, corporate actions, daily bars).
SYMBOL_PREPARE_TASKS: dict[str, list[str]] = {
    "flatpack": ["chronox.rest.reference", "chronox.rest.corporate_actions", "chronox.rest.daily_bars"],
}
# Phase -> task run in a symbol's chain after the shared day loads, in phase order.
# "flatpack" minute bars are the shared day loads themselves.
SYMBOL_PHASE_TASKS: dict[str, str] = {"api": "chronox.rest.api_gaps", "snapshot": "chronox.rest.snapshot",
                                      "stream": "chronox.phase.stream"}


@app.task(name="chronox.phase.begin", base=ChronoxTask)
def begin(symbols: list[str]) -> dict[str, Any]:
    return backfill.begin_run(load_settings(), symbols)


@app.task(name="chronox.phase.flatpack_day", base=ChronoxTask, bind=True)
def flatpack_day(self: ChronoxTask, day: str, symbols: list[str], expected_rows: int = 0,
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
    def progress(done: int) -> None:
        self.progress(done, max(expected_rows, done))

    return backfill.load_day(run_settings(options), day, symbols, progress=progress)


@app.task(name="chronox.phase.fanout", base=ChronoxTask)
def fanout(specs: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
    group(chain(*symbol_chain(spec, options or {})) for spec in specs).apply_async()
    return {"chains": len(specs)}


@app.task(name="chronox.phase.finalize", base=ChronoxTask)
def finalize(symbol: str, start: str, end: str, days: list[str],
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    return backfill.finalize_symbol(run_settings(options), symbol, start, end, days)


@app.task(name="chronox.publish.drain_outbox", base=ChronoxTask)
def drain_outbox() -> dict[str, Any]:
    return backfill.drain_outbox(load_settings())


def symbol_chain(spec: dict[str, Any], options: dict[str, Any]) -> list[Signature]:
    steps = [_step(SYMBOL_PHASE_TASKS[p], spec, options) for p in spec["phases"] if p in SYMBOL_PHASE_TASKS]
    steps.append(_step(finalize.name, spec, options, days=spec["days"]))
    return steps


def _step(name: str, spec: dict[str, Any], options: dict[str, Any], **extra: Any) -> Signature:
    kwargs = {"symbol": spec["symbol"], "start": spec["start"], "end": spec["end"], **extra}
    if options:  # only when the run overrides settings, so plain runs read as before in Flower
        kwargs["options"] = options
    return signature(name, kwargs=kwargs, immutable=True)


def prepare_chain(spec: dict[str, Any], options: dict[str, Any]) -> list[Signature]:
    return [_step(name, spec, options) for p in spec["phases"] for name in SYMBOL_PREPARE_TASKS.get(p, ())]


def build_stages(plan: backfill.RunPlan) -> tuple[Signature, list[Signature], list[dict[str, Any]]]:
    """(start, header, per-symbol specs): the header runs in parallel before the fan-out."""
    app.loader.import_default_modules()  # every phase's task module registers its tasks
    symbols = [s.symbol for s in plan.symbols]
    specs = [s.as_dict() for s in plan.symbols]
    day_options = {"options": plan.options} if plan.options else {}
    header: list[Signature] = [flatpack_day.si(day=day, symbols=day_symbols, **day_options)
                               for day, day_symbols in plan.days.items()]
    for spec in specs:
        steps = prepare_chain(spec, plan.options)
        if steps:
            header.append(chain(*steps) if len(steps) > 1 else steps[0])
    return begin.si(symbols=symbols), header, specs


def dispatch(plan: backfill.RunPlan) -> str | None:
    """Send the execution to the workers; returns the id of the chord's body, or None."""
    start, header, specs = build_stages(plan)
    if not specs:
        return None
    if header:
        workflow = chain(start, chord(group(header), fanout.si(specs=specs, options=plan.options)))
    else:
        workflow = chain(start, fanout.si(specs=specs, options=plan.options))
    return workflow.apply_async().id


def inline_steps(plan: backfill.RunPlan) -> list[Signature]:
    """The run's signatures in dependency order: what the in-process runner applies."""
    start, header, specs = build_stages(plan)
    if not specs:
        return []
    steps: list[Signature] = [start]
    for item in header:
        # chain(a, b) builds a celery.canvas._chain, which is not an instance of chain
        steps.extend(item.tasks if isinstance(item, _chain) else [item])
    for spec in specs:
        steps.extend(symbol_chain(spec, plan.options))
    return steps


def run_inline(steps: list[Signature], on_step: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Execute the same signatures the workers would, in this process, one after another."""
    results = []
    for step in steps:
        outcome = step.apply()
        if on_step is not None:
            on_step(step.task)
        value = outcome.result
        if outcome.failed():
            value = {"task": step.task, "error": f"{type(value).__name__}: {value}"}
        results.append(value)
    return results


def planned(symbols: list[str] | None, start: str | None, end: str | None, strategy: str | None,
            no_stream: bool = False, timeframe: str | None = None,
            options: dict[str, Any] | None = None) -> backfill.RunPlan:
    return backfill.plan_run(load_settings(), symbols=symbols, start=start, end=end, strategy=strategy,
                             skip_phases=("stream",) if no_stream else (), timeframe=timeframe,
                             options=options)


@app.task(name="chronox.registry.execute", base=ChronoxTask)
def execute(symbols: list[str] | None = None, start: str | None = None, end: str | None = None,
            strategy: str | None = None, no_stream: bool = False, timeframe: str | None = None,
            options: dict[str, Any] | None = None) -> dict[str, Any]:
    plan = planned(symbols, start, end, strategy, no_stream, timeframe, options)
    backfill.schedule(load_settings(), plan)
    return {**plan.as_dict(), "dispatched": dispatch(plan)}


@app.task(name="chronox.backfill", base=ChronoxTask)
def backfill_symbol(symbol: str, start: str | None = None, end: str | None = None,
                    strategy: str | None = None, no_stream: bool = False, timeframe: str | None = None,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    plan = planned([symbol], start, end, strategy, no_stream, timeframe, options)
    backfill.schedule(load_settings(), plan)
    return {**plan.as_dict(), "dispatched": dispatch(plan)}
