"""The tasks of a registry run: execution, begin, day loads, fan-out, finalize, outbox drain.

Each body is one call into chronox.backfill or chronox.tasks.workflow (the canvas).
"""
from __future__ import annotations

from typing import Any

from chronox import backfill, completion
from chronox.celery_app import app
from chronox.markets import Market, ProviderId
from chronox.settings import load_settings, run_settings
from chronox.sources.flatfiles import US_STOCKS
from chronox.tasks import sinks as sink_tasks
from chronox.tasks import workflow
from chronox.tasks.base import ChronoxTask


@app.task(name="chronox.registry.execute", base=ChronoxTask)
def execute(symbols: list[str] | None = None, start: str | None = None, end: str | None = None,
            strategy: str | None = None, no_stream: bool = False, timeframe: str | None = None,
            options: dict[str, Any] | None = None, range: str | None = None, market: str | None = None,
            provider: str | None = None, provider_symbol: str | None = None) -> dict[str, Any]:
    return workflow.execute(symbols=symbols, start=start, end=end, strategy=strategy, no_stream=no_stream,
                            timeframe=timeframe, options=options, range=range, market=market, provider=provider,
                            provider_symbol=provider_symbol)


@app.task(name="chronox.backfill", base=ChronoxTask)
def backfill_symbol(symbol: str, start: str | None = None, end: str | None = None,
                    strategy: str | None = None, no_stream: bool = False, timeframe: str | None = None,
                    options: dict[str, Any] | None = None, range: str | None = None, market: str | None = None,
                    provider: str | None = None, provider_symbol: str | None = None) -> dict[str, Any]:
    return workflow.execute(symbols=[symbol], start=start, end=end, strategy=strategy, no_stream=no_stream,
                            timeframe=timeframe, options=options, range=range, market=market, provider=provider,
                            provider_symbol=provider_symbol)


@app.task(name=workflow.BEGIN, base=ChronoxTask)
def begin(symbols: list[str], rest_skipped: list[str] | None = None) -> dict[str, Any]:
    return backfill.begin_run(load_settings(), symbols, rest_skipped=rest_skipped or ())


@app.task(name=workflow.FLATPACK_DAY, base=ChronoxTask, bind=True)
def flatpack_day(self: ChronoxTask, day: str, symbols: list[str], expected_rows: int = 0,
                 timeframes: dict[str, str] | None = None, dataset: str = US_STOCKS,
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
    return backfill.load_day(run_settings(options), day, symbols,
                             progress=lambda done: self.progress(done, max(expected_rows, done)), timeframes=timeframes,
                             dataset=dataset)


@app.task(name=workflow.FANOUT, base=ChronoxTask)
def fanout(spec_groups: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
    return workflow.fan_out(spec_groups, options)


@app.task(name=workflow.FINALIZE, base=ChronoxTask)
def finalize(symbol: str, start: str, end: str, days: list[str], strategy: str | None = None,
             options: dict[str, Any] | None = None, market: str | None = None, provider: str | None = None,
             provider_symbol: str | None = None) -> dict[str, Any]:
    return _finalize([symbol], start, end, days, strategy, options, market, provider)


@app.task(name=workflow.FINALIZE_BATCH_TASK, base=ChronoxTask)
def finalize_batch(symbols: list[str], start: str, end: str, days: list[str], strategy: str | None = None,
                   options: dict[str, Any] | None = None, market: str | None = None,
                   provider: str | None = None) -> dict[str, Any]:
    return _finalize(symbols, start, end, days, strategy, options, market, provider, batch=True)


def _finalize(symbols: list[str], start: str, end: str, days: list[str], strategy: str | None,
              options: dict[str, Any] | None, market: str | None, provider: str | None,
              batch: bool = False) -> dict[str, Any]:
    """Finalize, then hand the committed symbol-days to the lake and feature store."""
    settings = run_settings(options)
    origin = (market or Market.STOCKS, provider or ProviderId.POLYGON)
    if batch:
        summary = completion.finalize_symbols(settings, symbols, start, end, days, strategy, origin=origin)
    else:
        summary = completion.finalize_symbol(settings, symbols[0], start, end, days, strategy, origin=origin)
    sink_tasks.after_finalize(settings, symbols, start, end)
    return summary


@app.task(name="chronox.publish.drain_outbox", base=ChronoxTask)
def drain_outbox() -> dict[str, Any]:
    return backfill.drain_outbox(load_settings())
