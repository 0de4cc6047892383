"""Per-provider state shared by every worker, process and host through Redis (DESIGN decision 16).

- A circuit breaker per provider. After CHRONOX_BREAKER_FAILURES consecutive transient
  failures (timeouts, refused connections, 5xx) the provider is *open* for
  CHRONOX_BREAKER_COOLDOWN_SECONDS: calls raise BreakerOpen, a TransientProviderError whose
  retry_after is the cool-down left, so RestTask re-queues the task with that countdown
  instead of calling. After the cool-down the breaker is *half-open*: one caller (the probe)
  may call; its success closes the breaker, its transient failure opens it for another
  cool-down. Meanwhile the others wait for the probe's lease to end.
- A hold per provider: "nobody calls before T". Binance's 418 (IP ban) and 429, and
  CoinGecko's 429, say how long to stay away (Retry-After); the first worker to hear it
  records it here and every worker then raises Throttled with the time left, without
  calling, instead of each one earning its own 429 (and Binance escalating to a ban).

An answer that says "slow down" (Throttled) or "no" (a permanent ProviderError) comes from a
provider that is up: neither counts as a failure, and a permanent answer closes the breaker.

Time is Redis's clock (`TIME`), so hosts with skewed clocks agree. Without CHRONOX_REDIS_URL
the same rules hold per process only.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chronox.markets import ProviderId
from chronox.settings import Settings
from chronox.sources.base import ProviderError, TransientProviderError

KEY = "chronox:breaker"
HOLD_KEY = "chronox:hold"
# Breaker state outlives any cool-down, but not for ever: a provider not called for a day
# starts from a clean slate.
STATE_TTL_MS = 86_400_000


class BreakerOpen(TransientProviderError):
    """The provider's circuit is open: not called; retry_after is the cool-down left."""


class Throttled(TransientProviderError):
    """The provider asked every client to stay away for a while (429, 418): a provider that
    is up, so the breaker does not count it."""


# -- the state store: Redis, or this process ---------------------------------------------------

_BEFORE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return {1, 0} end
if now < open_until then return {0, open_until - now} end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if probe_until > now then return {0, probe_until - now} end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
return {2, 0}
"""

_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[4])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local opened = 0
-- a failed probe opens it again; calls that began before it opened do not extend it
if ARGV[3] == '1' or (open_until == 0 and failures >= tonumber(ARGV[1])) then
  redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[2]))
  redis.call('HDEL', KEYS[1], 'probe_until')
  opened = 1
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
return {opened, failures}
"""

_SUCCEEDED = """
if ARGV[1] == '1' or not redis.call('HGET', KEYS[1], 'open_until') then
  redis.call('DEL', KEYS[1])
end
return 0
"""

_HOLD = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ms)
  return 1
