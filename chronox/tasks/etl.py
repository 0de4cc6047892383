"""Beat jobs of the ETL side (chronox.etl): the day just closed and the weekly re-check.

On a worker they send registry executions to the broker; applied in-process (`chronox
schedule trigger` without a broker) they run each execution here.
"""
from __future__ import annotations

from typing import Any

from chronox import etl
from chronox.celery_app import app
from chronox.settings import load_settings
from chronox.strategy import parse_moment
from chronox.tasks.base import ChronoxTask
from chronox.tasks.workflow import send_execution


def run_here(symbols: list[str], start: str, end: str) -> None:
    """An execution in this process, as `chronox run` without a broker does it."""
    from chronox import runner

    plan = runner.plan({"symbols": symbols, "start": start, "end": end, "no_stream": True})
    runner.run_inline(runner.inline_steps(plan))


def _sender(task: ChronoxTask) -> etl.ExecutionSender:
    return run_here if task.request.is_eager else send_execution


@app.task(name="chronox.schedule.daily_historical", base=ChronoxTask, bind=True)
def daily_historical(self: ChronoxTask, now: str | None = None) -> dict[str, Any]:
    return etl.daily_historical(load_settings(), parse_moment(now), _sender(self))


@app.task(name="chronox.schedule.weekly_backfill", base=ChronoxTask, bind=True)
def weekly_backfill(self: ChronoxTask, now: str | None = None) -> dict[str, Any]:
    return etl.weekly_backfill(load_settings(), parse_moment(now), _sender(self))
