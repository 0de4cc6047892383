"""Thin Celery tasks of the REST phases, and the retry rules they share.

- Transient Polygon failures (429, 5xx, timeouts, connection errors) are retried with
  exponential backoff and full jitter, never sooner than Polygon's Retry-After, at most
  CHRONOX_POLYGON_MAX_RETRIES times; then the task fails with the last error.
- Permanent failures (other 4xx, malformed answers) fail at once.
- Waiting for request budget is not a failure: the task leaves the worker and comes back
  at its turn (chronox.ratelimit), without spending its retries.
A failure is recorded on the registry row (status `error`, error_message).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

from celery import group
from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval

from chronox import gaps, registry, rest, snapshot
from chronox.celery_app import app
from chronox.db import get_engine
from chronox.ratelimit import SHORT_WAIT, RateLimited, WaitPolicy, margin, waiting
from chronox.settings import load_settings, run_settings
from chronox.sources.base import ProviderError, TransientProviderError
from chronox.tasks.base import ChronoxTask, affected_symbols

log = logging.getLogger(__name__)

BUDGET_WAITS_HEADER = "chronox_budget_waits"
MAX_BUDGET_WAITS = 200
# Below the broker's visibility timeout (celeryconfig), or a waiting task would be delivered twice.
MAX_COUNTDOWN = 600.0


class RestTask(ChronoxTask):
    abstract = True
    # Tasks in a run's chord header record their final error and return it instead of
    # raising: a failed header task would stop the fan-out of every symbol in the run.
    soft_fail = False

    def run_rest(self, func: Callable[..., dict[str, Any]], *args: Any,
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
        settings = run_settings(options)
        if self.request.is_eager:
            policy = WaitPolicy()  # in-process: nothing else could use the time, so wait here
        else:
            policy = WaitPolicy(holder=self.request.id, first_wait=SHORT_WAIT,
                                later_wait=settings.polygon_rate_window + margin(settings.polygon_rate_window))
        try:
            with waiting(policy):
                return func(settings, *args)
        except RateLimited as exc:
            waits = int(self.request.get(BUDGET_WAITS_HEADER) or 0) + 1
            if waits > MAX_BUDGET_WAITS:
                return self._give_up(ProviderError(f"no request budget after {MAX_BUDGET_WAITS} waits "
                                                  "(CHRONOX_POLYGON_RATE_LIMIT)"))
            self._again(exc, min(exc.wait, MAX_COUNTDOWN), self.request.retries, waits)
        except TransientProviderError as exc:
            retries = self.request.retries
            if retries >= settings.polygon_max_retries:
                exc.args = (f"{exc} (gave up after {retries} retries)",)
                return self._give_up(exc)
            countdown = get_exponential_backoff_interval(self.retry_backoff, retries, self.retry_backoff_max,
                                                         self.retry_jitter)
            countdown = min(max(countdown, exc.retry_after or 0), MAX_COUNTDOWN)
            log.warning("%s: %s; retry %d of %d in %.1fs", self.name, exc, retries + 1,
                        settings.polygon_max_retries, countdown)
            if self.request.is_eager:
                time.sleep(countdown)  # apply() runs the retry at once
            self._again(exc, countdown, retries + 1, int(self.request.get(BUDGET_WAITS_HEADER) or 0))
        except ProviderError as exc:
            return self._give_up(exc)

    def _again(self, exc: Exception, countdown: float, retries: int, budget_waits: int) -> NoReturn:
        """Task.retry, except that the caller decides whether the attempt counts as a retry."""
        sig = self.signature_from_request(countdown=countdown, retries=retries,
                                          headers={BUDGET_WAITS_HEADER: budget_waits})
        if not self.request.is_eager:
            sig.apply_async()
        raise Retry(exc=exc, when=countdown, sig=sig, is_eager=bool(self.request.is_eager))

    def _give_up(self, exc: ProviderError) -> dict[str, Any]:
        if not self.soft_fail:
            raise exc  # on_failure records it on the registry
        message = f"{self.name} failed: {type(exc).__name__}: {exc}"
        log.error("%s", message)
        registry.fail(get_engine(load_settings().database_url),
                      affected_symbols(self.request.args, self.request.kwargs), message)
        return {"error": message}


# flatpack: before the minute bars, beside the shared day loads (the run's chord header)

@app.task(name="chronox.rest.reference", base=RestTask, bind=True, soft_fail=True)
def reference(self: RestTask, symbol: str, start: str | None = None, end: str | None = None,
              options: dict[str, Any] | None = None) -> dict[str, Any]:
    return self.run_rest(rest.load_reference, symbol, options=options)


@app.task(name="chronox.rest.corporate_actions", base=RestTask, bind=True, soft_fail=True)
def corporate_actions(self: RestTask, symbol: str, start: str | None = None,
                      end: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    return self.run_rest(rest.load_corporate_actions, symbol, options=options)


@app.task(name="chronox.rest.daily_bars", base=RestTask, bind=True, soft_fail=True)
def daily_bars(self: RestTask, symbol: str, start: str, end: str,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
    return self.run_rest(rest.load_daily_bars, symbol, start, end, options=options)


# api: in the symbol's chain, after the day loads

@app.task(name="chronox.rest.api_gaps", base=RestTask, bind=True)
def api_gaps(self: RestTask, symbol: str, start: str, end: str, options: dict[str, Any] | None = None) -> Any:
    found = self.run_rest(gaps.plan_fill, symbol, start, end, options=options)
    windows = found.get("windows") or []
    if not windows:
        return found
    # One task per window; the rest of the symbol's chain waits for all of them.
    extra = {"options": options} if options else {}
    return self.replace(group(api_window.si(symbol=symbol, start=a, end=b, **extra) for a, b in windows))


@app.task(name="chronox.rest.api_window", base=RestTask, bind=True)
def api_window(self: RestTask, symbol: str, start: str, end: str,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
    return self.run_rest(gaps.fill_window, symbol, start, end, options=options)


# snapshot

@app.task(name="chronox.rest.snapshot", base=RestTask, bind=True)
def snapshot_phase(self: RestTask, symbol: str, start: str | None = None, end: str | None = None,
                   method: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    return self.run_rest(snapshot.refresh, [symbol], method, options=options)


@app.task(name="chronox.snapshot.refresh", base=ChronoxTask, bind=True)
def snapshot_refresh(self: ChronoxTask, method: str | None = None) -> Any:
    """The periodic refresh of every enabled snapshot symbol: one task per batch of tickers."""
    method, chunks = snapshot.refresh_batches(load_settings(), method)
    if not chunks:
        return {"method": method, "symbols": 0}
    return self.replace(group(snapshot_batch.si(symbols=c, method=method) for c in chunks))


@app.task(name="chronox.snapshot.batch", base=RestTask, bind=True)
def snapshot_batch(self: RestTask, symbols: list[str], method: str | None = None) -> dict[str, Any]:
    return self.run_rest(snapshot.refresh, symbols, method)
