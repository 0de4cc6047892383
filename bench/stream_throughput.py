"""Stream throughput: `chronox stream` end to end (parse, validate, store on PostgreSQL,
publish to Kafka) versus a bare websocket loop that only receives and JSON-decodes the
same frames. The local Polygon stand-in sends AM events for N symbols as fast as each
client takes them (websocket backpressure paces the sender).

Both clients run as their own processes, like the real service; the stand-in server,
the mock Kafka broker and the progress polling live in this process.
Last line: `stream_throughput ratio=<chronox bars/s / bare events/s>`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, mock_kafka, temporary_database  # noqa: E402

from tests.stubs.polygon_ws import FakePolygonStream  # noqa: E402

START_MS = 1_704_205_800_000  # 2024-01-02 14:30 UTC, a session open
WARMUP_MS = START_MS - 60_000


def symbols_for(count: int) -> list[str]:
    return [f"S{i:04d}" for i in range(count)]


def bare_client(url: str, symbols: int, count: int) -> None:
    """Child process: receive and json-decode `count` data events, print the wall time when done."""
    import asyncio

    from websockets.asyncio.client import connect

    async def main() -> None:
        async with connect(url, max_size=None, compression=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "auth", "params": "test-key"}))
            await ws.recv()
            channels = [f"AM.{s}" for s in symbols_for(symbols)]
            for i in range(0, len(channels), 500):
                await ws.send(json.dumps({"action": "subscribe", "params": ",".join(channels[i:i + 500])}))
            print("ready", flush=True)
            seen = 0
            while seen < count:
                events = json.loads(await ws.recv())
                seen += sum(1 for e in events if e.get("ev") == "AM")
            print(time.time(), flush=True)

    asyncio.run(main())


def wait_subscribed(server: FakePolygonStream, symbols: list[str], timeout: float = 60) -> None:
    wanted = {f"AM.{s}" for s in symbols}
    if not server.wait_for(lambda: wanted <= server.subscriptions, timeout):
        raise SystemExit(f"client subscribed to {len(server.subscriptions & wanted)} of {len(wanted)} channels")


def blast(server: FakePolygonStream) -> tuple[float, threading.Thread]:
    began = time.time()
    thread = threading.Thread(target=server.blast, daemon=True)
    thread.start()
    return began, thread


def run_bare(server: FakePolygonStream, symbols: list[str], count: int) -> float:
    child = subprocess.Popen([sys.executable, __file__, "--bare-client", server.url, str(len(symbols)), str(count)],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise SystemExit("bare client did not start")
    wait_subscribed(server, symbols)
    began, sender = blast(server)
    done = float(child.stdout.readline())
    child.wait(30)
    sender.join(30)
    server.drop_connections()
    return done - began


def register(url: str, symbols: list[str]) -> None:
    from chronox.db import get_engine
    from chronox.registry import REGISTRY

    with get_engine(url).begin() as conn:
        conn.execute(REGISTRY.insert(), [{"symbol": s, "strategy": "stream", "enabled": True, "status": "idle"}
                                         for s in symbols])


def bars_stored(url: str) -> int:
    from sqlalchemy import text

    from chronox.db import get_engine

    with get_engine(url).connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM ohlcv_1m")).scalar_one())


def wait_stored(url: str, expected: int, child: subprocess.Popen, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bars_stored(url) >= expected:
            return time.time()
        if child.poll() is not None:
            raise SystemExit(f"chronox stream exited with {child.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"only {bars_stored(url)} of {expected} bars stored after {timeout:.0f}s")


def run_chronox(server: FakePolygonStream, symbols: list[str], count: int, url: str,
                bootstrap: str, log_path: Path) -> tuple[float, dict]:
    register(url, symbols)
    env = {**os.environ, "CHRONOX_DATABASE_URL": url, "CHRONOX_KAFKA_BROKERS": bootstrap,
           # kafka-python fetches metadata per new topic (~0.2 s each): 2,000 per-symbol topics
           # would spend minutes on first sight; DESIGN recommends one topic per kind at this scale.
           "CHRONOX_KAFKA_TOPIC_MODE": "per-kind",
           "POLYGON_API_KEY": server.api_key, "CHRONOX_POLYGON_WS_URL": server.url}
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "chronox.cli", "stream"], env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            wait_subscribed(server, symbols)
            # One bar first, so connection set-up and topic metadata are not in the timing.
            server.send_am([{"sym": symbols[0], "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1, "s": WARMUP_MS}])
            wait_stored(url, 1, child, 60)
            began, sender = blast(server)
            done = wait_stored(url, count + 1, child, 600)
            sender.join(30)
        finally:
            child.send_signal(signal.SIGTERM)
            out, _ = child.communicate(timeout=60)
    stats = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return done - began, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--count", type=int, default=40_000, help="AM events sent to each client")
    parser.add_argument("--frame", type=int, default=100, help="events per websocket frame")
    parser.add_argument("--bare-client", nargs=3, metavar=("URL", "SYMBOLS", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_client:
        bare_client(args.bare_client[0], int(args.bare_client[1]), int(args.bare_client[2]))
        return
    symbols = symbols_for(args.symbols)
    holder, bootstrap = mock_kafka()
    with FakePolygonStream() as server, temporary_database("chronox_bench_stream") as url:
        server.prepare_blast(symbols, args.count, args.frame, start_ms=START_MS)
        bare = run_bare(server, symbols, args.count)
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "chronox-bench-stream.log"
        chronox, stats = run_chronox(server, symbols, args.count, url, bootstrap, log_path)
    bare_rate, chronox_rate = args.count / bare, args.count / chronox
    print(f"events: {args.count} AM events, {args.symbols} symbols, {args.frame} per frame")
    print(f"bare receive + json decode: {bare:.2f} s, {bare_rate:,.0f} events/s")
    print(f"chronox stream end to end (parse, PostgreSQL upsert, Kafka publish): {chronox:.2f} s, "
          f"{chronox_rate:,.0f} bars/s")
    print(f"chronox stats: written {stats.get('written')}, published {stats.get('published')}, "
          f"backlog high-water {stats.get('backlog_high')}, reader pauses {stats.get('backlog_full_waits')} "
          f"({stats.get('backlog_full_seconds')} s); log in {log_path}")
    print(f"target: >= 5,000 bars/s end to end: {'met' if chronox_rate >= 5000 else 'NOT met'}")
    print(f"stream_throughput ratio={chronox_rate / bare_rate:.2f}")
    del holder


if __name__ == "__main__":
    main()
