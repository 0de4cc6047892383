"""One Redis client per process and URL, shared by the modules that keep state in Redis
(circuit breakers, request budgets, the Kafka mirror, the feature store).

redis-py clients are thread-safe and pool their connections; a client per use would open a
pool, and a connection, per call. Timeouts keep a Redis that stops answering from hanging a
worker: a request budget or breaker that cannot be read fails the call, it does not wait.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import redis

TIMEOUT_SECONDS = 5

_clients: dict[tuple[int, str, bool], Any] = {}
_lock = threading.Lock()


def shared_client(url: str, decode_responses: bool = False) -> Any:
    """This process's client of `url` (replies as str with `decode_responses`, else bytes)."""
    key = (os.getpid(), url, decode_responses)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS,
                                                          socket_connect_timeout=TIMEOUT_SECONDS,
                                                          decode_responses=decode_responses)
        return client
