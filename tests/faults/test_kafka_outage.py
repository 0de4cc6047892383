"""Kafka unreachable for part of a registry run on real workers, in both publish modes.

The broker is a mock cluster private to the test (the session's shared one cannot be
taken away), frozen with SIGSTOP and thawed with SIGCONT at the same address; see
support.PrivateKafka. Two tests start the run while it is frozen:

- kafka-first: a day commits only once Kafka has acknowledged its bars, so nothing is
  stored during the outage; the day loads fail and retry with backoff, and the run
  completes after Kafka is back.
- db-first: the run commits every bar and completes without Kafka; the symbol-days wait
  in the publish outbox, and the outbox drain (the task beat sends every
  CHRONOX_OUTBOX_DRAIN_SECONDS) publishes them once Kafka is back.

A third freezes it in the middle of a kafka-first run, when the worker's producer is
connected and has batches in flight.
"""
import time

import pytest
from sqlalchemy import text

from chronox.db import get_engine
from tests.conftest import DAYS
from tests.faults.support import (
    assert_completion_events,
    assert_same_end_state_as_fault_free,
    backfill_envelopes,
    completion_events,
    prepare_run,
    report,
    start_execution,
    wait_for_idle_broker,
    wait_for_run,
)
from tests.helpers import count, statuses, wait_for_statuses, wait_until

pytestmark = pytest.mark.timeout(150)

# Longer than a producer's connection timeout (2 s), so every task meets the outage
# several times and backs off, and short enough for the retries (max_retries 8) to last.
OUTAGE = 12.0
# Mid-run: how long after the pause a load already acknowledged by Kafka may take to commit.
SETTLE = 1.0


