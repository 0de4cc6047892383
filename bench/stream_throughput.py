"""Stream throughput: `chronox stream` end to end (receive, parse, validate, store on
PostgreSQL, publish to Kafka) versus a bare kafka-python producer sending the same envelopes,
pre-serialized, with the same producer settings: the ceiling of any pipeline that publishes
one Kafka message per bar from one Python process. The local Polygon stand-in sends AM
events for N symbols as fast as the client takes them (websocket backpressure paces it).

Both run as their own processes, like the real service; the stand-in server, the mock
Kafka broker and the progress polling live in this process. Neither pays for topic
metadata in its timing: chronox gets one bar per symbol before the clock starts, the bare
producer sends one message per topic.
Last line: `stream_throughput ratio=<chronox bars/s / bare producer messages/s>`.
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
from _common import PG_ADMIN_URL, REPO  # noqa: E402

from chronox.testing.polygon_ws import FakePolygonStream  # noqa: E402
from chronox.testing.services import MockKafka, temporary_database  # noqa: E402

START_MS = 1_704_205_800_000  # 2024-01-02 14:30 UTC, a session open
WARMUP_MS = START_MS - 60_000


def symbols_for(count: int) -> list[str]:
    return [f"S{i:04d}" for i in range(count)]


def envelopes(server: FakePolygonStream, topic_mode: str) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of every bar the blast carries, as chronox publishes it."""
    from chronox.bars import isoformat_utc
    from chronox.publish import bar_envelope, topic_for
    from chronox.sources.websocket import am_to_bar

    out = []
    for frame in server._blast_frames:
        for event in json.loads(frame):
            b = am_to_bar(event)
            value = bar_envelope(b.symbol, "1m", isoformat_utc(b.ts) or "", b.open, b.high, b.low, b.close,
                                 b.volume, b.source)
            out.append((topic_for("stream", b.symbol, topic_mode), b.symbol.encode(),
                        json.dumps(value, separators=(",", ":")).encode()))
    return out


def bare_producer(bootstrap: str, path: str) -> None:
    """Child process: send the pickled (topic, key, value) messages with kafka-python, print the seconds."""
    import pickle

    from kafka import KafkaProducer

    from chronox.publish import PRODUCER_SETTINGS, TopicMetadata

    with open(path, "rb") as f:
        messages = pickle.load(f)
    producer = KafkaProducer(bootstrap_servers=[bootstrap], **PRODUCER_SETTINGS)
    # Topic metadata off the clock, in one request (one send per new topic would wait
    # 0.2 s each: 400 s for 2,000 per-symbol topics).
    TopicMetadata(producer).wait(list(dict.fromkeys(t for t, _, _ in messages)), 120)
    producer.send(messages[0][0], key=b"warm-up", value=b"{}")  # and the connection to the leader
    producer.flush()
    started = time.perf_counter()
    for topic, key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    print(time.perf_counter() - started, flush=True)
    producer.close()


def run_bare(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> float:
    import pickle
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pickle") as f:
        pickle.dump(messages, f)
        f.flush()
        out = subprocess.run([sys.executable, __file__, "--bare-producer", bootstrap, f.name], cwd=REPO,
                             capture_output=True, text=True, timeout=600, check=True).stdout
    return float(out.strip().splitlines()[-1])


def wait_subscribed(server: FakePolygonStream, symbols: list[str], timeout: float = 60) -> None:
    wanted = {f"AM.{s}" for s in symbols}
    if not server.wait_for(lambda: wanted <= server.subscriptions, timeout):
        raise SystemExit(f"client subscribed to {len(server.subscriptions & wanted)} of {len(wanted)} channels")


def blast(server: FakePolygonStream) -> tuple[float, threading.Thread]:
    began = time.time()
    thread = threading.Thread(target=server.blast, daemon=True)
    thread.start()
    return began, thread


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
                bootstrap: str, topic_mode: str, log_path: Path) -> tuple[float, dict]:
    register(url, symbols)
    env = {**os.environ, "CHRONOX_DATABASE_URL": url, "CHRONOX_KAFKA_BROKERS": bootstrap,
           "CHRONOX_KAFKA_TOPIC_MODE": topic_mode,
           "POLYGON_API_KEY": server.api_key, "CHRONOX_POLYGON_WS_URL": server.url}
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "chronox.cli", "stream"], env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            wait_subscribed(server, symbols)
            # A bar per symbol first, so connection set-up and topic metadata are not in the timing.
            server.send_am([{"sym": s, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1, "s": WARMUP_MS}
                            for s in symbols])
            wait_stored(url, len(symbols), child, 120)
            began, sender = blast(server)
            done = wait_stored(url, count + len(symbols), child, 600)
            sender.join(30)
        finally:
            child.send_signal(signal.SIGTERM)
            out, _ = child.communicate(timeout=60)
    stats = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return done - began, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--count", type=int, default=40_000, help="AM events sent to chronox")
    parser.add_argument("--frame", type=int, default=100, help="events per websocket frame")
    parser.add_argument("--topic-mode", choices=("per-kind", "per-symbol"), default="per-kind",
                        help="CHRONOX_KAFKA_TOPIC_MODE of both sides")
    parser.add_argument("--bare-producer", nargs=2, metavar=("BOOTSTRAP", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_producer:
        bare_producer(*args.bare_producer)
        return
    symbols = symbols_for(args.symbols)
    kafka = MockKafka()  # the cluster lives as long as this object
    bootstrap = kafka.bootstrap
    with FakePolygonStream() as server, temporary_database("chronox_bench_stream", PG_ADMIN_URL) as url:
        server.prepare_blast(symbols, args.count, args.frame, start_ms=START_MS)
        bare = run_bare(bootstrap, envelopes(server, args.topic_mode))
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "chronox-bench-stream.log"
        chronox, stats = run_chronox(server, symbols, args.count, url, bootstrap, args.topic_mode, log_path)
    bare_rate, chronox_rate = args.count / bare, args.count / chronox
    print(f"events: {args.count} AM events, {args.symbols} symbols, {args.frame} per frame, "
          f"topics {args.topic_mode}")
    print(f"bare kafka-python producer, the same envelopes pre-serialized: {bare:.2f} s, {bare_rate:,.0f} msgs/s")
    print(f"chronox stream end to end (parse, PostgreSQL upsert, Kafka publish): {chronox:.2f} s, "
          f"{chronox_rate:,.0f} bars/s")
    print(f"chronox stats: written {stats.get('written')}, published {stats.get('published')}, "
          f"backlog high-water {stats.get('backlog_high')}, reader pauses {stats.get('backlog_full_waits')} "
          f"({stats.get('backlog_full_seconds')} s); log in {log_path}")
    print(f"target: >= 10,000 bars/s end to end: {'met' if chronox_rate >= 10_000 else 'NOT met'}")
    print(f"stream_throughput ratio={chronox_rate / bare_rate:.2f}")
    del kafka


if __name__ == "__main__":
    main()
