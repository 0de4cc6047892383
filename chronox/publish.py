"""Kafka envelopes (one per bar) and the Redis mirror: pub/sub plus a latest-price cache.

Publishing is off when CHRONOX_KAFKA_BROKERS is unset; that is said once in the log and
reported in run summaries.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis

from chronox.settings import Settings

log = logging.getLogger(__name__)

ENVELOPE_VERSION = "v1"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


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
}


class PublishError(RuntimeError):
    """Kafka did not acknowledge every message; the caller's transaction must not count them as sent."""


def topic_for(kind: str, symbol: str, topic_mode: str = "per-symbol") -> str:
    if topic_mode == "per-kind":
        return f"chronox.{kind}"
    return f"chronox.{kind}.{symbol}"


def dedup_key(symbol: str, tf: str, ts_iso: str) -> str:
    return f"{symbol}|{tf}|{ts_iso}"


def bar_envelope(symbol: str, tf: str, ts_iso: str, open_: float, high: float, low: float,
                 close: float, volume: float, source: str) -> dict[str, Any]:
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
    }


class KafkaPublisher:
    """A kafka-python producer tuned for throughput with at-least-once delivery.

    Failures are collected from callbacks and raised by flush(), so a caller can decide
    whether to commit its database transaction.
    """

    def __init__(self, brokers: Iterable[str], topic_mode: str = "per-symbol", throttle_ms: int = 0,
                 **producer_overrides: Any):
        from kafka import KafkaProducer

        config: dict[str, Any] = {**PRODUCER_SETTINGS, "bootstrap_servers": list(brokers), **producer_overrides}
        self.topic_mode = topic_mode
        self._pause = throttle_ms / 1000.0
        self._producer = KafkaProducer(**config)
        self._errors: list[BaseException] = []
        self.sent = 0

    def _failed(self, exc: BaseException) -> None:
        self._errors.append(exc)

    def send(self, kind: str, symbol: str, payload: dict[str, Any]) -> None:
        topic = topic_for(kind, symbol, self.topic_mode)
        future = self._producer.send(topic, key=symbol.encode(), value=_dumps(payload).encode())
        future.add_errback(self._failed)
        self.sent += 1
        if self._pause:
            time.sleep(self._pause)

    def send_bar(self, symbol: str, tf: str, ts_iso: str, open_: float, high: float, low: float,
                 close: float, volume: float, source: str, kind: str = "backfill") -> None:
        self.send(kind, symbol, bar_envelope(symbol, tf, ts_iso, open_, high, low, close, volume, source))

    def flush(self, timeout: float = 60.0) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except Exception as exc:  # kafka-python raises KafkaTimeoutError and friends
            raise PublishError(f"Kafka flush failed: {exc}") from exc
        if self._errors:
            first, count = self._errors[0], len(self._errors)
            self._errors = []
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


class RedisMirror:
    """Pub/sub mirror of events and the `latest_price:{symbol}` cache."""

    PRICE_TTL_SECONDS = 60

    def __init__(self, client: redis.Redis):
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> RedisMirror:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def pipelined(self) -> RedisMirror:
        """The same keys, channels and TTL, queued until execute()."""
        return RedisMirror(self.client.pipeline(transaction=False))

    def execute(self) -> None:
        """Send what a pipelined mirror queued."""
        pipeline = self.client
        assert isinstance(pipeline, redis.client.Pipeline)
        pipeline.execute()

    def publish(self, kind: str, symbol: str, payload: dict[str, Any]) -> None:
        self.client.publish(f"chronox.{kind}.{symbol}", _dumps(payload))

    def cache_price(self, symbol: str, payload: dict[str, Any]) -> None:
        self.client.set(f"latest_price:{symbol}", _dumps(payload), ex=self.PRICE_TTL_SECONDS)


def get_mirror(settings: Settings) -> RedisMirror | None:
    return RedisMirror.from_url(settings.redis_url) if settings.redis_url else None
