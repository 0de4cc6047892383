"""Kafka publishing: ChronoX's publisher (envelopes built and serialized per bar) versus a
bare kafka-python send() loop of the same pre-serialized bytes, same producer settings,
both against librdkafka's mock broker in this run.
Last line: `kafka_publish ratio=<chronox msgs/s / bare msgs/s>`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import mock_kafka  # noqa: E402


def make_bars(count: int, symbols: int) -> list[tuple]:
    start = dt.datetime(2024, 3, 5, 9, 0, tzinfo=dt.UTC)
    bars = []
    for i in range(count):
        ts = (start + dt.timedelta(minutes=i // symbols)).isoformat().replace("+00:00", "Z")
        price = 100 + (i % 997) / 100
        bars.append((f"B{i % symbols:03d}", ts, price, price + 0.05, price - 0.05, price + 0.01, float(100 + i % 50)))
    return bars


def run_chronox(bootstrap: str, bars: list[tuple]) -> float:
    from chronox.publish import KafkaPublisher

    publisher = KafkaPublisher([bootstrap])
    started = time.perf_counter()
    for symbol, ts, o, h, low, c, v in bars:
        publisher.send_bar(symbol, "1m", ts, o, h, low, c, v, "flatpack")
    publisher.flush()
    elapsed = time.perf_counter() - started
    publisher.close()
    return elapsed


def run_bare(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> float:
    from kafka import KafkaProducer

    from chronox.publish import PRODUCER_SETTINGS

    producer = KafkaProducer(bootstrap_servers=[bootstrap], **PRODUCER_SETTINGS)
    started = time.perf_counter()
    for topic, key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=100_000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each counts")
    args = parser.parse_args()
    from chronox.publish import bar_envelope, topic_for

    _holder, bootstrap = mock_kafka()
    bars = make_bars(args.bars, args.symbols)
    messages = [(topic_for("backfill", s), s.encode(),
                 json.dumps(bar_envelope(s, "1m", ts, o, h, low, c, v, "flatpack"), separators=(",", ":")).encode())
                for s, ts, o, h, low, c, v in bars]
    size = sum(len(m[2]) for m in messages) / len(messages)
    print(f"{args.bars} bars over {args.symbols} topics, {size:.0f}-byte envelopes, mock broker {bootstrap}")
    run_bare(bootstrap, messages[:5000])  # create topics and warm up both paths
    run_chronox(bootstrap, bars[:5000])
    chronox_best = bare_best = float("inf")
    for _ in range(args.rounds):
        bare_best = min(bare_best, run_bare(bootstrap, messages))
        chronox_best = min(chronox_best, run_chronox(bootstrap, bars))
    chronox_rate, bare_rate = args.bars / chronox_best, args.bars / bare_best
    print(f"bare kafka-python send() of pre-serialized bytes: {bare_best:.2f} s, {bare_rate:,.0f} msgs/s")
    print(f"chronox publisher (envelope + serialization): {chronox_best:.2f} s, {chronox_rate:,.0f} msgs/s")
    print(f"kafka_publish ratio={chronox_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
