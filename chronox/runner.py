"""Running a registry execution for a person at a terminal: in this process (no broker)
or on the workers, followed until every symbol settles. The command line prints;
this module runs.
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery.canvas import Signature

from chronox import completion, registry
from chronox.backfill import RunPlan
from chronox.db import get_engine
from chronox.models import RegistryStatus
from chronox.settings import Settings
from chronox.tasks import workflow

SETTLED = (RegistryStatus.COMPLETED, RegistryStatus.ERROR)
FOLLOW_POLL_SECONDS = 0.5


class RunTimedOut(Exception):
    """A followed run did not settle in time; `pending` are the symbols still going."""

    def __init__(self, timeout: float, pending: list[str]):
        super().__init__(f"timed out after {timeout:.0f}s; still running: {', '.join(pending)}")
        self.pending = pending


def plan(request: dict[str, Any]) -> RunPlan:
    """request: the kwargs of chronox.registry.execute."""
    return workflow.planned(**request)


def inline_steps(run: RunPlan) -> list[Signature]:
    from chronox.celery_app import app

    app.loader.import_default_modules()  # applying a signature by name needs its task registered
    return workflow.inline_steps(run)


def run_inline(steps: list[Signature], on_step: Callable[[str], None] | None = None) -> list[Any]:
    """Execute the same signatures the workers would, in this process, one after another.

    A failed step's result is {"task", "error"}; the run goes on, as a chord header would.
    """
    results: list[Any] = []
    for step in steps:
        outcome = step.apply()
        if on_step is not None:
            on_step(step.task)
        value = outcome.result
        if outcome.failed():
            value = {"task": step.task, "error": f"{type(value).__name__}: {value}"}
        results.append(value)
    return results


def problems(results: list[Any]) -> list[str]:
    """One line per step that failed or reported an error."""
    return [f"{r.get('task') or r.get('day')}: {r['error']}" for r in results if isinstance(r, dict) and r.get("error")]


def dispatch(request: dict[str, Any]) -> Any:
    """Send chronox.registry.execute to the workers; its AsyncResult."""
    from chronox.celery_app import app

    return app.send_task("chronox.registry.execute", kwargs=request)


def follow(settings: Settings, symbols: list[str], timeout: float,
           on_progress: Callable[[int], None] | None = None, adhoc: Sequence[str] = (),
           since: dt.datetime | None = None) -> dict[str, str]:
    """Poll until every symbol is completed or error; their statuses.

    Registered symbols are followed on the registry; `adhoc` ones (no registry row) on
    the run outcome finalize records, counting only outcomes newer than `since`.
    """
    engine = get_engine(settings.database_url)
    deadline = time.monotonic() + timeout
    registered = [s for s in symbols if s not in set(adhoc)]
    started = since or dt.datetime.now(dt.UTC)
    while True:
        states = {**registry.status_of(engine, registered),
                  **{s: "running" for s in adhoc}, **completion.settled(engine, adhoc, started)}
        finished = sum(1 for s in states.values() if s in SETTLED)
        if on_progress is not None:
            on_progress(finished)
        if finished >= len(symbols):
            return states
        if time.monotonic() > deadline:
            raise RunTimedOut(timeout, [s for s, st in states.items() if st not in SETTLED])
        time.sleep(FOLLOW_POLL_SECONDS)