end
return 0
"""


class _Store:
    """before/failed/succeeded/release of a breaker and hold/held of a hold, by key."""

    def before(self, key: str, lease_us: int) -> tuple[int, int]:
        """(1 closed | 2 probe | 0 refused, microseconds to wait when refused)."""
        raise NotImplementedError

    def failed(self, key: str, threshold: int, cooldown_us: int, probe: bool, error: str) -> bool:
        raise NotImplementedError

    def succeeded(self, key: str, probe: bool) -> None:
        raise NotImplementedError

    def release(self, key: str) -> None:
        raise NotImplementedError

    def state(self, key: str) -> tuple[dict[str, str], int]:
        """The breaker's fields and the store's clock (µs)."""
        raise NotImplementedError

    def hold(self, key: str, ms: int, reason: str) -> None:
        raise NotImplementedError

    def held(self, key: str) -> tuple[float, str]:
        """(seconds left, reason); (0, '') when there is no hold."""
        raise NotImplementedError


class RedisStore(_Store):
    def __init__(self, client: Any):
        self._client = client
        self._before = client.register_script(_BEFORE)
        self._failed = client.register_script(_FAILED)
        self._succeeded = client.register_script(_SUCCEEDED)
        self._hold = client.register_script(_HOLD)

    def before(self, key: str, lease_us: int) -> tuple[int, int]:
        verdict, wait = self._before(keys=[key], args=[lease_us])
        return int(verdict), int(wait)

    def failed(self, key: str, threshold: int, cooldown_us: int, probe: bool, error: str) -> bool:
        opened, _ = self._failed(keys=[key], args=[threshold, cooldown_us, int(probe), error[:300], STATE_TTL_MS])
        return bool(opened)

    def succeeded(self, key: str, probe: bool) -> None:
        self._succeeded(keys=[key], args=[int(probe)])

    def release(self, key: str) -> None:
        self._client.hdel(key, "probe_until")

    def state(self, key: str) -> tuple[dict[str, str], int]:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.time()
            fields, (seconds, micros) = pipe.execute()
        return {k.decode(): v.decode() for k, v in fields.items()}, seconds * 1_000_000 + micros

    def hold(self, key: str, ms: int, reason: str) -> None:
        if ms > 0:
            self._hold(keys=[key], args=[ms, reason])

    def held(self, key: str) -> tuple[float, str]:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.pttl(key)
            pipe.get(key)
            ttl, reason = pipe.execute()
        if ttl is None or ttl <= 0 or reason is None:
            return 0.0, ""
        return ttl / 1000, reason.decode()


class LocalStore(_Store):
    """The same rules for one process (the embedded default)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, dict[str, Any]] = {}
        self._holds: dict[str, tuple[int, str]] = {}

    @staticmethod
    def _now() -> int:
        return time.monotonic_ns() // 1000

    def before(self, key: str, lease_us: int) -> tuple[int, int]:
        with self._lock:
            now, state = self._now(), self._breakers.get(key, {})
            open_until = state.get("open_until", 0)
            if not open_until:
                return 1, 0
            if now < open_until:
                return 0, open_until - now
            if state.get("probe_until", 0) > now:
                return 0, state["probe_until"] - now
            state["probe_until"] = now + lease_us
            return 2, 0

    def failed(self, key: str, threshold: int, cooldown_us: int, probe: bool, error: str) -> bool:
        with self._lock:
            state = self._breakers.setdefault(key, {})
            state["failures"] = state.get("failures", 0) + 1
            state["last_error"] = error[:300]
            if probe or (not state.get("open_until") and state["failures"] >= threshold):
                state["open_until"] = self._now() + cooldown_us
                state.pop("probe_until", None)
                return True
            return False

    def succeeded(self, key: str, probe: bool) -> None:
        with self._lock:
            if probe or not self._breakers.get(key, {}).get("open_until"):
                self._breakers.pop(key, None)

    def release(self, key: str) -> None:
        with self._lock:
            self._breakers.get(key, {}).pop("probe_until", None)

    def state(self, key: str) -> tuple[dict[str, str], int]:
        with self._lock:
            return {k: str(v) for k, v in self._breakers.get(key, {}).items()}, self._now()

    def hold(self, key: str, ms: int, reason: str) -> None:
        with self._lock:
            until = self._now() + ms * 1000
            if ms > 0 and self._holds.get(key, (0, ""))[0] < until:
                self._holds[key] = (until, reason)

    def held(self, key: str) -> tuple[float, str]:
        with self._lock:
            until, reason = self._holds.get(key, (0, ""))
            left = until - self._now()
            return (left / 1_000_000, reason) if left > 0 else (0.0, "")


_stores: dict[tuple[int, str | None], _Store] = {}
_stores_lock = threading.Lock()


def shared_store(settings: Settings) -> _Store:
    """This process's store for `settings`: Redis when CHRONOX_REDIS_URL is set."""
    key = (os.getpid(), settings.redis_url)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            if settings.redis_url:
                from chronox.redis_client import shared_client

                store = RedisStore(shared_client(settings.redis_url))
            else:
                store = LocalStore()
            _stores[key] = store
        return store


# -- the breaker --------------------------------------------------------------------------------

