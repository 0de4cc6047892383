"""Beat jobs of the real-time side (chronox.realtime), on the `chronox.realtime` queue: a
gated job plans its batches (or skips), and one task per batch does the work.

A failed refresh is replaced by the next one a minute (or ten) later: it never puts its
symbols' registry rows in `error`, which belong to their runs.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Task, group

from chronox import metrics, realtime
from chronox.celery_app import app
from chronox.settings import Settings, load_settings
from chronox.strategy import parse_moment
from chronox.tasks.base import ChronoxTask, RestTask, error_kind

log = logging.getLogger(__name__)


class RealtimeTask(RestTask):
    abstract = True

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        metrics.task_error(self.name, error_kind(exc), load_settings().provider)
        log.warning("%s failed: %s: %s", self.name, type(exc).__name__, exc)


def _fan_out(task: ChronoxTask, planned: dict[str, Any], batch: Task, expires: float,
             **kwargs: Any) -> dict[str, Any]:
    """Send one `batch` task per planned batch (with `kwargs`); applied in-process, run them here."""
    batches = planned.get("batches")
    if not batches:
        return planned
    work = group(batch.si(symbols=b, **kwargs).set(expires=expires) for b in batches)
    if task.request.is_eager:
        return {**planned, "batches": work.apply().get()}
    work.apply_async()
    return {**planned, "batches": len(batches)}


def _period(settings: Settings, job: str) -> float:
    minutes = settings.latest_prices_minutes if job == realtime.LATEST_PRICES else settings.hourly_refresh_minutes
    return minutes * 60.0


@app.task(name="chronox.realtime.latest_prices", base=ChronoxTask, bind=True)
def latest_prices(self: ChronoxTask, now: str | None = None) -> dict[str, Any]:
    settings = load_settings()
    return _fan_out(self, realtime.plan(settings, realtime.LATEST_PRICES, parse_moment(now)),
                    prices_batch, _period(settings, realtime.LATEST_PRICES))


@app.task(name="chronox.realtime.prices_batch", base=RealtimeTask, bind=True)
def prices_batch(self: RealtimeTask, symbols: list[str]) -> dict[str, Any]:
    return self.run_rest(realtime.refresh_prices, symbols)


@app.task(name="chronox.realtime.hourly_refresh", base=ChronoxTask, bind=True)
def hourly_refresh(self: ChronoxTask, now: str | None = None) -> dict[str, Any]:
    settings = load_settings()
    return _fan_out(self, realtime.plan(settings, realtime.HOURLY_REFRESH, parse_moment(now)),
                    hourly_batch, _period(settings, realtime.HOURLY_REFRESH), now=now)


@app.task(name="chronox.realtime.hourly_batch", base=RealtimeTask, bind=True)
def hourly_batch(self: RealtimeTask, symbols: list[str], now: str | None = None) -> dict[str, Any]:
    return self.run_rest(realtime.refresh_hourly, symbols, now)