def symbol_rows(url, symbols):
    return count(url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = ANY(:s)", s=list(symbols))


def outbox(url, symbols):
    with get_engine(url).connect() as conn:
        return sorted(tuple(r) for r in conn.execute(
            text("SELECT symbol, trading_day FROM publish_outbox WHERE symbol = ANY(:s)"), {"s": list(symbols)}))


def test_kafka_first_run_retries_through_a_kafka_outage_and_completes(pg_url, flatfiles, private_kafka, start_worker,
                                                                      celery_client, redis_url, monkeypatch,
                                                                      record_property):
    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", "kafka-first")
    symbols = ["KFA", "KFB", "KFC"]
    expected = prepare_run(pg_url, flatfiles, symbols, DAYS)
    start_worker(concurrency=4)
    private_kafka.pause()
    start_execution(symbols, DAYS, client=celery_client).get(timeout=30)
    time.sleep(OUTAGE)
    # Nothing Kafka has not acknowledged is committed, and the run is still on.
    assert symbol_rows(pg_url, symbols) == 0
    assert statuses(pg_url, symbols) == {s: "running" for s in symbols}
    back = private_kafka.resume()
    assert wait_for_run(pg_url, redis_url, symbols) == {s: "completed" for s in symbols}
    recovery = time.monotonic() - back

    duplicates = assert_same_end_state_as_fault_free(pg_url, private_kafka, symbols, DAYS, expected)
    assert_completion_events(private_kafka, symbols, DAYS, expected)
    report(record_property, mode="kafka-first", outage_seconds=OUTAGE, recovery_seconds=round(recovery, 1),
           duplicates=duplicates, bars=sum(expected.values()))


def test_db_first_run_commits_during_a_kafka_outage_and_publishes_after(pg_url, flatfiles, private_kafka,
                                                                       start_worker, celery_client, redis_url,
                                                                       monkeypatch, record_property):
    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", "db-first")
    symbols = ["KDA", "KDB", "KDC"]
    expected = prepare_run(pg_url, flatfiles, symbols, DAYS)
    start_worker(concurrency=4)
    app = celery_client
    down = private_kafka.pause()
    start_execution(symbols, DAYS, client=celery_client).get(timeout=30)
    # The whole run completes while Kafka is down: every bar committed, every symbol-day
    # waiting in the outbox.
    assert wait_for_statuses(pg_url, symbols, timeout=90) == {s: "completed" for s in symbols}
    wait_for_idle_broker(redis_url, timeout=60)
    assert symbol_rows(pg_url, symbols) == sum(expected.values())
    pending = outbox(pg_url, symbols)
    assert pending == sorted((s, d) for s in symbols for d in DAYS)
    # A drain while Kafka is still down publishes nothing and keeps every entry.
    assert app.send_task("chronox.publish.drain_outbox").get(timeout=30) == {"published": 0,
                                                                              "pending": len(pending)}
    assert outbox(pg_url, symbols) == pending
    outage = time.monotonic() - down

    back = private_kafka.resume()
    drained = app.send_task("chronox.publish.drain_outbox").get(timeout=60)
    wait_until(lambda: not outbox(pg_url, symbols), 30, "outbox drained")
    recovery = time.monotonic() - back
    assert drained == {"published": sum(expected.values()), "pending": 0}

    duplicates = assert_same_end_state_as_fault_free(pg_url, private_kafka, symbols, DAYS, expected)
    # The completion events were due while Kafka was down; db-first logs them as missed
    # (chronox.publish.announce), so the topic has none: the registry row is the record.
    missed = len(symbols) - sum(completion_events(backfill_envelopes(private_kafka, symbols)).values())
    report(record_property, mode="db-first", outage_seconds=round(outage, 1), recovery_seconds=round(recovery, 1),
           duplicates=duplicates, bars=sum(expected.values()), completion_events_missed=missed)


def test_kafka_first_run_survives_an_outage_in_the_middle_of_its_loads(pg_url, flatfiles, private_kafka, start_worker,
                                                                       celery_client, redis_url, monkeypatch,
                                                                       record_property):
    """Kafka goes away after the first day committed: the worker's producer is connected
    and knows the topics, so this time the outage meets sends and flushes in flight."""
    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", "kafka-first")
    symbols = ["KMA", "KMB", "KMC"]
    expected = prepare_run(pg_url, flatfiles, symbols, DAYS)
    start_worker(concurrency=1)  # one process: the day loads run one after another, on one producer
    start_execution(symbols, DAYS, client=celery_client)
    wait_until(lambda: count(pg_url, "SELECT count(*) FROM coverage WHERE symbol = ANY(:s)", s=symbols),
               60, "a first day committed", interval=0.02)
    down = private_kafka.pause()
    # A load whose bars Kafka acknowledged just before the pause may still commit: let it.
    time.sleep(SETTLE)
    committed = count(pg_url, "SELECT count(DISTINCT trading_day) FROM coverage WHERE symbol = ANY(:s)", s=symbols)
    time.sleep(OUTAGE - SETTLE)
    stalled = count(pg_url, "SELECT count(DISTINCT trading_day) FROM coverage WHERE symbol = ANY(:s)", s=symbols)
    back = private_kafka.resume()
    # The outage hit the run, not its end: days were still to load when Kafka went away (the
    # next day's load was running on the one worker process), and none committed while it was away.
    assert committed < len(DAYS), f"all {committed} days committed before the outage: it hit no load"
    assert stalled == committed, f"{stalled - committed} day(s) committed while Kafka was away"
    assert wait_for_run(pg_url, redis_url, symbols) == {s: "completed" for s in symbols}
    recovery = time.monotonic() - back

    duplicates = assert_same_end_state_as_fault_free(pg_url, private_kafka, symbols, DAYS, expected)
    assert completion_events(backfill_envelopes(private_kafka, symbols)) == {s: 1 for s in symbols}
    report(record_property, mode="kafka-first mid-run", outage_seconds=round(back - down, 1),
           days_committed_before=committed, days_committed_during=stalled - committed,
           recovery_seconds=round(recovery, 1), duplicates=duplicates, bars=sum(expected.values()))