class CircuitBreaker:
    def __init__(self, provider: str, store: _Store, failures: int = 5, cooldown: float = 60.0):
        self.provider = provider
        self.failures = failures
        self.cooldown = cooldown
        self._store = store
        self._key = f"{KEY}:{provider}"

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Around one request: raises BreakerOpen instead of entering while open, and
        records how the request went."""
        # A probe's lease: long enough for its request (and budget wait) to end, short enough
        # that a probe whose process died does not keep the provider shut for long.
        probe = self._before(lease=self.cooldown)
        try:
            yield
        except Throttled:
            if probe:
                self._store.release(self._key)
            raise
        except TransientProviderError as exc:
            self._failed(probe, str(exc))
            raise
        except ProviderError:
            self._store.succeeded(self._key, probe)  # an answer, however unwelcome
            raise
        except BaseException:  # our own budget wait, a bug: says nothing about the provider
            if probe:
                self._store.release(self._key)
            raise
        self._store.succeeded(self._key, probe)

    def _before(self, lease: float) -> bool:
        verdict, wait_us = self._store.before(self._key, int(lease * 1_000_000))
        if verdict == 0:
            wait = max(wait_us / 1_000_000, 0.001)
            raise BreakerOpen(f"{self.provider} circuit open after {self.failures} consecutive transient "
                              f"failures; next attempt in {wait:.1f}s", retry_after=wait)
        return verdict == 2

    def _failed(self, probe: bool, error: str) -> None:
        self._store.failed(self._key, self.failures, int(self.cooldown * 1_000_000), probe, error)


class Hold:
    """'Nobody calls `provider` before T', shared: only ever extended, never shortened."""

    def __init__(self, provider: str, store: _Store, label: str | None = None):
        self.provider = provider
        self.label = label or provider
        self._store = store
        self._key = f"{HOLD_KEY}:{provider}"

    def set(self, seconds: float, reason: str) -> None:
        self._store.hold(self._key, int(seconds * 1000), reason)

    def remaining(self) -> float:
        """Seconds until calls may resume; 0 when there is no hold."""
        return self._store.held(self._key)[0]

    def check(self) -> None:
        """Raise Throttled with the time left while a hold is on; return at once otherwise."""
        left, reason = self._store.held(self._key)
        if left > 0:
            raise Throttled(f"{self.label} not called: {reason}; calls resume in {left:.1f}s", retry_after=left)


def get_breaker(settings: Settings, provider: str) -> CircuitBreaker:
    return CircuitBreaker(provider, shared_store(settings), settings.breaker_failures,
                          settings.breaker_cooldown_seconds)


def get_hold(settings: Settings, provider: str, label: str | None = None) -> Hold:
    return Hold(provider, shared_store(settings), label)


@dataclass(frozen=True)
class BreakerState:
    state: str  # closed | open | half-open
    failures: int  # consecutive transient failures so far
    retry_in: float | None  # seconds until the next call may go out (cool-down, probe lease or hold)
    hold: str | None  # why nobody calls the provider now (a 418 or 429), if so
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures, "retry_in": self.retry_in,
                "hold": self.hold, "last_error": self.last_error}


def breaker_states(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each provider's breaker and hold, for `chronox status`: shared ones with
    CHRONOX_REDIS_URL, else this process's (closed, as a fresh process knows no failures)."""
    store = shared_store(settings)
    out: dict[str, dict[str, Any]] = {}
    for provider in ProviderId:
        fields, now = store.state(f"{KEY}:{provider}")
        open_until = int(fields.get("open_until") or 0)
        retry_in: float | None = None
        if not open_until:
            state = "closed"
        elif now < open_until:
            state, retry_in = "open", (open_until - now) / 1_000_000
        else:
            state = "half-open"
            probe_until = int(fields.get("probe_until") or 0)
            if probe_until > now:
                retry_in = (probe_until - now) / 1_000_000
        held, reason = store.held(f"{HOLD_KEY}:{provider}")
        if held > 0:
            retry_in = max(retry_in or 0.0, held)
        out[str(provider)] = BreakerState(state, int(fields.get("failures") or 0), retry_in,
                                          reason or None, fields.get("last_error")).as_dict()
    return out
