"""Celery's part of streaming: the `stream` phase (activation) and the per-minute health check.

The stream itself is the long-running `chronox stream` process, not a task.
"""
from __future__ import annotations

from typing import Any

from chronox.celery_app import app
from chronox.settings import load_settings, run_settings
from chronox.stream.activation import activate, check_health
from chronox.stream.process import GapFill
from chronox.tasks.base import ChronoxTask
from chronox.tasks.workflow import send_backfill


@app.task(name="chronox.phase.stream", base=ChronoxTask)
def stream_phase(symbol: str, start: str | None = None, end: str | None = None, strategy: str | None = None,
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
    # start/end come with every phase step of a chain; activation does not need them.
    return activate(run_settings(options), symbol, strategy)


@app.task(name="chronox.stream.monitor", base=ChronoxTask)
def monitor(now: str | None = None) -> dict[str, Any]:
    return check_health(load_settings(), now)


def send_gap_fill(gap: GapFill) -> int:
    """Queue the api phase for the window the stream missed: one chronox.backfill per symbol."""
    first, last = gap.days
    for symbol in gap.symbols:
        send_backfill(symbol, first, last, strategy="api")
    return len(gap.symbols)
