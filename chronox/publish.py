"""Kafka envelopes (one per bar) and the Redis mirror: pub/sub plus a latest-price cache.

Publishing is off when CHRONOX_KAFKA_BROKERS is unset; that is said once in the log and
reported in run summaries.

The send path is kept lean because kafka-python's own per-message work is the ceiling:
envelopes are serialized with orjson (the same JSON, several times faster than the standard
library), and messages to topics the producer has no metadata for yet wait in the
publisher until one metadata request covers all of them (see TopicMetadata).
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

import orjson
import redis

from chronox.redis_client import shared_client
from chronox.settings import Settings

log = logging.getLogger(__name__)

ENVELOPE_VERSION = "v1"
_dumps = orjson.dumps
_EVENT_OPTIONS = orjson.OPT_NON_STR_KEYS  # events are free-form dicts; json.dumps took int keys too


def _dumps_event(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=_EVENT_OPTIONS)


@functools.lru_cache(maxsize=1 << 17)
def _key_hash(key: bytes) -> int:
    from kafka.partitioner.default import murmur2

    return murmur2(key) & 0x7FFFFFFF


def key_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """kafka-python's default partitioning (the Java client's murmur2 of the key), with the
    hash remembered per key: keys are symbols and repeat, and the pure-Python murmur2 is a
    measurable share of a send. Keyless messages go where the default partitioner sends them."""
    if key is None:
        from kafka.partitioner.default import DefaultPartitioner

        return int(DefaultPartitioner()(None, all_partitions, available))
    return all_partitions[_key_hash(bytes(key)) % len(all_partitions)]


# At-least-once: every message acknowledged by all in-sync replicas, retried on
# transient errors; bounded blocking so an unreachable Kafka fails a task instead of
# hanging it.
PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 5,
    "batch_size": 256 * 1024,
    "max_block_ms": 10_000,
    "request_timeout_ms": 10_000,
    "retries": 5,
    "retry_backoff_ms": 200,
    "max_in_flight_requests_per_connection": 5,
    "partitioner": key_partitioner,
    # kafka-python's own sensors (per topic, recorded per batch) are nobody's metrics here
    # (chronox.metrics counts what was published) and cost half the sender's time once
    # messages spread over thousands of per-symbol topics.
    "metrics_enabled": False,
    # The metadata answer for a producer's topics grows with them (about 170 bytes per
    # per-symbol topic): past kafka-python's 1 MB default, ~6,000 topics, the first answer
    # drops the connection, cancelling the produce requests in flight, and only the
    # reconnected socket (which kafka-python opens without the limit) reads it. This is
    # the limit that socket has, and librdkafka's default.
    "receive_message_max_bytes": 100_000_000,
}
# Messages to topics still without metadata that a publisher holds before it waits for it.
HOLD_LIMIT = 50_000


class PublishError(RuntimeError):
    """Kafka did not acknowledge every message; the caller's transaction must not count them as sent."""


def topic_for(kind: str, symbol: str, topic_mode: str = "per-symbol") -> str:
    if topic_mode == "per-kind":
        return f"chronox.{kind}"
    return f"chronox.{kind}.{symbol}"


def dedup_key(symbol: str, tf: str, ts_iso: str) -> str:
    return f"{symbol}|{tf}|{ts_iso}"


def bar_envelope(symbol: str, tf: str, ts_iso: str, open_: float, high: float, low: float,
                 close: float, volume: float, source: str, market: str = "stocks",
                 provider: str = "polygon") -> dict[str, Any]:
    return {
        "event": "bar",
        "symbol": symbol,
        "tf": tf,
        "ts": ts_iso,
        "ohlcv": {"open": open_, "high": high, "low": low, "close": close, "volume": volume},
        "features": {},
        "source": source,
        "version": ENVELOPE_VERSION,
        "dedup_key": dedup_key(symbol, tf, ts_iso),
        "market": market,
        "provider": provider,
    }


class TopicMetadata:
    """Topic metadata for many new topics in one request.

    kafka-python looks a new topic up when the first message is sent to it and blocks that
    send until the answer comes; each refresh waits retry_backoff_ms after the previous one,
    so N new per-symbol topics cost N round trips of at least 0.2 s. kafka-python has no
    public call for several topics at once, so this registers the topics with the
    producer's sender (what its send() does for one topic) and waits for the refresh that
    names them all. kafka-python is pinned to 2.3.x for these internals;
    tests/test_kafka_fanout.py fails if they change.
    """

    def __init__(self, producer: Any):
        self._cluster = producer._metadata
        self._sender = producer._sender

    def known(self, topic: str) -> bool:
        return self._cluster.partitions_for_topic(topic) is not None

    def wait(self, topics: Collection[str], timeout: float) -> set[str]:
        """Wait until every topic has partitions or `timeout` passes; the topics still missing."""
        for topic in topics:
            self._sender.add_topic(topic)  # the sender thread adds them to its next metadata request
        deadline = time.monotonic() + timeout
        missing = {t for t in topics if not self.known(t)}
        while missing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            refreshed = threading.Event()
            self._cluster.request_update().add_both(lambda _, done=refreshed: done.set())
            self._sender.wakeup()
            refreshed.wait(remaining)
            missing = {t for t in missing if not self.known(t)}
        return missing


