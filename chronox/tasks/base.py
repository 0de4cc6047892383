"""Task base classes: retries for transient errors only, failures recorded on the registry.

RestTask adds the rules of tasks that call a provider's REST API:
- Transient failures (429, 5xx, timeouts, connection errors) are retried with
  exponential backoff and full jitter, never sooner than the provider's Retry-After, at
  most CHRONOX_POLYGON_MAX_RETRIES times; then the task fails with the last error.
- Permanent failures (other 4xx, malformed answers) fail at once.
- Waiting for request budget is not a failure: the task leaves the worker and comes back
  at its turn (chronox.ratelimit), without spending its retries.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval

from chronox import completion, metrics
from chronox.db import get_engine
from chronox.delivery import KAFKA_ERRORS
from chronox.ratelimit import SHORT_WAIT, RateLimited, WaitPolicy, margin, waiting
from chronox.settings import load_settings, run_settings
from chronox.sources.base import ProviderError, TransientProviderError
from chronox.tasks.workflow import step_of_task

log = logging.getLogger(__name__)


def _transient_errors() -> tuple[type[BaseException], ...]:
    import redis
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    # InterfaceError: psycopg2 reports a connection the server closed under a running
    # statement (a PostgreSQL restart) as "connection already closed".
    return (OperationalError, InterfaceError, DisconnectionError, *KAFKA_ERRORS,
            redis.ConnectionError, redis.TimeoutError, BotoConnectionError,
            ConnectionError, TimeoutError)


TRANSIENT_ERRORS = _transient_errors()


def error_kind(exc: BaseException) -> str:
    """transient (retried), bad_input (the request or the data is wrong) or permanent."""
    from chronox.settings import ConfigError
    from chronox.sources.flatfiles import FlatFileError
    from chronox.strategy import InvalidInput

    if isinstance(exc, (*TRANSIENT_ERRORS, TransientProviderError)):
        return "transient"
    if isinstance(exc, (InvalidInput, ConfigError, FlatFileError)):
        return "bad_input"
    return "permanent"


class ChronoxTask(Task):
    """Retries transient errors with exponential backoff and jitter; never bad input."""

    abstract = True
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8
    acks_late = True

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self.request.chronox_started = time.monotonic()

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        metrics.phase_duration(self.name, time.monotonic() - self.request.get("chronox_started", time.monotonic()))

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not isinstance(exc, RateLimited):  # waiting for request budget is no error
            metrics.task_error(self.name, error_kind(exc), load_settings().provider)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # A task that fails for good stops its symbols' chains: no finalize follows.
        self.record_failure(exc, args, kwargs, ends_run=True)

    def record_failure(self, exc: BaseException, args: Any, kwargs: Any, ends_run: bool) -> str:
        """The failure on the registry rows and in run_steps of the symbols the task worked on."""
        metrics.task_error(self.name, error_kind(exc), load_settings().provider)
        message = f"{self.name} failed: {type(exc).__name__}: {exc}"
        symbols = affected_symbols(args, kwargs)
        if symbols:
            try:
                completion.record_failure(get_engine(load_settings().database_url), symbols,
                                          step_of_task(self.name), message, ends_run)
            except Exception:  # the database may be the thing that failed
                log.exception("could not record failure of %s on the registry", self.name)
        return message

    def progress(self, done: int, total: int) -> None:
        """Custom PROGRESS state with done/total, shown by Flower."""
        if self.request.id and not self.request.is_eager:
            self.update_state(state="PROGRESS", meta={"done": done, "total": total})


def affected_symbols(args: Any, kwargs: Any) -> list[str]:
    """Symbols a failed task was working on: kwargs `symbols`/`symbol`, or a leading symbol arg."""
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    if isinstance(kwargs.get("symbols"), list):
        return [s for s in kwargs["symbols"] if isinstance(s, str)]
    if isinstance(kwargs.get("symbol"), str):
        return [kwargs["symbol"]]
    if args and isinstance(args[0], str):
        return [args[0]]
    return []


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
        if not (self.soft_fail and self.in_canvas):
            raise exc  # on_failure records it; a step called by hand ends in FAILURE, as expected
        message = self.record_failure(exc, self.request.args, self.request.kwargs, ends_run=False)
        log.error("%s", message)
        return {"error": message}

    @property
    def in_canvas(self) -> bool:
        """Running as part of a run: in its chain, chord or group on a worker, or applied by
        the in-process runner (which is the run); not called alone."""
        request = self.request
        return bool(request.is_eager or request.chord or request.chain or request.group)
