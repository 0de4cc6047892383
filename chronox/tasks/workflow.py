"""A registry execution as a Celery canvas of task names (DESIGN decisions 1 and 5).

Shape of one execution:

    begin(symbols) -> chord(group(flatpack_day(day, symbols_of_day) ...,
                                  chain(<symbol's REST prepare steps>) ...),
                            fanout(symbol specs, grouped by identical window))
    fanout -> group(chain(<per-symbol phases> ..., finalize(symbol)) ...,
                    finalize_batch(up to 25 symbols without phases of their own) ...)

Without a REST provider (no POLYGON_API_KEY, no replay) the REST steps are left out of
the canvas and begin notes the skip once on the registry rows: hundreds of tasks that
would each only say "skipped" cost more than the whole run's real work.

Signatures name their tasks, so building a canvas imports no task module; the
in-process runner (chronox.runner) applies exactly these signatures in order.
"""
from __future__ import annotations

from typing import Any

from celery import chain, chord, group, signature
from celery.canvas import Signature, _chain

from chronox import backfill
from chronox.markets import Instrument, Market, ProviderId
from chronox.providers import needs_key, provider_configured
from chronox.settings import load_settings, run_settings
from chronox.sources.flatfiles import US_STOCKS
from chronox.ticks import BY_FILE_DATASET

BACKFILL = "chronox.backfill"
BEGIN = "chronox.phase.begin"
FLATPACK_DAY = "chronox.phase.flatpack_day"
FANOUT = "chronox.phase.fanout"
FINALIZE = "chronox.phase.finalize"
FINALIZE_BATCH_TASK = "chronox.phase.finalize_batch"

# Phase -> tasks of a symbol's own chain that run beside the shared day loads, before
# the minute bars are needed (reference data, corporate actions, daily bars).
SYMBOL_PREPARE_TASKS: dict[str, list[str]] = {
    "flatpack": ["chronox.rest.reference", "chronox.rest.corporate_actions", "chronox.rest.daily_bars"],
}
# Phase -> task run in a symbol's chain after the shared day loads, in phase order.
# "flatpack" minute bars are the shared day loads themselves.
SYMBOL_PHASE_TASKS: dict[str, str] = {"api": "chronox.rest.api_gaps", "snapshot": "chronox.rest.snapshot",
                                      "stream": "chronox.phase.stream", "news": "chronox.rest.news"}
# Ticks (chronox.tasks.ticks): a day file per dataset and day in the chord header like the
# minute bars', and in each symbol's chain the REST fill of the days no file covered.
TICK_DAY = "chronox.ticks.day"
TICK_GAPS = {"trades": "chronox.ticks.trades_gaps", "quotes": "chronox.ticks.quotes_gaps"}
TICK_REST_DAY = "chronox.ticks.rest_day"
SYMBOL_PHASE_TASKS.update(TICK_GAPS)
# Phases whose tasks talk to a provider's REST API.
REST_PHASES = frozenset({"api", "snapshot", "news", *TICK_GAPS} | set(SYMBOL_PREPARE_TASKS))
# Task -> the step it records in run_steps (the completion event's `results` keys).
STEP_OF_TASK = {"chronox.rest.reference": "reference", "chronox.rest.corporate_actions": "corporate_actions",
                "chronox.rest.daily_bars": "daily_bars", "chronox.rest.api_gaps": "api",
                "chronox.rest.api_window": "api", "chronox.rest.snapshot": "snapshot", FLATPACK_DAY: "minute_bars",
                "chronox.phase.stream": "stream", "chronox.rest.news": "news", TICK_DAY: "ticks",
                TICK_REST_DAY: "ticks", **{task: dataset for dataset, task in TICK_GAPS.items()}}
# Symbols whose chain would be finalize alone are finalized this many to a task: a task
# costs a worker several milliseconds of messaging, a finalize about five of real work.
FINALIZE_BATCH = 25


def step_of_task(name: str) -> str:
    return STEP_OF_TASK.get(name, name)


def planned(symbols: list[str] | None = None, start: str | None = None, end: str | None = None,
            strategy: str | None = None, no_stream: bool = False, timeframe: str | None = None,
            options: dict[str, Any] | None = None, range: str | None = None, market: str | None = None,
            provider: str | None = None, provider_symbol: str | None = None) -> backfill.RunPlan:
    """The plan of a request with the kwargs of chronox.registry.execute (`range`: a preset
    such as 1Y standing for its start day; `market` keeps one market's symbols and, with
    `provider` and `provider_symbol`, says what unregistered symbols are)."""
    return backfill.plan_run(load_settings(), symbols=symbols, start=start, end=end, strategy=strategy,
                             skip_phases=("stream",) if no_stream else (), timeframe=timeframe,
                             options=options, range_=range, market=market, provider=provider,
                             provider_symbol=provider_symbol)


