"""Sink tasks (queue chronox.sinks): the Parquet lake and the feature store, written from
committed rows after a run is finalized or a stream day is over; the feature TTL sweep.

A sink task that fails retries on its own (transient errors, with backoff) and never
touches the registry row: the load it copies is committed and stays so.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import signature

from chronox import features, metrics, news, sinks
from chronox.celery_app import app
from chronox.settings import Settings, load_settings
from chronox.sinks import dispatch, lake
from chronox.tasks.base import ChronoxTask, error_kind

log = logging.getLogger(__name__)

SINK_TASKS = {sinks.LAKE: "chronox.sink.lake", sinks.FEATURES: "chronox.sink.features"}
NEWS_LAKE_TASK = "chronox.sink.lake_news"


class SinkTask(ChronoxTask):
    """ChronoxTask's retries, without putting the symbol in error when a sink gives up."""

    abstract = True

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        metrics.task_error(self.name, error_kind(exc), load_settings().provider)
        log.error("%s failed for good: %s: %s (the database is unaffected; `chronox status` shows the lag)",
                  self.name, type(exc).__name__, exc)


def _apply(settings: Settings, name: str, kwargs: dict[str, Any]) -> None:
    task = signature(name, kwargs=kwargs, immutable=True)
    if settings.in_process:
        app.loader.import_default_modules()
        outcome = task.apply()  # after the commit, in this process; a failure is logged, not raised
        if outcome.failed():
            log.warning("%s %s failed: %s", name, kwargs, outcome.result)
    else:
        task.apply_async()


def send_sinks(settings: Settings, symbol: str, days: list[str]) -> None:
    """One task per configured sink for a symbol's days."""
    for name in sinks.configured(settings):
        _apply(settings, SINK_TASKS[name], {"symbol": symbol, "days": days})


def send_news_lake(settings: Settings, days: list[str]) -> None:
    if settings.lake_url:
        _apply(settings, NEWS_LAKE_TASK, {"days": days})


def after_finalize(settings: Settings, symbols: list[str], start: str, end: str) -> int:
    """What the finalize tasks call once a run's symbols are finalized: their sinks."""
    return dispatch.after_run(settings, symbols, start, end, send_sinks)


@app.task(name=SINK_TASKS[sinks.LAKE], base=SinkTask)
def lake_sink(symbol: str, days: list[str]) -> dict[str, Any]:
    return lake.sync_bars(load_settings(), [symbol], days).as_dict()


@app.task(name=SINK_TASKS[sinks.FEATURES], base=SinkTask)
def features_sink(symbol: str, days: list[str]) -> dict[str, Any]:
    return features.sync(load_settings(), symbol, days)


@app.task(name=NEWS_LAKE_TASK, base=SinkTask)
def news_lake_sink(days: list[str]) -> dict[str, Any]:
    return news.sync_lake(load_settings(), days)


@app.task(name="chronox.sink.stream_day", base=ChronoxTask)
def stream_day(day: str | None = None, now: str | None = None) -> dict[str, Any]:
    from chronox.strategy import parse_moment

    return dispatch.stream_day(load_settings(), send_sinks, day, parse_moment(now))


@app.task(name="chronox.features.ttl_sweep", base=ChronoxTask)
def ttl_sweep(pattern: str = features.SWEEP_PATTERN, ttl_default: int | None = None,
              max_keys: int | None = None) -> dict[str, Any]:
    return features.ttl_sweep(load_settings(), pattern, ttl_default, max_keys)
