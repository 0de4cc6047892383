"""Every Prometheus metric ChronoX exports, and the one-line calls that record them.

Instrumented code calls a function here (`metrics.bars_ingested(...)`) at the one place
each policy lives; nothing else defines a metric. Calls count per batch, never per row.

Label values are bounded sets: sources, providers, phases, statuses, queues, kinds.
A symbol is never a label (thousands of symbols would be thousands of series).

Processes: a Celery worker's prefork children write to files in a directory of the
parent's (prometheus-client's multiprocess mode, `enable_multiprocess`), and the parent
serves the sum; beat and `chronox stream` keep their metrics in memory. chronox.health
serves them.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import glob
import logging
import os
import shutil
import tempfile
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values
from prometheus_client import multiprocess as _multiprocess

from chronox import __version__

log = logging.getLogger(__name__)
disable_created_metrics()  # a `_created` series per counter doubles the series for nothing we use

SERVICE = "chronox"
BAR_MINUTES = 1  # ohlcv_1m: a bar ends a minute after its window start
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 2400)

# Task name -> the phase it belongs to; other tasks count under their name's middle part
# (chronox.<part>.<name>), which is as bounded as the set of task names.
TASK_PHASES: Mapping[str, str] = {
    "chronox.phase.flatpack_day": "flatpack",
    "chronox.rest.reference": "flatpack",
    "chronox.rest.corporate_actions": "flatpack",
    "chronox.rest.daily_bars": "flatpack",
    "chronox.rest.api_gaps": "api",
    "chronox.rest.api_window": "api",
    "chronox.rest.snapshot": "snapshot",
    "chronox.snapshot.refresh": "snapshot",
    "chronox.snapshot.batch": "snapshot",
    "chronox.phase.stream": "stream",
    "chronox.stream.monitor": "stream",
    "chronox.phase.finalize": "finalize",
    "chronox.phase.finalize_batch": "finalize",
    "chronox.publish.drain_outbox": "publish",
    "chronox.registry.execute": "control",
    "chronox.backfill": "control",
    "chronox.phase.begin": "control",
    "chronox.phase.fanout": "control",
    "chronox.schedule.nightly_gap_scan": "control",
}
ERROR_KINDS = ("transient", "permanent", "bad_input")


def task_phase(task_name: str) -> str:
    phase = TASK_PHASES.get(task_name)
    if phase is not None:
        return phase
    parts = task_name.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == SERVICE else "other"


def quarantine_source(origin: str) -> str:
    """The source a quarantined row came from, by the origin its reader wrote: the stream's
    `polygon-ws`, REST's `<provider>:<timeframe>:<symbol>...`, else a day file's location."""
    if origin.endswith("-ws"):
        return "stream"
    if "://" not in origin and origin.count(":") >= 2:
        return "api"
    return "flatpack"


def status_class(status: int | None) -> str:
    """An HTTP answer as a bounded label: 200, 429, 4xx, 5xx, or error (no answer)."""
    if status is None:
        return "error"
    if status in (200, 429):
        return str(status)
    return f"{status // 100}xx"


class _Metrics:
    """The metric objects, made again when the process switches to multiprocess mode."""

    def __init__(self, registry: CollectorRegistry | None):
        r = registry
        self.bars = Counter("market_data_bars_ingested", "Minute bars committed to the database",
                            ["market", "provider", "source"], registry=r)
        self.trades = Counter("market_data_trades_ingested", "Trades committed to the database",
                              ["market", "provider"], registry=r)
        self.errors = Counter("market_data_ingestion_errors", "Failed task attempts, by kind of error",
                              ["phase", "provider", "kind"], registry=r)
        self.quarantined = Counter("market_data_quarantined_rows", "Rows committed to the quarantine table",
                                   ["source"], registry=r)
        self.requests = Counter("market_data_provider_requests", "HTTP requests to a provider, by answer",
                                ["provider", "status"], registry=r)
        self.rate_wait = Counter("market_data_rate_limit_wait_seconds",
                                 "Seconds work waited for the shared request budget", ["provider"], registry=r)
        self.phase_seconds = Histogram("market_data_phase_duration_seconds",
                                       "Duration of a task that finished (succeeded or failed for good)",
                                       ["phase"], buckets=PHASE_BUCKETS, registry=r)
        self.kafka = Counter("market_data_kafka_messages", "Kafka messages, acknowledged or failed",
                             ["kind", "result"], registry=r)
        self.cache = Counter("market_data_cache_requests", "Cache look-ups, hit or miss", ["cache", "result"],
                             registry=r)
        self.job_skips = Counter("market_data_job_skips", "Gated beat jobs that ran outside their session "
                                 "or found nothing to do", ["job"], registry=r)
        recent: dict[str, Any] = {"registry": r, "multiprocess_mode": "mostrecent"}
        self.active_streams = Gauge("market_data_active_streams", "Symbols subscribed on the stream",
                                    ["provider"], **recent)
        self.stream_lag = Gauge("market_data_stream_lag_seconds", "Now minus the end of the newest stream bar",
                                ["provider"], **recent)
        self.stream_backlog = Gauge("market_data_stream_backlog", "Events between the socket reader and writers",
                                    ["provider"], **recent)
        self.stream_stale = Gauge("market_data_stream_stale_seconds",
                                  "Stream lag that counts as stale (CHRONOX_STREAM_STALE_MINUTES)", ["provider"],
                                  **recent)
        self.session_open = Gauge("market_data_session_open", "1 while the market's extended session is open",
                                  ["market"], **recent)
        self.outbox = Gauge("market_data_outbox_pending", "Symbol-days committed but not yet on Kafka (db-first)",
                            **recent)
        self.symbols = Gauge("market_data_symbols", "Registry symbols by status", ["status"], **recent)
        self.queue_depth = Gauge("market_data_queue_depth", "Task messages waiting in a broker queue", ["queue"],
                                 **recent)
        self.ready = Gauge("market_data_ready", "1 when the readiness check last passed, by check", ["check"],
                           **recent)
        self.info = Gauge("service_info", "ChronoX version and the component this process runs",
                          ["service", "version", "component"], registry=r, multiprocess_mode="max")


_M = _Metrics(REGISTRY)
_multiprocess_dir: str | None = None
_newest_bar_end: dict[str, dt.datetime] = {}
_lock = threading.Lock()


# -- multiprocess mode (Celery prefork workers) -----------------------------------------

def enable_multiprocess(directory: str) -> None:
    """Count into files under `directory` from now on, in this process and every child it
    forks; the directory is emptied first (a previous run's files would add up)."""
    global _M, _multiprocess_dir
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    # prometheus-client reads the variable when a value is made, in this process and its children.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()
    for collector in list(vars(_M).values()):
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(collector)
    _M = _Metrics(None)
    _multiprocess_dir = directory


def worker_directory(pid: int | None = None) -> str:
    """The multiprocess directory of the worker whose parent is `pid`; directories of
    parents that no longer run are removed, so killed workers leave nothing behind."""
    base = tempfile.gettempdir()
    for stale in glob.glob(os.path.join(base, "chronox-metrics-*")):
        owner = stale.rsplit("-", 1)[-1]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    return os.path.join(base, f"chronox-metrics-{pid or os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_exited(pid: int) -> None:
    """Forget a dead prefork child's live gauges (its counters keep counting in the sum)."""
    if _multiprocess_dir is not None:
        _multiprocess.mark_process_dead(pid, _multiprocess_dir)


def remove_multiprocess_dir() -> None:
    if _multiprocess_dir is not None:
        shutil.rmtree(_multiprocess_dir, ignore_errors=True)


def collecting_registry() -> CollectorRegistry:
    """What /metrics serves: the children's files summed, or this process's own metrics."""
    if _multiprocess_dir is None:
        return REGISTRY
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=_multiprocess_dir)
    return registry


# -- recording -----------------------------------------------------------------------------

def service_info(component: str) -> None:
    _M.info.labels(SERVICE, __version__, component).set(1)


def bars_ingested(source: str, count: int, provider: str = "polygon", market: str = "stocks") -> None:
    """Bars a transaction committed (call after the commit)."""
    if count:
        _M.bars.labels(market, provider, source).inc(count)


def trades_ingested(count: int, provider: str = "polygon", market: str = "stocks") -> None:
    if count:
        _M.trades.labels(market, provider).inc(count)


def stream_stored(provider: str, ts: Iterable[dt.datetime], market: str = "stocks") -> None:
    """A stream batch committed: counted, and its newest bar kept for the lag."""
    newest = None
    count = 0
    for moment in ts:
        count += 1
        if newest is None or moment > newest:
            newest = moment
    if newest is None:
        return
    _M.bars.labels(market, provider, "stream").inc(count)
    end = newest + dt.timedelta(minutes=BAR_MINUTES)
    with _lock:
        if provider not in _newest_bar_end or end > _newest_bar_end[provider]:
            _newest_bar_end[provider] = end


def stream_state(provider: str, subscribed: int, backlog: int, now: dt.datetime | None = None) -> None:
    """Sampled by the stream process's loop: subscriptions, backlog and lag."""
    _M.active_streams.labels(provider).set(subscribed)
    _M.stream_backlog.labels(provider).set(backlog)
    with _lock:
        end = _newest_bar_end.get(provider)
    if end is not None:
        _M.stream_lag.labels(provider).set(((now or dt.datetime.now(dt.UTC)) - end).total_seconds())


def stream_limits(provider: str, stale_minutes: float) -> None:
    _M.stream_stale.labels(provider).set(stale_minutes * 60)


def session_open(market: str, is_open: bool) -> None:
    _M.session_open.labels(market).set(1 if is_open else 0)


def ingestion_error(phase: str, kind: str, provider: str = "polygon") -> None:
    _M.errors.labels(phase, provider, kind).inc()


def task_error(task_name: str, kind: str, provider: str = "polygon") -> None:
    """A task attempt that failed or will be retried, under its phase."""
    ingestion_error(task_phase(task_name), kind, provider)


def phase_duration(task_name: str, seconds: float) -> None:
    _M.phase_seconds.labels(task_phase(task_name)).observe(seconds)


def quarantined(conn: Any, origins: Sequence[str]) -> None:
    """Quarantine rows of `conn`'s transaction, counted when (and only if) it commits."""
    if not origins:
        return
    sources = {origin: quarantine_source(origin) for origin in set(origins)}
    counts = Tally(sources[origin] for origin in origins)

    def committed(_conn: Any) -> None:
        for source, count in counts.items():
            _M.quarantined.labels(source).inc(count)

    from sqlalchemy import event

    event.listen(conn, "commit", committed, once=True)


def provider_request(provider: str, status: int | None) -> None:
    _M.requests.labels(provider, status_class(status)).inc()


def rate_limit_wait(provider: str, seconds: float) -> None:
    if seconds > 0:
        _M.rate_wait.labels(provider).inc(seconds)


def kafka_messages(kind: str, result: str, count: int) -> None:
    if count:
        _M.kafka.labels(kind, result).inc(count)


@contextlib.contextmanager
def kafka_batch(kind: str, count: int) -> Iterator[None]:
    """`count` messages sent and flushed inside the block: acknowledged, or failed if it raises."""
    try:
        yield
    except BaseException:
        kafka_messages(kind, "failed", count)
        raise
    kafka_messages(kind, "sent", count)


def cache_request(cache: str, hit: bool) -> None:
    _M.cache.labels(cache, "hit" if hit else "miss").inc()


def job_skipped(job: str) -> None:
    _M.job_skips.labels(job).inc()


def readiness(results: Mapping[str, bool]) -> None:
    for check, ok in results.items():
        _M.ready.labels(check).set(1 if ok else 0)


def figures(symbols: Mapping[str, int], outbox_pending: int, queue_depth: Mapping[str, int] | None) -> None:
    """The dashboard's top row (chronox.figures), sampled by beat's process."""
    for status, count in symbols.items():
        _M.symbols.labels(status).set(count)
    _M.outbox.set(outbox_pending)
    for queue, depth in (queue_depth or {}).items():
        _M.queue_depth.labels(queue).set(depth)
