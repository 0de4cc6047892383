"""Thin Celery tasks of the `trades` and `quotes` phases (chronox.ticks): the tick day-file
loads (queue chronox.flatfiles, one per dataset and day, in a run's chord header beside the
minute-bar day loads) and the REST gap fill (queue chronox.rest, in each symbol's chain)."""
from __future__ import annotations

from typing import Any

from celery import group

from chronox import ticks
from chronox.celery_app import app
from chronox.markets import Instrument
from chronox.settings import run_settings
from chronox.tasks.base import ChronoxTask, RestTask
from chronox.tasks.workflow import TICK_DAY, TICK_GAPS, TICK_REST_DAY
from chronox.tick_store import QUOTES, TRADES


@app.task(name=TICK_DAY, base=ChronoxTask, bind=True)
def tick_day(self: ChronoxTask, dataset: str, day: str, symbols: list[str], expected_rows: int = 0,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    return ticks.load_day(run_settings(options), dataset, day, symbols,
                          progress=lambda done: self.progress(done, max(expected_rows, done)))


@app.task(name=TICK_GAPS[TRADES], base=RestTask, bind=True)
def trades_gaps(self: RestTask, symbol: str, start: str, end: str, options: dict[str, Any] | None = None) -> Any:
    return _fill_gaps(self, TRADES, symbol, start, end, options)


@app.task(name=TICK_GAPS[QUOTES], base=RestTask, bind=True)
def quotes_gaps(self: RestTask, symbol: str, start: str, end: str, options: dict[str, Any] | None = None) -> Any:
    return _fill_gaps(self, QUOTES, symbol, start, end, options)


def _fill_gaps(task: RestTask, dataset: str, symbol: str, start: str, end: str,
               options: dict[str, Any] | None) -> Any:
    found = task.run_rest(ticks.plan_fill, Instrument.of(symbol), dataset, start, end, options=options)
    days = found.get("gaps") or []
    if not days:
        return found
    # One task per symbol-day; the rest of the symbol's chain waits for all of them.
    extra = {"options": options} if options else {}
    return task.replace(group(rest_day.si(symbol=symbol, dataset=dataset, day=day, **extra) for day in days))


@app.task(name=TICK_REST_DAY, base=RestTask, bind=True)
def rest_day(self: RestTask, symbol: str, dataset: str, day: str,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    return self.run_rest(ticks.fill_day, Instrument.of(symbol), dataset, day, options=options)
