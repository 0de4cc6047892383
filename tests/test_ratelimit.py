"""The global request budget in Redis: the window holds across processes, waiting callers
are served first come first served, and running work goes ahead of the queue."""
import multiprocessing
import time

import pytest
import redis

from chronox.ratelimit import KEY, RateLimited, RedisRateLimiter, margin

pytestmark = pytest.mark.timeout(60)


def limiter(url: str, limit: int, window: float) -> RedisRateLimiter:
    return RedisRateLimiter(redis.Redis.from_url(url), limit, window)


def _hammer(url: str, limit: int, window: float, count: int, queue) -> None:  # type: ignore[no-untyped-def]
    lim = limiter(url, limit, window)
    for _ in range(count):
        lim.acquire()
        queue.put(time.time())


def test_window_holds_across_processes(redis_url):
    limit, window = 3, 1.0
    # spawn, not fork: earlier tests leave threads behind whose locks a fork would copy held
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_hammer, args=(redis_url, limit, window, 4, queue)) for _ in range(3)]
    started = time.time()
    for p in procs:
        p.start()
    grants = sorted(queue.get(timeout=60) for _ in range(12))
    for p in procs:
        p.join(timeout=10)
    # 12 grants at 3 per window: at least three full windows after the first burst
    assert grants[-1] - started >= 3 * window
    for i in range(len(grants) - limit):
        assert grants[i + limit] - grants[i] >= window, grants


def test_queued_holders_are_served_in_order_and_keep_their_place(redis_url):
    lim = limiter(redis_url, 2, 1.0)
    lim.acquire()
    lim.acquire()  # the window is full
    waits = {}
    for holder in ("task-a", "task-b", "task-c"):
        with pytest.raises(RateLimited) as info:
            lim.acquire(holder, max_wait=0)
        waits[holder] = info.value.wait
    full = 1.0 + margin(1.0)
    assert 0 < waits["task-a"] <= full
    # two per window: a and b share the next window, c waits a whole window more
    assert abs(waits["task-b"] - waits["task-a"]) < 0.05
    assert waits["task-c"] >= waits["task-a"] + full - 0.05
    # Coming back early keeps the place; asking again does not move it to the back.
    with pytest.raises(RateLimited) as again:
        lim.acquire("task-c", max_wait=0)
    assert again.value.wait <= waits["task-c"]
    time.sleep(waits["task-a"])
    lim.acquire("task-a", max_wait=0.2)
    client = redis.Redis.from_url(redis_url)
    assert client.zscore(f"{KEY}:queue", "task-a") is None
    assert client.zscore(f"{KEY}:queue", "task-c") is not None


def test_running_work_goes_ahead_of_the_queue(redis_url):
    lim = limiter(redis_url, 1, 0.5)
    lim.acquire()
    with pytest.raises(RateLimited):
        lim.acquire("queued-task", max_wait=0)
    started = time.monotonic()
    lim.acquire(None, max_wait=5)  # a running task's next page: served as soon as the window has room
    assert time.monotonic() - started < 0.5 + margin(0.5) + 0.2
    # the queued task's turn moved back instead of exceeding the limit
    with pytest.raises(RateLimited) as info:
        lim.acquire("queued-task", max_wait=0)
    assert info.value.wait > 0.3


def test_state_expires_when_idle(redis_url):
    lim = limiter(redis_url, 5, 0.2)
    lim.acquire()
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl(f"{KEY}:granted") <= int((0.2 + margin(0.2)) * 1000) + 1000


def test_each_providers_wait_is_counted_under_its_own_name():
    from prometheus_client import REGISTRY

    from chronox.ratelimit import window_limiter
    from chronox.settings import Settings

    def waited(provider: str) -> float:
        return REGISTRY.get_sample_value("market_data_rate_limit_wait_seconds_total", {"provider": provider}) or 0.0

    before = {p: waited(p) for p in ("binance", "polygon")}
    budget = window_limiter(Settings(), 1, 60.0, "chronox:test:binance-weight", "binance")
    budget.acquire()
    with pytest.raises(RateLimited):
        budget.acquire(max_wait=0)
    assert waited("binance") - before["binance"] > 50  # the rest of the 60 s window
    assert waited("polygon") == before["polygon"]
