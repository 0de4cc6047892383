"""The figures of the Grafana dashboard's top row, computed in one place for both views:
beat's process samples them into gauges every CHRONOX_METRICS_SAMPLE_SECONDS
(`market_data_symbols{status}`, `market_data_outbox_pending`, `market_data_queue_depth{queue}`)
and `chronox status` prints them, so a terminal shows what Grafana shows.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import func, select

from chronox import metrics, store
from chronox.db import get_engine
from chronox.models import RegistryStatus, SymbolRegistry
from chronox.settings import Settings, hide_password

log = logging.getLogger(__name__)


def symbols_by_status(settings: Settings) -> dict[str, int]:
    """Registry symbols per status, every status present (0 included)."""
    counts = {status.value: 0 for status in RegistryStatus}
    with get_engine(settings.database_url).connect() as conn:
        for status, count in conn.execute(select(SymbolRegistry.status, func.count()).group_by(SymbolRegistry.status)):
            counts[status] = int(count)
    return counts


def outbox_pending(settings: Settings) -> int:
    with get_engine(settings.database_url).connect() as conn:
        return int(store.outbox_size(conn))


def queue_depths(settings: Settings, timeout: float = 5.0) -> dict[str, int] | None:
    """Task messages waiting in each ChronoX queue of the broker; None without a broker.

    A passive declare reports a queue's length on Redis and RabbitMQ alike; a queue the
    broker does not know yet (Redis drops empty lists) holds nothing.
    """
    if settings.in_process:
        return None
    from kombu import Connection

    from chronox.tasks.config import QUEUES

    depths: dict[str, int] = {}
    with Connection(settings.broker_url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        for queue in QUEUES:
            channel = conn.channel()
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except conn.channel_errors as exc:
                log.debug("queue %s: %s", queue, exc)
                depths[queue] = 0
            finally:
                channel.close()
    return depths


def top_row(settings: Settings) -> dict[str, Any]:
    """Symbols by status, outbox pending, queue depth per queue (None without a broker, or
    with `queue_error` when the broker does not answer)."""
    figures: dict[str, Any] = {"symbols": symbols_by_status(settings), "outbox_pending": outbox_pending(settings)}
    try:
        figures["queue_depth"] = queue_depths(settings)
    except Exception as exc:  # the other figures still stand
        figures["queue_depth"] = None
        figures["queue_error"] = hide_password(f"{type(exc).__name__}: {exc}".splitlines()[0])[:200]
    return figures


def describe(figures: dict[str, Any]) -> str:
    """The top row as one line for a terminal."""
    symbols = ", ".join(f"{n} {status}" for status, n in figures["symbols"].items())
    if figures["queue_depth"] is not None:
        queues = ", ".join(f"{q} {n}" for q, n in figures["queue_depth"].items())
    else:
        queues = figures.get("queue_error") or "no broker (tasks run in-process)"
    return f"dashboard: symbols {symbols}; outbox pending {figures['outbox_pending']}; queue depth {queues}"


def sample(settings: Settings) -> dict[str, Any]:
    """Compute the top row and set its gauges."""
    figures = top_row(settings)
    metrics.figures(figures["symbols"], figures["outbox_pending"], figures["queue_depth"])
    return figures


def start_sampler(settings: Settings) -> threading.Event:
    """Sample now and every CHRONOX_METRICS_SAMPLE_SECONDS in a daemon thread until the
    returned event is set; a failed sample is logged and the gauges keep their last values."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                sample(settings)
            except Exception as exc:  # the database or broker may be down; the next round retries
                log.warning("metrics sample failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200])
            stop.wait(settings.metrics_sample_seconds)

    threading.Thread(target=loop, name="chronox-figures", daemon=True).start()
    return stop
