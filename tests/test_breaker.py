"""The per-provider circuit breaker and hold: shared by processes through Redis (and the same
rules per process without it)."""
from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest
import redis

from chronox.breaker import (
    BreakerOpen,
    CircuitBreaker,
    Hold,
    LocalStore,
    RedisStore,
    Throttled,
    breaker_states,
    get_breaker,
)
from chronox.settings import ConfigError, Settings, load_settings
from chronox.sources.base import ProviderError, TransientProviderError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["redis", "local"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisStore | LocalStore]:
    if request.param == "local":
        yield LocalStore()
    else:
        yield RedisStore(redis.Redis.from_url(request.getfixturevalue("redis_url")))


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(TransientProviderError), breaker.call():
            raise TransientProviderError("503 from the provider")


def test_opens_after_consecutive_transient_failures_and_refuses_without_calling(store):
    breaker = CircuitBreaker("binance", store, failures=3, cooldown=5.0)
    fail(breaker, 2)
    with breaker.call():
        pass  # a success in between: the count starts over
    fail(breaker, 2)
    calls = 0
    with breaker.call():
        calls += 1  # still closed: two failures since the success
    fail(breaker, 3)
    with pytest.raises(BreakerOpen) as info, breaker.call():
        calls += 1
    assert calls == 1
    assert 4.0 < info.value.retry_after <= 5.0
    assert "binance circuit open after 3 consecutive transient failures" in str(info.value)
    assert isinstance(info.value, TransientProviderError)  # RestTask re-queues it with retry_after


def test_answers_that_are_not_failures_do_not_open_it(store):
    breaker = CircuitBreaker("coingecko", store, failures=2, cooldown=5.0)
    for _ in range(3):
        with pytest.raises(Throttled), breaker.call():
            raise Throttled("429", retry_after=1)  # up, but asking us to slow down
        with pytest.raises(ProviderError), breaker.call():
            raise ProviderError("400 bad symbol")  # up, and answering
        with pytest.raises(KeyError), breaker.call():
            raise KeyError("a bug of ours")
    with breaker.call():
        pass


def test_after_the_cool_down_one_probe_goes_and_its_success_closes_it(store):
    breaker = CircuitBreaker("polygon", store, failures=1, cooldown=0.3)
    fail(breaker, 1)
    with pytest.raises(BreakerOpen):
        with breaker.call():
            pass
    time.sleep(0.35)
    with breaker.call():  # the probe
        with pytest.raises(BreakerOpen) as info, breaker.call():
            pass  # everyone else waits for the probe's lease
        assert 0 < info.value.retry_after <= 0.3
    with breaker.call(), breaker.call():
        pass  # closed: calls go through, concurrently too


def test_a_failed_probe_opens_it_for_another_cool_down(store):
    breaker = CircuitBreaker("polygon", store, failures=2, cooldown=0.3)
    fail(breaker, 2)
    time.sleep(0.35)
    fail(breaker, 1)  # the probe fails: open again at once, whatever the count
    with pytest.raises(BreakerOpen) as info, breaker.call():
        pass
    assert info.value.retry_after > 0.2
    time.sleep(0.35)
    with breaker.call():
        pass


def test_a_probe_that_ends_without_an_answer_lets_another_probe(store):
    breaker = CircuitBreaker("binance", store, failures=1, cooldown=0.2)
    fail(breaker, 1)
    time.sleep(0.25)
    with pytest.raises(KeyError), breaker.call():
        raise KeyError("our own budget wait, or a bug")
    with breaker.call():  # a new probe at once, not after the lease
        pass


def test_hold_is_shared_and_only_extended(store):
    hold = Hold("binance", store, "Binance")
    hold.check()
    hold.set(0.5, "Binance banned this IP (418)")
    hold.set(0.1, "Binance rate limit hit (429)")  # shorter: does not cut the ban short
    with pytest.raises(Throttled) as info:
        Hold("binance", store).check()
    assert "banned this IP (418)" in str(info.value)
    assert 0.3 < info.value.retry_after <= 0.5
    Hold("coingecko", store).check()  # per provider
    time.sleep(0.55)
    hold.check()


def _probe(url: str, cooldown: float, ready, go, results) -> None:  # type: ignore[no-untyped-def]
    breaker = CircuitBreaker("binance", RedisStore(redis.Redis.from_url(url)), failures=2, cooldown=cooldown)
    ready.put(True)
    go.wait(30)
    try:
        with breaker.call():
            results.put(("probe", 0.0))
            time.sleep(0.5)
    except BreakerOpen as exc:
        results.put(("refused", exc.retry_after))


def _round(context, url: str, cooldown: float, before_go=lambda: None) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    """Three processes call at once; what each of them got."""
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    procs = [context.Process(target=_probe, args=(url, cooldown, ready, go, results)) for _ in range(3)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=30)
    before_go()
    go.set()
    outcomes = sorted(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    return outcomes


def test_open_probe_close_across_processes(redis_url):
    cooldown = 2.0
    breaker = CircuitBreaker("binance", RedisStore(redis.Redis.from_url(redis_url)), failures=2, cooldown=cooldown)
    # spawn, not fork: earlier tests leave threads behind whose locks a fork would copy held
    context = multiprocessing.get_context("spawn")
    # while open: every process is refused without calling, told the cool-down left
    outcomes = _round(context, redis_url, cooldown, before_go=lambda: fail(breaker, 2))
    assert [kind for kind, _ in outcomes] == ["refused"] * 3
    assert all(1.0 < wait <= cooldown for _, wait in outcomes)
    time.sleep(cooldown)
    # after the cool-down: exactly one process probes, the others wait for it
    outcomes = _round(context, redis_url, cooldown)
    assert [kind for kind, _ in outcomes] == ["probe", "refused", "refused"]
    # the probe succeeded: closed for everyone
    assert breaker_states(Settings(redis_url=redis_url))["binance"]["state"] == "closed"
    with breaker.call():
        pass


def test_breaker_states_for_chronox_status(redis_url):
    settings = load_settings({"CHRONOX_REDIS_URL": redis_url, "CHRONOX_BREAKER_FAILURES": "2",
                              "CHRONOX_BREAKER_COOLDOWN_SECONDS": "30"})
    breaker = get_breaker(settings, "coingecko")
    assert (breaker.failures, breaker.cooldown) == (2, 30.0)
    fail(breaker, 2)
    Hold("binance", RedisStore(redis.Redis.from_url(redis_url))).set(20, "Binance banned this IP (418)")
    states = breaker_states(settings)
    assert set(states) == {"polygon", "binance", "coingecko"}
    assert states["polygon"] == {"state": "closed", "failures": 0, "retry_in": None, "hold": None, "last_error": None}
    assert states["coingecko"]["state"] == "open" and states["coingecko"]["failures"] == 2
    assert 29 < states["coingecko"]["retry_in"] <= 30
    assert states["coingecko"]["last_error"] == "503 from the provider"
    assert states["binance"]["state"] == "closed" and states["binance"]["hold"] == "Binance banned this IP (418)"
    assert 19 < states["binance"]["retry_in"] <= 20


@pytest.mark.parametrize(("name", "value", "message"), [
    ("CHRONOX_BREAKER_FAILURES", "0", "CHRONOX_BREAKER_FAILURES='0' must be at least 1"),
    ("CHRONOX_BREAKER_COOLDOWN_SECONDS", "soon", "CHRONOX_BREAKER_COOLDOWN_SECONDS='soon' is not a number"),
])
def test_bad_settings_are_refused_with_the_variable_named(name, value, message):
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert str(info.value) == message