def execute(**request: Any) -> dict[str, Any]:
    """Plan a request, mark its symbols scheduled, send the canvas: what execute and backfill tasks return."""
    plan = planned(**request)
    backfill.schedule(load_settings(), plan)
    return {**plan.as_dict(), "dispatched": dispatch(plan)}


def send_backfill(symbol: str, start: str, end: str, strategy: str | None = None) -> None:
    """Queue `chronox.backfill` for one symbol, as `celery call` would."""
    kwargs = {"start": start, "end": end, **({"strategy": strategy} if strategy else {})}
    signature(BACKFILL, args=[symbol], kwargs=kwargs).apply_async()


def send_execution(symbols: list[str], start: str, end: str) -> None:
    """Queue `chronox.registry.execute` for `symbols` over start..end, stream phase left out
    (the ETL beat jobs' runs: their symbols are activated by their own runs)."""
    signature("chronox.registry.execute", kwargs={"symbols": symbols, "start": start, "end": end,
                                                  "no_stream": True}).apply_async()


def rest_available(options: dict[str, Any]) -> bool:
    return provider_configured(run_settings(options))


def with_options(kwargs: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    # Only when the run overrides settings, so plain runs read as before in Flower.
    return {**kwargs, "options": options} if options else kwargs


def _step(name: str, spec: dict[str, Any], options: dict[str, Any], **extra: Any) -> Signature:
    kwargs = {"symbol": spec["symbol"], "start": spec["start"], "end": spec["end"], **extra}
    if name in TAKES_INSTRUMENT:
        kwargs.update(_instrument(spec).as_kwargs())
    if name in TAKES_STRATEGY:
        kwargs["strategy"] = "+".join(spec["phases"])
    if name in TAKES_TIMEFRAME and spec.get("timeframe", "1m") != "1m":
        kwargs["timeframe"] = spec["timeframe"]
    return signature(name, kwargs=with_options(kwargs, options), immutable=True)


# Steps whose events name the run's strategy (the registry service's `strategy` field).
TAKES_STRATEGY = frozenset({"chronox.rest.snapshot", "chronox.phase.stream", FINALIZE})
# Steps that ask the symbol's provider (market, provider, provider_symbol passed unless a US stock from Polygon).
TAKES_INSTRUMENT = frozenset({*SYMBOL_PREPARE_TASKS["flatpack"], "chronox.rest.api_gaps", "chronox.rest.snapshot",
                              FINALIZE})
# Steps whose work depends on the symbol's timeframe (passed when it is not 1m).
TAKES_TIMEFRAME = frozenset({"chronox.rest.api_gaps"})


def _instrument(spec: dict[str, Any]) -> Instrument:
    return Instrument(spec["symbol"], Market(spec.get("market", Market.STOCKS)),
                      ProviderId(spec.get("provider", ProviderId.POLYGON)), spec.get("provider_symbol"))


def _rest_for(spec: dict[str, Any], with_rest: bool) -> bool:
    """`with_rest` says whether Polygon's REST steps can run (a key or the replay provider)."""
    return with_rest or not needs_key(_instrument(spec))


def symbol_chain(spec: dict[str, Any], options: dict[str, Any], with_rest: bool = True) -> list[Signature]:
    with_rest = _rest_for(spec, with_rest)
    names = [SYMBOL_PHASE_TASKS[p] for p in spec["phases"]
             if p in SYMBOL_PHASE_TASKS and (with_rest or p not in REST_PHASES)]
    steps = [_step(name, spec, options) for name in names]
    steps.append(_step(FINALIZE, spec, options, days=spec["days"]))
    return steps


def prepare_chain(spec: dict[str, Any], options: dict[str, Any], with_rest: bool = True) -> list[Signature]:
    if not _rest_for(spec, with_rest):
        return []
    return [_step(name, spec, options) for p in spec["phases"] for name in SYMBOL_PREPARE_TASKS.get(p, ())]


def rest_skipped(plan: backfill.RunPlan, with_rest: bool) -> list[str]:
    """Symbols whose phases have REST steps that this run leaves out."""
    return [s.symbol for s in plan.symbols
            if REST_PHASES & set(s.phases) and not _rest_for(s.as_dict(), with_rest)]


def compact_specs(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Symbol specs grouped by identical phases and window.

    Celery copies a chord's body into the message of every header task, so the fan-out's
    arguments travel once per day file and prepare chain: a few bytes per symbol instead
    of a whole spec keeps that from growing with symbols squared.
    """
    groups: dict[str, dict[str, Any]] = {}
    for spec in specs:
        shape = {k: v for k, v in spec.items() if k != "symbol"}
        key = repr(sorted(shape.items()))
        groups.setdefault(key, {**shape, "symbols": []})["symbols"].append(spec["symbol"])
    return list(groups.values())


def expand_specs(spec_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"symbol": symbol, **{k: v for k, v in shape.items() if k != "symbols"}}
            for shape in spec_groups for symbol in shape["symbols"]]


def tail_signatures(spec_groups: list[dict[str, Any]], options: dict[str, Any],
                    with_rest: bool) -> list[Signature]:
    """What runs after the day loads: a chain per symbol with phases of its own, and
    batched finalizes for the symbols that have none."""
    tails: list[Signature] = []
    for shape in spec_groups:
        alone: list[Signature] = []  # finalize(symbol) of symbols with nothing else to do
        for spec in expand_specs([shape]):
            steps = symbol_chain(spec, options, with_rest)
            if len(steps) == 1:
                alone.extend(steps)
            else:
                tails.append(chain(*steps))
        for i in range(0, len(alone), FINALIZE_BATCH):
            batch = alone[i:i + FINALIZE_BATCH]
            if len(batch) == 1:
                tails.extend(batch)
            else:
                window = {"start": shape["start"], "end": shape["end"], "days": shape["days"],
                          "strategy": "+".join(shape["phases"]),
                          **{k: v for k, v in _instrument({**shape, "symbol": ""}).as_kwargs().items()
                             if k != "provider_symbol"}}
                tails.append(signature(FINALIZE_BATCH_TASK, immutable=True, kwargs=with_options(
                    {"symbols": [step.kwargs["symbol"] for step in batch], **window}, options)))
    return tails


def fan_out(spec_groups: list[dict[str, Any]], options: dict[str, Any] | None) -> dict[str, Any]:
    """Send the per-symbol tails of a run; the fan-out task's whole work."""
    tails = tail_signatures(spec_groups, options or {}, rest_available(options or {}))
    group(tails).apply_async()
    return {"symbols": sum(len(g["symbols"]) for g in spec_groups), "tasks_sent": len(tails)}


def flatten(item: Signature) -> list[Signature]:
    """The task signatures of a canvas item in order; chain(a, b) builds a
    celery.canvas._chain, which is not an instance of chain."""
    return list(item.tasks) if isinstance(item, _chain) else [item]


def build_stages(plan: backfill.RunPlan) -> tuple[Signature, list[Signature], list[dict[str, Any]]]:
    """(start, header, per-symbol specs): the header runs in parallel before the fan-out."""
    with_rest = rest_available(plan.options)
    symbols = [s.symbol for s in plan.symbols]
    specs = [s.as_dict() for s in plan.symbols]
    coarse = {s.symbol: s.timeframe for s in plan.symbols if s.timeframe != "1m"}
    header: list[Signature] = [
        signature(TICK_DAY, immutable=True, kwargs=with_options(
            {"dataset": BY_FILE_DATASET[dataset].name, "day": day, "symbols": day_symbols}, plan.options))
        if dataset in BY_FILE_DATASET else
        signature(FLATPACK_DAY, immutable=True,
                  kwargs=with_options({"day": day, "symbols": day_symbols, **_timeframes(day_symbols, coarse),
                                       **({} if dataset == US_STOCKS else {"dataset": dataset})}, plan.options))
        for dataset, days in plan.day_files.items() for day, day_symbols in days.items()]
    for spec in specs:
        steps = prepare_chain(spec, plan.options, with_rest)
        if steps:
            header.append(chain(*steps) if len(steps) > 1 else steps[0])
    skipped = rest_skipped(plan, with_rest)
    begin_kwargs: dict[str, Any] = {"symbols": symbols, **({"rest_skipped": skipped} if skipped else {})}
    return signature(BEGIN, kwargs=begin_kwargs, immutable=True), header, specs


def _timeframes(symbols: list[str], coarse: dict[str, str]) -> dict[str, Any]:
    """The `timeframes` kwarg of a day load: only symbols not at 1m, and only when there are any."""
    named = {s: coarse[s] for s in symbols if s in coarse}
    return {"timeframes": named} if named else {}


def dispatch(plan: backfill.RunPlan) -> str | None:
    """Send the execution to the workers; returns the id of the chord's body, or None."""
    start, header, specs = build_stages(plan)
    if not specs:
        return None
    spread = signature(FANOUT, immutable=True, kwargs={"spec_groups": compact_specs(specs), "options": plan.options})
    workflow = chain(start, chord(group(header), spread)) if header else chain(start, spread)
    return workflow.apply_async().id


def inline_steps(plan: backfill.RunPlan) -> list[Signature]:
    """The run's signatures in dependency order: what the in-process runner applies."""
    start, header, specs = build_stages(plan)
    if not specs:
        return []
    steps: list[Signature] = [start]
    for item in [*header, *tail_signatures(compact_specs(specs), plan.options, rest_available(plan.options))]:
        steps.extend(flatten(item))
    return steps
