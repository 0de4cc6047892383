"""Real-time latency under a backfill: how late the `latest_prices` refresh of 500 active
symbols completes after its scheduled time while a 2,000-symbol backfill saturates the
workers' Polygon budget.

Set-up, as deployed by docker-compose on one host: a fresh PostgreSQL database, Redis
(broker, result backend, price cache and the shared request budget), librdkafka's mock
Kafka (per-kind topics), and the Polygon REST stand-in (chronox/testing/polygon_rest.py)
answering with a realistic latency: 150 ms per all-tickers snapshot (250 tickers), 80 ms per
minute-aggregates request. Workers: `worker` (ETL queues, 4 processes) and
`worker-realtime` (chronox.realtime, 2 processes). The budget is 50 requests per second,
of which CHRONOX_REALTIME_BUDGET_SHARE (0.3) is held for real-time work.

The backfill is one registry execution of 2,000 `api` symbols over two weeks with no
coverage: two REST windows (requests) per symbol, 4,000 in all, far more than ETL's 35
requests per second serve during the measurement. The refresh is sent as beat sends it
(task `chronox.realtime.latest_prices`, the beat entry's options) every --interval seconds;
its `now` kwarg pins an instant inside an NYSE session so the gate opens whatever the
clock says. A run is complete when the price cache of every batch carries a fetch time
after the run's scheduled time (polled every 20 ms).

Measured: 20 runs with idle workers, then 20 runs during the backfill, and the baseline:
the bare polygon-api-client fetching the same two batches in one process.
`--layout shared` runs the same with one worker for every queue and no reserve (the layout
before the split), for comparison. Prints `realtime_latency ratio=<loaded p95 / bare p95>`,
then `realtime_latency p95=<seconds>` (loaded) last.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PG_ADMIN_URL  # noqa: E402

from chronox.testing.services import MockKafka, temporary_database  # noqa: E402

KEY = "bench-key"
REDIS_URL = os.environ.get("CHRONOX_BENCH_RT_REDIS_URL", "redis://127.0.0.1:6379/5")
BROKER_URL = os.environ.get("CHRONOX_BENCH_RT_BROKER_URL", "redis://127.0.0.1:6379/4")
IN_SESSION = "2024-01-17T18:00:00Z"  # a Wednesday, 13:00 New York
BACKFILL_DAYS = (dt.date(2024, 1, 8), dt.date(2024, 1, 19))  # two 7-day windows (MLK day between)
BARS_PER_DAY = 5


def names(prefix: str, count: int) -> list[str]:
    import itertools
    import string

    tails = ("".join(p) for p in itertools.product(string.ascii_uppercase, repeat=3))
    return [prefix + tail for tail in itertools.islice(tails, count)]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if math.inf not in values \
        else sorted(values)[math.ceil(0.95 * len(values)) - 1]


def describe(values: list[float]) -> str:
    lost = sum(1 for v in values if v == math.inf)
    return (f"p95 {p95(values):.3f} s, median {statistics.median(values):.3f} s, max {max(values):.3f} s"
            + (f"; {lost} of {len(values)} runs never completed" if lost else ""))


def serve(fake, active: list[str], backfill: list[str]) -> None:  # type: ignore[no-untyped-def]
    from chronox.calendar import NEW_YORK, trading_days

    for i, symbol in enumerate(active):
        fake.set_snapshot(symbol, price=20 + i % 300 + (i % 89) / 100, volume=1000 + i,
                          updated_ns=1_705_514_400_000_000_000 + i, prev_close=20.0)
    for i, symbol in enumerate(backfill):
        bars = []
        for day in trading_days(*BACKFILL_DAYS):
            open_ms = int(dt.datetime.combine(day, dt.time(9, 30), NEW_YORK).timestamp() * 1000)
            for m in range(BARS_PER_DAY):
                price = 30 + i % 200 + m / 10
                bars.append({"t": open_ms + m * 60_000, "o": price, "h": price + 0.05, "l": price - 0.05,
                             "c": price + 0.02, "v": 100 + m, "vw": price, "n": 3})
        fake.add_minute_bars(symbol, bars)


def register(url: str, active: list[str], backfill: list[str]) -> None:
    from chronox import registry
    from chronox.db import get_engine

    engine = get_engine(url)
    registry.add_symbols(engine, active, "snapshot")
    registry.add_symbols(engine, backfill, "api")


def bare_fetch(base_url: str, batches: list[list[str]]) -> float:
    from polygon import RESTClient

    client = RESTClient(KEY, base=base_url, retries=0)
    started = time.perf_counter()
    got = sum(len(client.get_snapshot_all("stocks", tickers=batch)) for batch in batches)
    assert got == sum(map(len, batches)), got
    return time.perf_counter() - started


class Refreshes:
    """Sends the refresh at fixed instants, as beat would, and times each run to completion."""

    def __init__(self, client, heads: list[str], interval: float, runs: int):  # type: ignore[no-untyped-def]
        import redis

        from chronox.settings import load_settings
        from chronox.tasks.config import celery_config

        self.client, self.heads, self.interval, self.runs = client, heads, interval, runs
        self.entry = celery_config(load_settings())["beat_schedule"]["latest_prices"]
        self.cache = redis.Redis.from_url(REDIS_URL)

    def _fetched(self) -> float:
        """The oldest fetch time (epoch s) among the first symbols of each batch."""
        values = self.cache.mget([f"latest_price:{s}" for s in self.heads])
        if any(v is None for v in values):
            return 0.0
        return min(dt.datetime.fromisoformat(json.loads(v)["timestamp"]).timestamp() for v in values)

    def measure(self) -> list[float]:
        start = float(int(time.time()) + 2)
        scheduled = [start + k * self.interval for k in range(self.runs)]
        done: list[float | None] = [None] * self.runs

        def send() -> None:
            for at in scheduled:
                time.sleep(max(0.0, at - time.time()))
                self.client.send_task(self.entry["task"], kwargs={"now": IN_SESSION}, **self.entry["options"])

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = scheduled[-1] + 60
        while any(d is None for d in done) and time.time() < deadline:
            fetched, now = self._fetched(), time.time()
            for k, at in enumerate(scheduled):
                if done[k] is None and fetched >= at:
                    done[k] = now - at
            time.sleep(0.02)
        sender.join()
        # A run still not done a minute after the last one was due counts as never done.
        return [math.inf if d is None else d for d in done]


def start_workers(client, layout: str, log_dir: str) -> list:  # type: ignore[no-untyped-def]
    from chronox.testing.workers import WorkerProcess

    env = {**os.environ, "CHRONOX_TEST_LOG_DIR": log_dir}
    if layout == "shared":
        workers = [WorkerProcess(env, concurrency=6, name="all")]
    else:  # docker-compose: `worker` and `worker-realtime`
        etl = "chronox.control,chronox.flatfiles,chronox.rest,chronox.publish,chronox.sinks"
        workers = [WorkerProcess(env, concurrency=4, queues=etl, name="etl"),
                   WorkerProcess(env, concurrency=2, queues="chronox.realtime", name="realtime")]
    for worker in workers:
        worker.wait_ready(client)
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--active", type=int, default=500)
    parser.add_argument("--backfill", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between scheduled refreshes")
    parser.add_argument("--rate-limit", type=int, default=50, help="Polygon requests per second, all workers")
    parser.add_argument("--snapshot-latency", type=float, default=0.15)
    parser.add_argument("--aggs-latency", type=float, default=0.08)
    parser.add_argument("--layout", choices=("split", "shared"), default="split")
    args = parser.parse_args()

    import redis

    from chronox.testing.polygon_rest import FakePolygonRest

    active, backfill = names("R", args.active), names("B", args.backfill)
    for url in (REDIS_URL, BROKER_URL):
        redis.Redis.from_url(url).flushdb()
    kafka = MockKafka()
    with FakePolygonRest(api_key=KEY) as fake, temporary_database("chronox_bench_realtime", PG_ADMIN_URL) as url:
        serve(fake, active, backfill)
        fake.inject("/v2/snapshot", "slow", count=10**9, delay=args.snapshot_latency)
        fake.inject("/v2/aggs", "slow", count=10**9, delay=args.aggs_latency)
        register(url, active, backfill)
        os.environ.update({
            "CHRONOX_DATABASE_URL": url, "CHRONOX_REDIS_URL": REDIS_URL, "CHRONOX_BROKER_URL": BROKER_URL,
            "CHRONOX_KAFKA_BROKERS": kafka.bootstrap, "CHRONOX_KAFKA_TOPIC_MODE": "per-kind",
            "POLYGON_API_KEY": KEY, "CHRONOX_POLYGON_BASE_URL": fake.base_url,
            "CHRONOX_POLYGON_RATE_LIMIT": str(args.rate_limit), "CHRONOX_POLYGON_RATE_WINDOW": "1",
            "CHRONOX_REALTIME_BUDGET_SHARE": "0" if args.layout == "shared" else "0.3",
            "CHRONOX_METRICS_PORT": "0"})
        from chronox.celery_app import make_client
        from chronox.ratelimit import budget_split
        from chronox.settings import load_settings
        from chronox.snapshot import batches

        settings = load_settings()
        chunks = batches(sorted(active), settings.snapshot_batch)
        etl_budget, rt_budget = budget_split(args.rate_limit, settings.realtime_budget_share)
        print(f"{len(active)} active symbols ({len(chunks)} snapshot batches), {len(backfill)} backfill symbols; "
              f"Polygon stand-in latency {args.snapshot_latency * 1000:.0f} ms per snapshot, "
              f"{args.aggs_latency * 1000:.0f} ms per aggregates request; budget {args.rate_limit}/s "
              f"(ETL {etl_budget}, real-time reserve {rt_budget or 'none'}); layout {args.layout}")

        bare = [bare_fetch(fake.base_url, chunks) for _ in range(args.runs)]
        print(f"baseline, bare client fetching the same {len(chunks)} batches: p95 {p95(bare):.3f} s, "
              f"median {statistics.median(bare):.3f} s")

        client = make_client(settings)
        workers = start_workers(client, args.layout, tempfile.mkdtemp(prefix="chronox-bench-rt-"))
        try:
            refreshes = Refreshes(client, [c[0] for c in chunks], args.interval, args.runs)
            idle = refreshes.measure()
            print(f"latest_prices, idle workers: {describe(idle)}")

            client.send_task("chronox.registry.execute", kwargs={
                "symbols": backfill, "start": BACKFILL_DAYS[0].isoformat(), "end": BACKFILL_DAYS[1].isoformat()})
            deadline = time.time() + 180
            while fake.count_requests("/v2/aggs") < 30:  # the fan-out is done, windows are flowing
                if time.time() > deadline:
                    raise SystemExit("the backfill did not start")
                time.sleep(0.2)
            aggs_before, started = fake.count_requests("/v2/aggs"), time.time()
            loaded = refreshes.measure()
            elapsed = time.time() - started
            aggs = fake.count_requests("/v2/aggs") - aggs_before
            print(f"backfill during the measurement: {aggs} aggregates requests in {elapsed:.0f} s "
                  f"({aggs / elapsed:.1f}/s; at most {fake.max_requests_in_window(1.0, '/v2/aggs')} in any second, "
                  f"{fake.max_requests_in_window(1.0)} with the snapshots), "
                  f"{fake.count_requests('/v2/aggs')} of {2 * len(backfill)} done")
            print(f"latest_prices during the backfill: {describe(loaded)} "
                  f"(target: p95 within 5 s of the scheduled time)")
        finally:
            for worker in workers:
                worker.stop()
            client.close()
    print(f"realtime_latency ratio={p95(loaded) / p95(bare):.2f}")
    print(f"realtime_latency p95={p95(loaded):.2f}")


if __name__ == "__main__":
    main()
