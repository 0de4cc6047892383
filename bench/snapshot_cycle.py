"""Snapshot refresh cycle: ChronoX refreshing every registry symbol with the snapshot strategy
versus the bare polygon-api-client fetching the same snapshots.

5,000 symbols registered with strategy `snapshot` in a fresh PostgreSQL database; the
Polygon REST stand-in (chronox/testing/polygon_rest.py) serves their snapshots on 127.0.0.1
from this process; Redis db 2 (flushed) takes the price cache and the pub/sub mirror,
db 3 is the Celery broker (the test suite claims databases 8-15); Kafka is librdkafka's mock broker.

A cycle is `chronox.snapshot.refresh`: list the snapshot symbols, one task per 250 tickers,
each making one all-tickers request, publishing one snapshot event per symbol to Kafka,
caching and mirroring in Redis, storing the latest snapshot per symbol and stamping
last_snapshot; it ends when every batch is done. It is measured twice: in-process (the
embedded default, every batch one after another in this process) and as deployed (sent
to the broker, run by one worker process per core). The baseline is
RESTClient.get_snapshot_all over the same batches in one process, nothing else.
Last line: `snapshot_cycle ratio=<deployed cycle seconds / bare fetch seconds>`; the
in-process ratio is printed above it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PG_ADMIN_URL  # noqa: E402

from chronox.testing.services import MockKafka, temporary_database  # noqa: E402

KEY = "bench-key"
REDIS_URL = os.environ.get("CHRONOX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
BROKER_URL = os.environ.get("CHRONOX_BENCH_BROKER_URL", "redis://127.0.0.1:6379/3")


def symbols_of(count: int) -> list[str]:
    import itertools
    import string

    names = ("".join(p) for n in (3, 4) for p in itertools.product(string.ascii_uppercase, repeat=n))
    return list(itertools.islice(names, count))


def register(url: str, symbols: list[str]) -> None:
    import datetime as dt

    from chronox.db import get_engine
    from chronox.models import SymbolRegistry

    now = dt.datetime.now(dt.UTC)
    with get_engine(url).begin() as conn:
        conn.execute(SymbolRegistry.__table__.insert(), [
            {"symbol": s, "strategy": "snapshot", "timeframe": "1m", "enabled": True, "status": "idle",
             "created_at": now, "updated_at": now} for s in symbols])


def bare_fetch(base_url: str, symbols: list[str], batch: int) -> tuple[float, int]:
    from polygon import RESTClient

    client = RESTClient(KEY, base=base_url, retries=0)
    started = time.perf_counter()
    got = 0
    for i in range(0, len(symbols), batch):
        got += len(client.get_snapshot_all("stocks", tickers=symbols[i:i + batch]))
    return time.perf_counter() - started, got


def chronox_cycle() -> tuple[float, dict]:
    from chronox.tasks.rest import snapshot_refresh

    started = time.perf_counter()
    outcome = snapshot_refresh.apply()
    elapsed = time.perf_counter() - started
    if not outcome.successful():
        raise SystemExit(f"refresh failed: {outcome.result!r}")
    return elapsed, outcome.result


def start_workers(client, processes: int, log_dir: str):  # type: ignore[no-untyped-def]
    """`celery worker` processes on the Redis broker, as deployed; returns them once they answer `client`."""
    from chronox.testing.workers import WorkerProcess

    os.environ["CHRONOX_TEST_LOG_DIR"] = log_dir
    worker = WorkerProcess(dict(os.environ), concurrency=processes, queues="chronox.rest,chronox.control")
    worker.wait_ready(client)
    return worker


def worker_cycle(client, timeout: float = 120) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = client.send_task("chronox.snapshot.refresh")
    # Polled rather than get(): a get() leaves a Redis subscription behind per replaced task.
    while not result.ready():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"refresh not done in {timeout:.0f}s")
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    if not result.successful():
        raise SystemExit(f"refresh failed: {result.result!r}")
    return elapsed, result.result


def check(url: str, symbols: list[str]) -> None:
    """The cycle did everything it claims, for every symbol."""
    import redis
    from sqlalchemy import text

    from chronox.db import get_engine

    with get_engine(url).connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM snapshot_latest")).scalar_one()
        stamped = conn.execute(text("SELECT count(*) FROM symbol_registry "
                                    "WHERE last_snapshot IS NOT NULL")).scalar_one()
    client = redis.Redis.from_url(REDIS_URL)
    cached = sum(1 for _ in client.scan_iter("latest_price:*", count=1000))
    if not stored == stamped == cached == len(symbols):
        raise SystemExit(f"incomplete cycle: stored {stored}, stamped {stamped}, cached {cached}")


def reset(url: str) -> None:
    """Forget the previous mode's results so check() sees only what the next mode did."""
    import redis
    from sqlalchemy import text

    from chronox.db import get_engine

    with get_engine(url).begin() as conn:
        conn.execute(text("DELETE FROM snapshot_latest"))
        conn.execute(text("UPDATE symbol_registry SET last_snapshot = NULL"))
    redis.Redis.from_url(REDIS_URL).flushdb()


