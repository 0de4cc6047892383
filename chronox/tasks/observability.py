"""Celery's side of chronox.health: the endpoint of each worker and of beat.

- A worker's main process serves /metrics, /healthz and /readyz; its prefork children
  count into files of a directory private to the worker (emptied at start, removed at
  shutdown, a dead child's live gauges forgotten), which the main process sums.
- A worker is live while its consumer ticks: a timer on the consumer's event loop that
  runs only while the consumer is connected to the broker (a bootstep started after the
  connection and stopped when it is lost).
- Beat serves the same endpoint, is live while its scheduler loop ticks, and samples the
  dashboard's top row (chronox.figures) every CHRONOX_METRICS_SAMPLE_SECONDS.
"""
from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, bootsteps
from celery.signals import (
    beat_init,
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from chronox import figures, health, metrics
from chronox.settings import load_settings

TICK_SECONDS = 1.0
_state: dict[str, Any] = {}


class ConsumerTick(bootsteps.StartStopStep):
    """Beats chronox.health's liveness from the consumer's event loop while it is connected."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._tref: Any = None

    def start(self, parent: Any) -> None:
        health.beat()
        self._tref = parent.timer.call_repeatedly(TICK_SECONDS, health.beat)

    def stop(self, parent: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None

    shutdown = stop


def install(app: Celery) -> None:
    app.steps["consumer"].add(ConsumerTick)


@worker_init.connect  # before the pool forks its children
def _worker_counts_in_files(sender: Any = None, **_kwargs: Any) -> None:
    pool = getattr(sender, "pool_cls", None) or getattr(getattr(sender, "app", None), "conf", {}).get("worker_pool")
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "prefork" in str(name):  # solo and thread pools count in this process's memory
        metrics.enable_multiprocess(metrics.worker_directory())


@worker_process_init.connect
def _child_forgets_the_endpoint(**_kwargs: Any) -> None:
    # A forked child holds a copy of the listening socket; only the main process serves it.
    endpoint = _state.get("endpoint")
    if endpoint is not None:
        endpoint.socket.close()


@celeryd_after_setup.connect  # once the worker's logging is set up, still before the pool starts
def _worker_serves(**_kwargs: Any) -> None:
    # Until the consumer first connects, the process is live for CHRONOX_LIVENESS_SECONDS.
    health.beat()
    _state["endpoint"] = health.serve(load_settings(), "worker")


@worker_process_shutdown.connect
def _child_exiting(pid: int | None = None, **_kwargs: Any) -> None:
    metrics.child_exited(pid or os.getpid())


@worker_shutdown.connect
def _worker_stopping(**_kwargs: Any) -> None:
    endpoint = _state.pop("endpoint", None)
    if endpoint is not None:
        endpoint.stop()
    metrics.remove_multiprocess_dir()


@beat_init.connect
def _beat_started(sender: Any = None, **_kwargs: Any) -> None:
    settings = load_settings()
    service = sender

    def overdue() -> float | None:
        # Beat sleeps up to its max interval between ticks; only time beyond that is a stall.
        last = getattr(service, "_last_tick", None)
        if last is None:
            return None
        interval = getattr(service, "effective_max_interval", None) or 0.0
        return max(0.0, time.monotonic() - last - interval)

    health.liveness.follow(overdue)
    _state["endpoint"] = health.serve(settings, "beat")
    _state["sampler"] = figures.start_sampler(settings)
