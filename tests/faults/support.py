"""Shared by the fault tests: a registry run prepared on real services, started on real
workers, waited for, and checked against the end state a fault-free run leaves.

A fault test injects one fault into such a run and must end exactly where a run without
it would: the same rows, no duplicate bars, coverage, registry rows completed, every
stored bar on Kafka. Kafka is at-least-once, so duplicate envelopes are allowed; their
number is a figure the tests report, not a failure.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import text

from chronox import registry
from chronox.bars import isoformat_utc
from chronox.db import get_engine
from tests.helpers import rows_by_symbol_day, serve_days, statuses, wait_for_statuses, write_days

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

Expected = dict[tuple[str, dt.date], int]

# Any warning (e.g. REST steps skipped for lack of a key) or none: what a completed row may carry.
WARNING_OR_NONE = object()


class HasBootstrap(Protocol):
    bootstrap: str


# -- preparing and starting a run ---------------------------------------------------

def prepare_run(url: str, flatfiles: Path | None, symbols: Sequence[str], days: Sequence[dt.date],
                strategy: str = "flatpack", polygon: Any = None) -> Expected:
    """Register `symbols` with `strategy` and put their bars where the strategy reads them:
    synthetic day files under `flatfiles`, and/or minute bars on the Polygon stand-in
    (`polygon`, for the api and snapshot phases). Returns the rows expected per (symbol, day)."""
    expected: Expected = {}
    if flatfiles is not None:
        expected.update(write_days(flatfiles, days, symbols))
    if polygon is not None:
        for symbol in symbols:
            for day in days:
                served = serve_days(polygon, symbol, [day])
                assert expected.setdefault((symbol, day), served) == served  # same synthetic data
    assert set(expected) == {(s, d) for s in symbols for d in days}, "nothing serves some symbol-days"
    engine = get_engine(url)
    for symbol in symbols:
        registry.add_symbol(engine, symbol, strategy)
    return expected


def start_execution(symbols: Sequence[str] | None, days: Sequence[dt.date], strategy: str | None = None,
                    options: dict[str, Any] | None = None, *, client: Celery | None = None) -> AsyncResult:
    """Send one registry execution (`chronox.registry.execute`) to the workers; returns its AsyncResult.

    `options` are run options (chronox.settings.RUN_OPTIONS), sent only when given. `client`
    is the test's celery_client; without it, a client is made from the environment as it is
    now (after start_worker(), this test's broker).
    """
    kwargs: dict[str, Any] = {"symbols": list(symbols) if symbols else None,
                              "start": days[0].isoformat(), "end": days[-1].isoformat()}
    if strategy:
        kwargs["strategy"] = strategy
    if options:
        kwargs["options"] = options
    if client is None:
        from chronox.celery_app import make_client
        from chronox.settings import load_settings

        client = make_client(load_settings())
    return client.send_task("chronox.registry.execute", kwargs=kwargs)


# -- waiting ----------------------------------------------------------------------------

def broker_backlog(redis_url: str) -> int:
    """Task messages the Redis broker still holds: queued, or delivered and not yet acked.

    Tasks ack late (after their callbacks, retries and chord parts have been sent), and
    a countdown retry waits unacked in a worker, so zero here means no task of any run
    is queued, running or due later.
    """
    import redis

    from celeryconfig import task_queues

    with redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5) as client:
        return sum(client.llen(q.name) for q in task_queues) + client.hlen("unacked")


def wait_for_idle_broker(redis_url: str, timeout: float = 120, quiet_for: float = 1.0) -> None:
    """Wait until the broker holds no task message for `quiet_for` seconds on end
    (an unreachable broker is not idle)."""
    import redis

    def backlog() -> int | None:
        try:
            return broker_backlog(redis_url)
        except redis.RedisError:
            return None

    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while True:
        now = time.monotonic()
        if backlog() == 0:
            quiet_since = quiet_since or now
            if now - quiet_since >= quiet_for:
                return
        else:
            quiet_since = None
        if now >= deadline:
            raise AssertionError(f"broker still holds {backlog()} task message(s) after {timeout}s")
        time.sleep(0.2)


def wait_for_run(url: str, redis_url: str, symbols: Sequence[str], timeout: float = 120) -> dict[str, str]:
    """A run is over when its symbols are settled and no task of it is left anywhere."""
    started = time.monotonic()
    result = wait_for_statuses(url, symbols, timeout)
    wait_for_idle_broker(redis_url, max(5.0, timeout - (time.monotonic() - started)))
    return statuses(url, symbols) or result


# -- Kafka --------------------------------------------------------------------------------

def read_envelopes(kafka: HasBootstrap, topics: Sequence[str], timeout_ms: int = 3000) -> dict[str, list[dict]]:
    """Every JSON envelope on `topics`, from the beginning, per topic (one consumer for all)."""
    from kafka import KafkaConsumer

    out: dict[str, list[dict]] = {t: [] for t in topics}
    consumer = KafkaConsumer(*topics, bootstrap_servers=[kafka.bootstrap], auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=timeout_ms, group_id=None)
    try:
        for message in consumer:
            out[message.topic].append(json.loads(message.value))
    finally:
        consumer.close()
    return out


def backfill_envelopes(kafka: HasBootstrap, symbols: Sequence[str]) -> list[dict]:
    topics = [f"chronox.backfill.{s}" for s in symbols]
    return [e for envelopes in read_envelopes(kafka, topics).values() for e in envelopes]


def completion_events(envelopes: Iterable[dict]) -> Counter:
    """backfill_completed events with status completed, per symbol."""
    return Counter(e["symbol"] for e in envelopes
                   if e.get("event") == "backfill_completed" and e.get("status") == "completed")


def assert_completion_events(kafka: HasBootstrap, symbols: Sequence[str], days: Sequence[dt.date],
                             expected: Expected, runs: int = 1) -> None:
    """Each run announced every symbol's completion once, with the counts of the one set of rows."""
    envelopes = backfill_envelopes(kafka, symbols)
    assert completion_events(envelopes) == {s: runs for s in symbols}
    for event in (e for e in envelopes if e["event"] == "backfill_completed"):
        assert (event["rows"], event["days"]) == (sum(expected[(event["symbol"], d)] for d in days), len(days))


class PrivateKafka:
    """librdkafka's mock cluster in a child process of its own, so a test can take it away.

    SIGSTOP freezes the broker at its address: the kernel still accepts connections, but
    nothing answers, so kafka-python's clients fail by their own timeouts (NoBrokersAvailable
    when a producer is created, KafkaTimeoutError on metadata and flush), exactly as with a
    broker that hangs or a network that drops packets. SIGCONT brings it back unchanged,
    with every message it had acknowledged.
    """

    _CHILD = (
        "import sys, confluent_kafka\n"
        "p = confluent_kafka.Producer({'test.mock.num.brokers': 1, 'bootstrap.servers': 'unused',"
        " 'log_level': 0})\n"
        "b = next(iter(p.list_topics(timeout=10).brokers.values()))\n"
        "print(f'{b.host}:{b.port}', flush=True)\n"
        "sys.stdin.read()  # lives until the parent closes stdin or dies\n"
    )

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self._CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.bootstrap = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not self.bootstrap:
            self.proc.kill()
            raise RuntimeError("the private mock Kafka cluster did not start")
        self.paused = False

    def pause(self) -> float:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True
        return time.monotonic()

    def resume(self) -> float:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False
        return time.monotonic()

    def json_messages(self, topic: str, timeout_ms: int = 3000) -> list[dict]:
        return read_envelopes(self, [topic], timeout_ms)[topic]

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the end state --------------------------------------------------------------------------

def db_bars(url: str, symbols: Sequence[str]) -> dict[str, tuple]:
    """Stored bars of `symbols` by dedup_key, as the values an envelope carries."""
    with get_engine(url).connect() as conn:
        rows = conn.execute(text("SELECT symbol, ts, open, high, low, close, volume, source FROM ohlcv_1m "
                                 "WHERE symbol = ANY(:symbols)"), {"symbols": list(symbols)})
        return {f"{symbol}|1m|{isoformat_utc(ts)}": (o, h, low, c, v, source)
                for symbol, ts, o, h, low, c, v, source in rows}


def assert_same_end_state_as_fault_free(url: str, kafka: HasBootstrap, symbols: Sequence[str],
                                        days: Sequence[dt.date], expected: Expected,
                                        message: Any = WARNING_OR_NONE) -> int:
    """Assert the end state of a fault-free run of `symbols` over `days`; return the number of
    duplicate bar envelopes on Kafka (at-least-once allows them).

    `message` is the registry error_message a fault-free run leaves (default: none or a warning).
    Runs on PostgreSQL (`= ANY`).
    """
    engine = get_engine(url)
    wanted = set(symbols)
    rows = {k: n for k, n in rows_by_symbol_day(url).items() if k[0] in wanted}
    assert rows == {(s, d.isoformat()): expected[(s, d)] for s in symbols for d in days}, "rows per symbol-day"
    with engine.connect() as conn:
        total, distinct = conn.execute(text("SELECT count(*), count(DISTINCT (symbol, ts)) FROM ohlcv_1m "
                                            "WHERE symbol = ANY(:s)"), {"s": list(symbols)}).one()
        coverage = conn.execute(text("SELECT symbol, trading_day, count(*), sum(rows) FROM coverage "
                                     "WHERE symbol = ANY(:s) GROUP BY symbol, trading_day"),
                                {"s": list(symbols)}).all()
        outbox = conn.execute(text("SELECT count(*) FROM publish_outbox WHERE symbol = ANY(:s)"),
                              {"s": list(symbols)}).scalar_one()
    assert total == distinct == sum(expected[(s, d)] for s in symbols for d in days), "duplicate bars"
    # one coverage row per symbol-day, counting exactly the stored rows
    assert {(s, d): (n, int(r)) for s, d, n, r in coverage} == \
        {(s, d): (1, expected[(s, d)]) for s in symbols for d in days}, "coverage"
    assert outbox == 0, "symbol-days left unpublished in the outbox"
    for symbol in symbols:
        row = registry.get_symbol(engine, symbol)
        assert (row.status, row.last_backfill) == ("completed", days[-1]), (symbol, row)
        if message is WARNING_OR_NONE:
            assert row.error_message is None or row.warning is not None, (symbol, row)
        else:
            assert row.error_message == message, (symbol, row)

    stored = db_bars(url, symbols)
    envelopes = [e for e in backfill_envelopes(kafka, symbols) if e.get("event") == "bar" and e.get("tf") == "1m"]
    keys = Counter(e["dedup_key"] for e in envelopes)
    missing = set(stored) - set(keys)
    assert not missing, f"{len(missing)} stored bar(s) never reached Kafka, e.g. {sorted(missing)[:3]}"
    assert set(keys) == set(stored), f"envelopes of bars not stored: {sorted(set(keys) - set(stored))[:3]}"
    for e in envelopes:  # a duplicate is the same bar again, never another version of it
        o = e["ohlcv"]
        assert (o["open"], o["high"], o["low"], o["close"], o["volume"], e["source"]) == stored[e["dedup_key"]], e
    return sum(keys.values()) - len(keys)


def report(record_property: Callable[[str, Any], None], **figures: Any) -> None:
    """Figures a fault test measured: in the JUnit XML (record_property) and on stdout (-s)."""
    for name, value in figures.items():
        record_property(name, value)
    print("\nFIGURES " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
