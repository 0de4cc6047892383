"""Topic fan-out: the first publish of a batch of bars to 10,000 new per-symbol topics
(`chronox.stream.<SYMBOL>`, CHRONOX_KAFKA_TOPIC_MODE=per-symbol, the default) versus the same
bars to one new topic (`chronox.stream`, per-kind), each with a new ChronoX publisher, against
a new librdkafka mock cluster in every round (the mock looks topics up in a list, so
topics left by earlier rounds would slow the later ones down).

kafka-python alone looks a new topic up when the first message for it is sent and waits
retry_backoff_ms between lookups; the run also measures that on a few topics, to show what
10,000 would cost without ChronoX's one-request metadata fetch.
Last line: `topic_fanout ratio=<per-symbol seconds / per-kind seconds>`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's chronox, installed or not
from chronox.testing.services import MockKafka  # noqa: E402


def first_publish(bootstrap: str, topic_mode: str, symbols: list[str], bars_per_symbol: int) -> float:
    """Seconds from a new publisher's first send to the flush that has every bar acknowledged."""
    from chronox.publish import KafkaPublisher

    publisher = KafkaPublisher([bootstrap], topic_mode=topic_mode)
    started = time.perf_counter()
    for symbol in symbols:  # symbol by symbol, as a day file and the outbox send them
        for minute in range(bars_per_symbol):
            price = 100.0 + minute / 100
            publisher.send_bar(symbol, "1m", f"2024-01-02T{14 + minute // 60:02d}:{minute % 60:02d}:00Z", price,
                               price + 0.02, price - 0.01, price + 0.01, 100.0, "stream", kind="stream")
    publisher.flush()
    elapsed = time.perf_counter() - started
    publisher.close()
    return elapsed


def kafka_python_per_topic(bootstrap: str, topics: int) -> float:
    """kafka-python's own first send to each of `topics` new topics: seconds per topic."""
    from kafka import KafkaProducer

    from chronox.publish import PRODUCER_SETTINGS

    producer = KafkaProducer(bootstrap_servers=[bootstrap], **PRODUCER_SETTINGS)
    tag = f"{time.time_ns() % 10**9}"
    started = time.perf_counter()
    for i in range(topics):
        producer.send(f"chronox.probe.P{tag}X{i}", key=b"P", value=b"{}")
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed / topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10_000)
    parser.add_argument("--bars-per-symbol", type=int, default=1,
                        help="1: a stream minute after a start (the worst case for per-symbol topics)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each side counts")
    parser.add_argument("--probe-topics", type=int, default=20, help="new topics sent to by kafka-python alone")
    args = parser.parse_args()
    bars = args.symbols * args.bars_per_symbol
    print(f"first publish of {bars:,} bars ({args.bars_per_symbol} per symbol) for {args.symbols:,} symbols")
    probe = MockKafka()
    per_topic = kafka_python_per_topic(probe.bootstrap, args.probe_topics)
    del probe
    print(f"kafka-python alone, first send to a new topic: {per_topic:.3f} s each; {args.symbols:,} topics "
          f"would take ~{per_topic * args.symbols:,.0f} s")
    per_kind: list[float] = []
    per_symbol: list[float] = []
    symbols = [f"S{i:05d}" for i in range(args.symbols)]
    for round_ in range(args.rounds):
        kafka = MockKafka()  # this round's cluster: every topic is new; it lives as long as this object
        sides = [("per-kind", per_kind), ("per-symbol", per_symbol)]
        for mode, runs in sides if round_ % 2 == 0 else sides[::-1]:
            runs.append(first_publish(kafka.bootstrap, mode, symbols, args.bars_per_symbol))
        del kafka
    kind_best, symbol_best = min(per_kind), min(per_symbol)
    print("one topic (per-kind): " + ", ".join(f"{t:.2f}" for t in per_kind)
          + f" s; best {kind_best:.2f} s, {bars / kind_best:,.0f} bars/s")
    print(f"{args.symbols:,} topics (per-symbol): " + ", ".join(f"{t:.2f}" for t in per_symbol)
          + f" s; best {symbol_best:.2f} s, {bars / symbol_best:,.0f} bars/s")
    print(f"topic_fanout ratio={symbol_best / kind_best:.2f}")


if __name__ == "__main__":
    main()