class KafkaPublisher:
    """A kafka-python producer tuned for throughput with at-least-once delivery.

    Failures are collected from send callbacks and raised by flush(), so a caller can
    decide whether to commit its database transaction. Messages to a topic the producer
    has no metadata for are held (in order) until flush() or HOLD_LIMIT held messages, then
    one metadata request covers every such topic: a first publish to 10,000 per-symbol
    topics waits for a few refreshes, not for 10,000.
    """

    def __init__(self, brokers: Iterable[str], topic_mode: str = "per-symbol", throttle_ms: int = 0,
                 **producer_overrides: Any):
        from kafka import KafkaProducer

        config: dict[str, Any] = {**PRODUCER_SETTINGS, "bootstrap_servers": list(brokers), **producer_overrides}
        self.topic_mode = topic_mode
        self._per_kind = topic_mode == "per-kind"
        self._pause = throttle_ms / 1000.0
        self._max_block = config["max_block_ms"] / 1000.0
        self._producer = KafkaProducer(**config)
        self._produce = self._producer.send
        self._metadata = TopicMetadata(self._producer)
        self._ready: set[str] = set()  # topics with metadata: sent straight away
        self._held: dict[str, list[tuple[bytes, bytes]]] = {}  # topic -> (key, value) awaiting metadata
        self._held_count = 0
        self._hold_lock = threading.Lock()
        self._failures = 0
        self._first_failure: BaseException | None = None
        self.sent = 0

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        if topic in self._ready:
            self._produce(topic, key=key, value=value).add_errback(self._failed_one)
        else:
            self._hold(topic, key, value)
        self.sent += 1
        if self._pause:
            time.sleep(self._pause)

    def send(self, kind: str, symbol: str, payload: dict[str, Any]) -> None:
        self._send(topic_for(kind, symbol, self.topic_mode), symbol.encode(), _dumps_event(payload))

    def send_bar(self, symbol: str, tf: str, ts_iso: str, open_: float, high: float, low: float,
                 close: float, volume: float, source: str, kind: str = "backfill", market: str = "stocks",
                 provider: str = "polygon") -> None:
        # topic_for, bar_envelope and _send written out: this runs once per bar, and the
        # calls cost a measurable share of kafka-python's own per-message work.
        topic = f"chronox.{kind}" if self._per_kind else f"chronox.{kind}.{symbol}"
        value = _dumps({"event": "bar", "symbol": symbol, "tf": tf, "ts": ts_iso,
                        "ohlcv": {"open": open_, "high": high, "low": low, "close": close, "volume": volume},
                        "features": {}, "source": source, "version": ENVELOPE_VERSION,
                        "dedup_key": f"{symbol}|{tf}|{ts_iso}", "market": market, "provider": provider})
        if topic in self._ready:
            self._produce(topic, key=symbol.encode(), value=value).add_errback(self._failed_one)
        else:
            self._hold(topic, symbol.encode(), value)
        self.sent += 1
        if self._pause:
            time.sleep(self._pause)

    def _hold(self, topic: str, key: bytes, value: bytes) -> None:
        with self._hold_lock:
            held = self._held.get(topic)
            if held is None:
                from kafka.util import ensure_valid_topic_name

                ensure_valid_topic_name(topic)  # here, as send() would, not later in the sender thread
                if self._metadata.known(topic):
                    self._ready.add(topic)
                    self._produce(topic, key=key, value=value).add_errback(self._failed_one)
                    return
                # Not asked for yet: every refresh names all the producer's topics, so asking
                # for each new topic as it comes would refresh thousands of topics many times.
                held = self._held[topic] = []
            held.append((key, value))
            self._held_count += 1
            if self._held_count >= HOLD_LIMIT:
                self._release()

    def _release(self) -> None:
        """Send the held messages once their topics have metadata (one wait for all of them);
        those of topics still unknown after max_block_ms count as failed."""
        if not self._held:
            return
        held, self._held, self._held_count = self._held, {}, 0
        missing = self._metadata.wait(list(held), self._max_block)
        for topic, messages in held.items():
            if topic in missing:
                self._failed(len(messages), PublishError(
                    f"no metadata for {len(missing)} topic(s) (e.g. {topic}) after {self._max_block:.0f}s"))
                continue
            self._ready.add(topic)
            for key, value in messages:
                self._produce(topic, key=key, value=value).add_errback(self._failed_one)

    def _failed(self, count: int, exc: BaseException) -> None:
        self._failures += count
        if self._first_failure is None:
            self._first_failure = exc

    def _failed_one(self, exc: BaseException) -> None:
        # A callback per message, not a list of futures looked at later: kept futures
        # outlive their batch and make the garbage collector's rounds measurably longer.
        self._failed(1, exc)

    def flush(self, timeout: float = 60.0) -> None:
        try:
            with self._hold_lock:
                self._release()
            self._producer.flush(timeout=timeout)
        except Exception as exc:  # kafka-python raises KafkaTimeoutError and friends
            raise PublishError(f"Kafka flush failed: {exc}") from exc
        if self._failures:
            first, count = self._first_failure, self._failures
            self._failures, self._first_failure = 0, None
            raise PublishError(f"Kafka rejected {count} message(s): {first}")

    def close(self) -> None:
        try:
            self._producer.close(timeout=5)
        except Exception:  # closing a producer whose broker is gone must not mask the real error
            log.debug("producer close failed", exc_info=True)


