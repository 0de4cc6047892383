"""Kafka publishing: ChronoX's publisher (an envelope built and serialized per bar) versus a
bare kafka-python send() loop of the same envelopes pre-serialized, with the same producer
settings (chronox.publish.PRODUCER_SETTINGS), both against librdkafka's mock broker in this run.

Each round uses a new producer on each side, and each producer has sent one message to every
topic before its clock starts: the steady-state send path is measured, not kafka-python's
first metadata lookup of a topic (~0.2 s per new topic; bench/topic_fanout.py measures that).
Last line: `kafka_publish ratio=<chronox msgs/s / bare msgs/s>`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's chronox, installed or not
from chronox.testing.services import MockKafka  # noqa: E402

Bar = tuple[str, str, float, float, float, float, float]


def make_bars(count: int, symbols: int) -> list[Bar]:
    start = dt.datetime(2024, 3, 5, 9, 0, tzinfo=dt.UTC)
    bars = []
    for i in range(count):
        ts = (start + dt.timedelta(minutes=i // symbols)).isoformat().replace("+00:00", "Z")
        price = 100 + (i % 997) / 100
        bars.append((f"B{i % symbols:03d}", ts, price, price + 0.05, price - 0.05, price + 0.01, float(100 + i % 50)))
    return bars


def run_chronox(bootstrap: str, bars: list[Bar], symbols: int) -> float:
    from chronox.publish import KafkaPublisher

    publisher = KafkaPublisher([bootstrap])
    for symbol, ts, o, h, low, c, v in bars[:symbols]:  # metadata of every topic, off the clock
        publisher.send_bar(symbol, "1m", ts, o, h, low, c, v, "flatpack")
    publisher.flush()
    started = time.perf_counter()
    for symbol, ts, o, h, low, c, v in bars:
        publisher.send_bar(symbol, "1m", ts, o, h, low, c, v, "flatpack")
    publisher.flush()
    elapsed = time.perf_counter() - started
    publisher.close()
    return elapsed


def run_bare(bootstrap: str, messages: list[tuple[str, bytes, bytes]], symbols: int) -> float:
    from kafka import KafkaProducer

    from chronox.publish import PRODUCER_SETTINGS

    producer = KafkaProducer(bootstrap_servers=[bootstrap], **PRODUCER_SETTINGS)
    for topic, key, value in messages[:symbols]:  # metadata of every topic, off the clock
        producer.send(topic, key=key, value=value)
    producer.flush()
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
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best of each side counts")
    args = parser.parse_args()
    from chronox.publish import bar_envelope, topic_for

    kafka = MockKafka()  # the cluster lives as long as this object
    bootstrap = kafka.bootstrap
    bars = make_bars(args.bars, args.symbols)
    # The baseline's bytes come from the standard library, not from ChronoX's serializer.
    messages = [(topic_for("backfill", s), s.encode(),
                 json.dumps(bar_envelope(s, "1m", ts, o, h, low, c, v, "flatpack"), separators=(",", ":")).encode())
                for s, ts, o, h, low, c, v in bars]
    size = sum(len(m[2]) for m in messages) / len(messages)
    print(f"{args.bars} bars over {args.symbols} topics, {size:.0f}-byte envelopes, mock broker {bootstrap}")
    chronox_runs: list[float] = []
    bare_runs: list[float] = []
    for _ in range(args.rounds):
        bare_runs.append(run_bare(bootstrap, messages, args.symbols))
        chronox_runs.append(run_chronox(bootstrap, bars, args.symbols))
    chronox_rate, bare_rate = args.bars / min(chronox_runs), args.bars / max(min(bare_runs), 1e-9)
    print("bare kafka-python send() of pre-serialized bytes: " + ", ".join(f"{t:.2f}" for t in bare_runs)
          + f" s; best {bare_rate:,.0f} msgs/s")
    print("chronox publisher (envelope + serialization): " + ", ".join(f"{t:.2f}" for t in chronox_runs)
          + f" s; best {chronox_rate:,.0f} msgs/s")
    print(f"kafka_publish ratio={chronox_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
