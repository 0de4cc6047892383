"""One request budget for Polygon shared by every worker, process and host, kept in Redis.

Celery's `rate_limit` counts per worker; Polygon counts per API key. The budget is a
sliding-window log: at most `limit` requests are granted in any window of `window`
seconds (plus a small margin, because a request reaches Polygon a little after it is
granted, and not always equally late).

Waiting is first come, first served: a caller that names a `holder` (a Celery task id,
stable across retries) and cannot be served now gets a place in a queue and the time of
its turn, so its task can leave the worker and come back then instead of sleeping.
Callers without a holder (requests of a task that already made one, the in-process
runner) are served as soon as the window has room, ahead of the queue, so work that has
started finishes first.

A share of the budget is reserved for real-time work (CHRONOX_REALTIME_BUDGET_SHARE,
`realtime_lane`), with a window of its own.

Without CHRONOX_REDIS_URL the same rules hold per process only.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from chronox import metrics
from chronox.settings import Settings

log = logging.getLogger(__name__)

KEY = "chronox:ratelimit:polygon"
# A queued task sleeps in the worker rather than leave it when its turn is this close.
SHORT_WAIT = 1.0

_LUA = """
local granted_key, queue_key = KEYS[1], KEYS[2]
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local holder, uid = ARGV[3], ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', granted_key, '-inf', now - window)
-- a reservation whose task never came back must not hold up the queue for ever
redis.call('ZREMRANGEBYSCORE', queue_key, '-inf', now - window)

local function room_at()
  local n = redis.call('ZCARD', granted_key)
  if n < limit then return now end
  local oldest = redis.call('ZRANGE', granted_key, n - limit, n - limit, 'WITHSCORES')
  return tonumber(oldest[2]) + window
end

local function grant()
  redis.call('ZADD', granted_key, now, uid)
  redis.call('PEXPIRE', granted_key, math.ceil(window / 1000) + 1000)
  return {1, 0}
end

if holder == '' then
  local at = room_at()
  if at <= now then return grant() end
  return {0, at - now}
end

local slot = redis.call('ZSCORE', queue_key, holder)
if slot then
  slot = tonumber(slot)
  local at = room_at()
  if slot <= now and at <= now then
    redis.call('ZREM', queue_key, holder)
    return grant()
  end
  -- early, or running tasks took the room: keep the place, wait on
  local due = math.max(slot, at)
  redis.call('ZADD', queue_key, due, holder)
  return {0, due - now}
end

-- a newcomer's turn comes after everyone queued: the limit-th newest of all granted
-- and queued requests must have left the window by then
local q = redis.call('ZCARD', queue_key)
local due = now
local pivot
if q > 0 then
  due = math.max(due, tonumber(redis.call('ZRANGE', queue_key, -1, -1, 'WITHSCORES')[2]))
end
if q >= limit then
  pivot = redis.call('ZRANGE', queue_key, q - limit, q - limit, 'WITHSCORES')
else
  local g = redis.call('ZCARD', granted_key)
  if g >= limit - q then
    pivot = redis.call('ZRANGE', granted_key, g - (limit - q), g - (limit - q), 'WITHSCORES')
  end
end
if pivot then due = math.max(due, tonumber(pivot[2]) + window) end
if due <= now then return grant() end
redis.call('ZADD', queue_key, due, holder)
redis.call('PEXPIRE', queue_key, math.ceil((due - now + window) / 1000) + 1000)
return {0, due - now}
"""


class RateLimited(Exception):
    """No request budget within the caller's patience; `wait` is when to come back (seconds)."""

    exhausted = "Polygon request budget exhausted"  # each provider's subclass names its own budget

    def __init__(self, wait: float):
        super().__init__(f"{self.exhausted}; next turn in {wait:.1f}s")
        self.wait = wait


@dataclass(frozen=True)
class WaitPolicy:
    """How long the current work may wait in-process for budget, set by the task layer."""

    holder: str | None = None  # queue place kept across retries (a Celery task id)
    first_wait: float = math.inf  # before the first request of this attempt
    later_wait: float = math.inf  # before each further request (pages, second endpoint)


_policy: contextvars.ContextVar[WaitPolicy | None] = contextvars.ContextVar("chronox_wait_policy", default=None)


@contextlib.contextmanager
def waiting(policy: WaitPolicy) -> Iterator[None]:
    token = _policy.set(policy)
    try:
        yield
    finally:
        _policy.reset(token)


def margin(window: float) -> float:
    """Slack added to the window for the time between a grant and the request's arrival."""
    return min(1.0, max(0.1, 0.02 * window))


class RateLimiter(Protocol):
    def acquire(self, holder: str | None = None, max_wait: float = math.inf) -> None: ...


class _Limiter:
    """acquire() on top of a one-shot `_attempt(holder) -> (granted, wait_seconds)`."""

    provider = "polygon"  # whose budget: the label of the wait metric

    def _attempt(self, holder: str | None) -> tuple[bool, float]:
        raise NotImplementedError

    def acquire(self, holder: str | None = None, max_wait: float = math.inf) -> None:
        """Return once a request may be sent; raise RateLimited if that is over max_wait away."""
        deadline = time.monotonic() + max_wait
        while True:
            granted, wait = self._attempt(holder)
            if granted:
                return
            metrics.rate_limit_wait(self.provider, wait)  # slept here, or spent off the worker until its turn
            if time.monotonic() + wait > deadline:
                raise RateLimited(wait)
            time.sleep(wait)