_publisher_lock = threading.Lock()
_publishers: dict[tuple[int, tuple[str, ...], str, int], KafkaPublisher] = {}
_said_off = False


def get_publisher(settings: Settings) -> KafkaPublisher | None:
    """The process's producer (one per forked worker child), or None when publishing is off."""
    global _said_off
    if not settings.kafka_enabled:
        if not _said_off:
            log.warning("Kafka publishing is off: CHRONOX_KAFKA_BROKERS is unset")
            _said_off = True
        return None
    with _publisher_lock:
        publisher = _publishers.get(_publisher_key(settings))
        if publisher is None:
            publisher = _publishers[_publisher_key(settings)] = KafkaPublisher(
                settings.kafka_brokers, settings.kafka_topic_mode, settings.publish_throttle_ms)
        return publisher


def _publisher_key(settings: Settings) -> tuple[int, tuple[str, ...], str, int]:
    return (os.getpid(), settings.kafka_brokers, settings.kafka_topic_mode, settings.publish_throttle_ms)


def drop_publisher(settings: Settings) -> None:
    """Forget a producer after a failure so the next attempt reconnects from scratch."""
    with _publisher_lock:
        publisher = _publishers.pop(_publisher_key(settings), None)
    if publisher is not None:
        publisher.close()


def kafka_status(settings: Settings) -> str:
    if not settings.kafka_enabled:
        return "off (CHRONOX_KAFKA_BROKERS unset)"
    return f"on ({', '.join(settings.kafka_brokers)}, {settings.publish_mode})"


def kafka_brokers_reachable(settings: Settings, timeout: float) -> int:
    """How many brokers the bootstrap servers name (a Kafka handshake, not only a TCP
    connect: something else may listen there); PublishError when none answers in time."""
    from kafka import KafkaClient
    from kafka.errors import KafkaError

    ms = int(timeout * 1000)
    try:
        client = KafkaClient(bootstrap_servers=list(settings.kafka_brokers), client_id="chronox-reachability",
                             request_timeout_ms=ms, api_version_auto_timeout_ms=ms)
    except KafkaError as exc:
        raise PublishError(f"no Kafka broker answered within {timeout:g} s ({type(exc).__name__})") from None
    try:
        return len(client.cluster.brokers())
    finally:
        client.close()


class RedisMirror:
    """Pub/sub mirror of events and the `latest_price:{symbol}` cache."""

    PRICE_TTL_SECONDS = 60

    def __init__(self, client: redis.Redis):
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> RedisMirror:
        return cls(shared_client(url))

    def pipelined(self) -> RedisMirror:
        """The same keys, channels and TTL, queued until execute()."""
        return RedisMirror(self.client.pipeline(transaction=False))

    def execute(self) -> None:
        """Send what a pipelined mirror queued."""
        pipeline = self.client
        assert isinstance(pipeline, redis.client.Pipeline)
        pipeline.execute()

    def publish(self, kind: str, symbol: str, payload: dict[str, Any]) -> None:
        self.client.publish(f"chronox.{kind}.{symbol}", _dumps_event(payload))

    def cache_price(self, symbol: str, payload: dict[str, Any]) -> None:
        self.client.set(f"latest_price:{symbol}", _dumps_event(payload), ex=self.PRICE_TTL_SECONDS)


def get_mirror(settings: Settings) -> RedisMirror | None:
    return RedisMirror.from_url(settings.redis_url) if settings.redis_url else None
