"""Task base class: retries for transient errors only, failures recorded on the registry."""
from __future__ import annotations

import logging
from typing import Any

from celery import Task

from chronox import registry
from chronox.db import get_engine
from chronox.delivery import KAFKA_ERRORS
from chronox.settings import load_settings

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


class ChronoxTask(Task):
    """Retries transient errors with exponential backoff and jitter; never bad input."""

    abstract = True
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8
    acks_late = True

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        symbols = affected_symbols(args, kwargs)
        if symbols:
            message = f"{self.name} failed: {type(exc).__name__}: {exc}"
            try:
                registry.fail(get_engine(load_settings().database_url), symbols, message)
            except Exception:  # the database may be the thing that failed
                log.exception("could not record failure of %s on the registry", self.name)

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