def measure(cycle, rounds: int) -> tuple[float, float, list[float]]:  # type: ignore[no-untyped-def]
    """(first cycle, best cycle, all measured cycles); the first warms connections and topics."""
    first = cycle()[0]
    cycles = [cycle()[0] for _ in range(rounds)]
    return first, min(cycles), cycles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5, help="cycles measured per mode; the best counts")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2,
                        help="worker processes for the deployed cycle (default: one per core)")
    # One topic per kind keyed by symbol is the setting for thousands of symbols: kafka-python
    # fetches metadata for each new topic on its first send (about 0.25 s each on the mock).
    parser.add_argument("--topic-mode", default="per-kind", choices=("per-kind", "per-symbol"))
    args = parser.parse_args()

    import tempfile

    import redis

    from chronox.testing.polygon_rest import FakePolygonRest

    symbols = symbols_of(args.symbols)
    redis.Redis.from_url(REDIS_URL).flushdb()
    redis.Redis.from_url(BROKER_URL).flushdb()
    kafka = MockKafka()  # the cluster lives as long as this object
    bootstrap = kafka.bootstrap
    with FakePolygonRest(api_key=KEY) as fake, temporary_database("chronox_bench_snapshot", PG_ADMIN_URL) as url:
        for i, s in enumerate(symbols):
            fake.set_snapshot(s, price=10 + i % 500 + (i % 97) / 100, volume=1000 + i,
                              updated_ns=1_733_263_200_000_000_000 + i * 1_000_000, prev_close=10.0)
        register(url, symbols)
        os.environ.update({"CHRONOX_DATABASE_URL": url, "CHRONOX_REDIS_URL": REDIS_URL,
                           "CHRONOX_KAFKA_BROKERS": bootstrap, "POLYGON_API_KEY": KEY,
                           "CHRONOX_POLYGON_BASE_URL": fake.base_url, "CHRONOX_SNAPSHOT_METHOD": "snapshot",
                           "CHRONOX_KAFKA_TOPIC_MODE": args.topic_mode, "CHRONOX_BROKER_URL": BROKER_URL})
        from chronox.settings import load_settings

        settings = load_settings()
        print(f"{len(symbols)} snapshot symbols, {settings.snapshot_batch} tickers per request, "
              f"Kafka topics {settings.kafka_topic_mode}, PostgreSQL, Redis, mock Kafka")

        bare = min(bare_fetch(fake.base_url, symbols, settings.snapshot_batch)[0] for _ in range(args.rounds))
        print(f"bare client fetch, one process: {bare:.2f} s")

        first, inline, cycles = measure(chronox_cycle, args.rounds)
        check(url, symbols)
        print(f"chronox cycle in-process (embedded default, one process): {inline:.2f} s "
              f"(first {first:.2f}; rounds {', '.join(f'{c:.2f}' for c in cycles)}); "
              f"ratio {inline / bare:.2f}")

        reset(url)
        from chronox.celery_app import make_client

        client = make_client(settings)
        worker = start_workers(client, args.processes, tempfile.mkdtemp(prefix="chronox-bench-"))
        try:
            first, deployed, cycles = measure(lambda: worker_cycle(client), args.rounds)
        finally:
            worker.stop()
            client.close()
        check(url, symbols)
        print(f"chronox cycle as deployed (chronox.snapshot.refresh sent to {args.processes} worker "
              f"processes, until every batch is stored, cached and published): {deployed:.2f} s "
              f"(first {first:.2f}; rounds {', '.join(f'{c:.2f}' for c in cycles)})")
        print(f"snapshot_cycle ratio={deployed / bare:.2f}")
    del kafka


if __name__ == "__main__":
    main()