class RedisRateLimiter(_Limiter):
    def __init__(self, client, limit: int, window: float, key: str = KEY):  # type: ignore[no-untyped-def]
        self.limit = limit
        self.window = window
        self._keys = [f"{key}:granted", f"{key}:queue"]
        self._window_us = int((window + margin(window)) * 1_000_000)
        self._script = client.register_script(_LUA)

    def _attempt(self, holder: str | None) -> tuple[bool, float]:
        granted, wait_us = self._script(keys=self._keys, args=[
            self.limit, self._window_us, holder or "", uuid.uuid4().hex])
        return bool(granted), max(0, int(wait_us)) / 1_000_000


class LocalRateLimiter(_Limiter):
    """The same window for one process; callers are served as room appears, no queue."""

    def __init__(self, limit: int, window: float):
        self.limit = limit
        self.window = window + margin(window)
        self._granted: deque[float] = deque()
        self._lock = threading.Lock()

    def _attempt(self, holder: str | None) -> tuple[bool, float]:
        with self._lock:
            now = time.monotonic()
            while self._granted and self._granted[0] <= now - self.window:
                self._granted.popleft()
            if len(self._granted) < self.limit:
                self._granted.append(now)
                return True, 0.0
            return False, self._granted[0] + self.window - now


# -- the real-time reserve ------------------------------------------------------------------
# CHRONOX_REALTIME_BUDGET_SHARE of the limit is a budget of its own for real-time work (the
# minute and 10-minute refreshes), the rest is ETL's: two sliding windows whose limits add
# up to the limit, so a backfill can never take the real-time requests' room, and real-time
# work never takes more than its share from ETL. The reserve is held even while real-time
# work is idle; a share of 0 means one budget for everything.

ETL, REALTIME = "etl", "realtime"
REALTIME_KEY = f"{KEY}:{REALTIME}"
_lane: contextvars.ContextVar[str] = contextvars.ContextVar("chronox_budget_lane", default=ETL)


@contextlib.contextmanager
def realtime_lane() -> Iterator[None]:
    """Requests made inside the block spend the real-time reserve."""
    token = _lane.set(REALTIME)
    try:
        yield
    finally:
        _lane.reset(token)


def budget_split(limit: int, share: float) -> tuple[int, int]:
    """(ETL's, real-time's) requests per window; real-time's 0 means no reserve. Each lane
    keeps at least one request, so a limit of 1 cannot be split."""
    if share <= 0 or limit < 2:
        return limit, 0
    reserved = min(limit - 1, max(1, round(limit * share)))
    return limit - reserved, reserved


class LaneLimiter:
    """The ETL and real-time budgets behind one acquire(): the caller's lane picks one."""

    def __init__(self, etl: RateLimiter, realtime: RateLimiter):
        self.lanes = {ETL: etl, REALTIME: realtime}

    def acquire(self, holder: str | None = None, max_wait: float = math.inf) -> None:
        self.lanes[_lane.get()].acquire(holder, max_wait)


_limiters: dict[tuple[Any, ...], RateLimiter] = {}
_limiters_lock = threading.Lock()


def window_limiter(settings: Settings, limit: int, window: float, key: str, provider: str = "polygon") -> RateLimiter:
    """This process's view of `provider`'s budget of `limit` requests per `window` seconds,
    shared by every worker through CHRONOX_REDIS_URL (per process without it); one per key."""
    cache_key = (os.getpid(), settings.redis_url, limit, window, key)
    with _limiters_lock:
        limiter = _limiters.get(cache_key)
        if limiter is None:
            if settings.redis_url:
                from chronox.redis_client import shared_client

                limiter = RedisRateLimiter(shared_client(settings.redis_url), limit, window, key)
            else:
                # Once per budget and process, not per request: the budget is created once.
                log.warning("the %s request budget holds per process only: CHRONOX_REDIS_URL is unset", provider)
                limiter = LocalRateLimiter(limit, window)
            limiter.provider = provider
            _limiters[cache_key] = limiter
        return limiter


def get_limiter(settings: Settings) -> RateLimiter | None:
    """The process's limiter for Polygon's budget (split into the ETL and real-time lanes),
    or None when requests are unlimited."""
    if not settings.polygon_rate_limit:
        return None
    etl, realtime = budget_split(settings.polygon_rate_limit, settings.realtime_budget_share)
    limiter = window_limiter(settings, etl, settings.polygon_rate_window, KEY)
    if realtime:
        return LaneLimiter(limiter, window_limiter(settings, realtime, settings.polygon_rate_window, REALTIME_KEY))
    return limiter


class RequestBudget:
    """Applies the wait policy to the requests of one piece of work (one task attempt)."""

    def __init__(self, limiter: RateLimiter | None):
        self._limiter = limiter
        self.sent = 0

    def before_request(self) -> None:
        if self._limiter is not None:
            policy = _policy.get() or WaitPolicy()
            if self.sent == 0:
                self._limiter.acquire(policy.holder, policy.first_wait)
            else:
                # This attempt has spent budget already; leaving now would waste it.
                self._limiter.acquire(None, policy.later_wait)
        self.sent += 1
