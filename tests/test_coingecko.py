"""CoinGecko: prices and OHLC ranges from the documented payloads, plan refusal, 429 and the
shared call budget across processes, against chronox.testing.coingecko and real Redis."""
from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chronox.bars import Bar
from chronox.breaker import Throttled, breaker_states
from chronox.settings import ConfigError, load_settings
from chronox.sources.base import ProviderError, Snapshot, TransientProviderError
from chronox.sources.coingecko import PRO_BASE_URL, PUBLIC_BASE_URL, CoinGeckoError, CoinGeckoRest, PlanRefused
from chronox.testing.coingecko import OHLC_EXAMPLE, SIMPLE_PRICE_EXAMPLE, FakeCoinGecko
from chronox.testing.provider_calls import ProviderWorkers
from tests.helpers import provider_env, utc

pytestmark = pytest.mark.timeout(90)

IDS = {"BTC-USD": "bitcoin", "ETH-USD": "ethereum", "SOL-EUR": "solana", "DOGE-USD": "dogecoin"}
PRO_KEY, DEMO_KEY = "pro-sekrit", "demo-sekrit"
HOUR, DAY_MS = 3_600_000, 86_400_000


@pytest.fixture
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Shared state in this test's Redis database; no API key unless a test sets one."""
    return provider_env(monkeypatch, redis_url, "COINGECKO_API_KEY")


def serve(monkeypatch: pytest.MonkeyPatch, root: str, plan: str | None, key: str | None, **kwargs: Any) -> Any:
    fake = FakeCoinGecko(root, keys={PRO_KEY: "pro", DEMO_KEY: "demo"}, **kwargs).start()
    monkeypatch.setenv("CHRONOX_COINGECKO_BASE_URL", fake.base_url)
    if plan:
        monkeypatch.setenv("CHRONOX_COINGECKO_PLAN", plan)
    if key:
        monkeypatch.setenv("COINGECKO_API_KEY", key)
    return fake


@pytest.fixture
def public(env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCoinGecko]:
    """api.coingecko.com, called without a key."""
    fake = serve(monkeypatch, "public", None, None)
    yield fake
    fake.stop()


@pytest.fixture
def pro(env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCoinGecko]:
    """pro-api.coingecko.com with a paid plan's key."""
    fake = serve(monkeypatch, "pro", "pro", PRO_KEY)
    yield fake
    fake.stop()


def gecko(**kwargs: Any) -> CoinGeckoRest:
    return CoinGeckoRest(load_settings(), IDS, **kwargs)


def test_documented_simple_price_example_is_the_exact_snapshot(public):
    public.set_price_record("bitcoin", SIMPLE_PRICE_EXAMPLE["bitcoin"])
    assert gecko().snapshots(["BTC-USD"]) == [
        Snapshot("BTC-USD", utc(2024, 3, 25, 8, 45), 67187.3358936566, 31260929299.5248, None, "snapshot")]
    (request,) = public.requests
    assert request.path == "/api/v3/simple/price" and request.plan == "public"
    assert request.query == {"ids": "bitcoin", "vs_currencies": "usd", "include_24hr_vol": "true",
                             "include_last_updated_at": "true", "precision": "full"}


def test_many_coins_one_request_mapped_back_to_canonical_symbols(public):
    public.set_price_record("bitcoin", {"usd": 67000.5, "usd_24h_vol": 1.5e10, "last_updated_at": 1711356300})
    public.set_price_record("ethereum", {"usd": 3500.25, "usd_24h_vol": 7.5e9, "last_updated_at": 1711356240})
    public.set_price_record("solana", {"eur": 160.75, "eur_24h_vol": 1e9, "last_updated_at": 1711356200})
    snaps = gecko().snapshots(["BTC-USD", "ETH-USD", "SOL-EUR", "DOGE-USD"])  # no dogecoin price: no snapshot
    assert sorted(snaps, key=lambda s: s.symbol) == [
        Snapshot("BTC-USD", utc(2024, 3, 25, 8, 45), 67000.5, 1.5e10, None, "snapshot"),
        Snapshot("ETH-USD", utc(2024, 3, 25, 8, 44), 3500.25, 7.5e9, None, "snapshot"),
        Snapshot("SOL-EUR", utc(2024, 3, 25, 8, 43, 20), 160.75, 1e9, None, "snapshot"),
    ]
    (request,) = public.requests
    assert request.query["ids"] == "bitcoin,dogecoin,ethereum,solana"
    assert request.query["vs_currencies"] == "eur,usd"
    assert gecko().last_trade("ETH-USD") == Snapshot("ETH-USD", utc(2024, 3, 25, 8, 44), 3500.25, 7.5e9, None,
                                                     "rest")


def test_a_symbol_without_a_coingecko_id_is_refused(public):
    with pytest.raises(CoinGeckoError) as info:
        gecko().snapshots(["ADA-USD"])
    assert str(info.value) == "no CoinGecko id for ADA-USD: register it with --provider-symbol (e.g. bitcoin)"
    assert public.requests == []


def test_documented_ohlc_example_gives_bars_stamped_with_their_window_start(pro):
    pro.add_ohlc("bitcoin", "usd", "hourly", OHLC_EXAMPLE)
    bars = gecko().intraday_bars("BTC-USD", "1h", dt.date(2024, 3, 2), dt.date(2024, 3, 2))
    # candles are stamped with their close: 16:00 closes the 15:00 hour; CoinGecko sends no volume
    assert bars == [Bar("BTC-USD", utc(2024, 3, 2, 15), 61942.0, 62211.0, 61721.0, 61845.0, 0.0, None, None, "api"),
                    Bar("BTC-USD", utc(2024, 3, 2, 19), 61828.0, 62139.0, 61726.0, 62139.0, 0.0, None, None, "api"),
                    Bar("BTC-USD", utc(2024, 3, 2, 23), 62171.0, 62210.0, 61821.0, 62068.0, 0.0, None, None, "api")]
    (request,) = pro.requests
    assert request.path == "/api/v3/coins/bitcoin/ohlc/range" and request.plan == "pro"
    assert request.query == {"vs_currency": "usd", "from": str(int(utc(2024, 3, 2).timestamp())),
                             "to": str(int(utc(2024, 3, 3).timestamp())), "interval": "hourly"}


def test_daily_ranges_are_split_into_180_day_requests_and_open_candles_left_out(pro):
    first, last = dt.date(2023, 1, 1), dt.date(2024, 2, 4)  # 400 days
    start = int(utc(2023, 1, 1).timestamp() * 1000)
    closes = [start + (i + 1) * DAY_MS for i in range(400)]
    pro.add_ohlc("ethereum", "usd", "daily", [[c, 100 + i, 110 + i, 90 + i, 105 + i] for i, c in enumerate(closes)])
    pro.add_ohlc("ethereum", "usd", "daily", [[start, 1, 1, 1, 1],  # closes the day before the range
                                              [closes[-1] + 5 * HOUR, 9, 9, 9, 9]])  # today's, still open
    bars = gecko().daily_bars("ETH-USD", first, last)
    assert [b.ts for b in bars] == [utc(2023, 1, 1) + dt.timedelta(days=i) for i in range(400)]
    assert (bars[0].open, bars[-1].close, {b.volume for b in bars}) == (100.0, 504.0, {0.0})
    spans = [(int(r.query["from"]), int(r.query["to"])) for r in pro.requests]
    assert [(b - a) // 86_400 for a, b in spans] == [180, 180, 40]
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


def test_minute_bars_are_refused_without_a_request(pro):
    with pytest.raises(CoinGeckoError, match="CoinGecko has no minute bars"):
        gecko().minute_bars("BTC-USD", dt.date(2024, 3, 2), dt.date(2024, 3, 2))
    with pytest.raises(CoinGeckoError, match="hourly or daily, not '5m'"):
        gecko().intraday_bars("BTC-USD", "5m", dt.date(2024, 3, 2), dt.date(2024, 3, 2))
    assert pro.requests == []


@pytest.mark.parametrize(("key", "plan"), [(None, "public (no key)"), (DEMO_KEY, "demo")])
def test_a_plan_without_the_ohlc_range_is_refused_with_the_plan_named(env, monkeypatch, key, plan):
    fake = serve(monkeypatch, "public", "demo" if key else None, key)
    try:
        with pytest.raises(PlanRefused) as info:
            gecko().daily_bars("BTC-USD", dt.date(2024, 3, 1), dt.date(2024, 3, 2))
        assert info.value.plan == plan
        assert str(info.value).startswith(f"CoinGecko's {plan} plan does not include /coins/bitcoin/ohlc/range")
        assert "error 10005, This request is limited Pro API subscribers" in str(info.value)
        assert not isinstance(info.value, TransientProviderError)  # the phase ends as a warning, no retries
        assert [r.status for r in fake.requests] == [401]
        assert fake.requests[0].plan == ("demo" if key else "public")
        assert breaker_states(load_settings())["coingecko"]["failures"] == 0
    finally:
        fake.stop()


def test_keys_go_in_the_plans_header_to_the_plans_root(env, monkeypatch):
    assert CoinGeckoRest(load_settings({"CHRONOX_COINGECKO_PLAN": "pro"})).base_url == PRO_BASE_URL
    assert CoinGeckoRest(load_settings({})).base_url == PUBLIC_BASE_URL
    fake = serve(monkeypatch, "public", "pro", PRO_KEY)  # a pro key sent to the public root
    try:
        with pytest.raises(CoinGeckoError) as info:
            gecko().snapshots(["BTC-USD"])
        assert "error 10010" in str(info.value) and "a pro key needs the pro root" in str(info.value)
        assert PRO_KEY not in str(info.value)
    finally:
        fake.stop()
    with pytest.raises(ConfigError, match="CHRONOX_COINGECKO_PLAN='enterprise' is not one of demo, pro"):
        load_settings({"CHRONOX_COINGECKO_PLAN": "enterprise"})


def test_malformed_and_failing_answers(public):
    public.set_price_record("bitcoin", {"usd": "67000", "last_updated_at": 1711356300})
    with pytest.raises(CoinGeckoError, match="bitcoin.usd is '67000', not a number"):
        gecko().snapshots(["BTC-USD"])
    public.fail_next("malformed")
    with pytest.raises(CoinGeckoError, match="not JSON"):
        gecko().snapshots(["BTC-USD"])
    public.fail_next("500")
    with pytest.raises(TransientProviderError, match="CoinGecko answered 500"):
        gecko().snapshots(["BTC-USD"])


def in_processes(workers: ProviderWorkers, processes: int = 1, count: int = 1, window: float = 60.0,
                 before: Callable[[], object] = lambda: None) -> list[tuple[str, Any]]:
    return workers.run("coingecko", os.environ, "snapshots", (["BTC-USD"],), processes=processes, count=count,
                       options={"ids": IDS, "rate_window": window}, before=before)


def test_429_holds_every_process_for_its_retry_after(public, workers):
    public.set_price_record("bitcoin", SIMPLE_PRICE_EXAMPLE["bitcoin"])
    public.fail_next("429", retry_after=3)
    first: list[Throttled] = []

    def earn_a_429() -> None:
        with pytest.raises(Throttled) as info:
            gecko().snapshots(["BTC-USD"])
        first.append(info.value)

    outcomes = in_processes(workers, processes=2, before=earn_a_429)
    assert first[0].retry_after == 3 and "You've exceeded the Rate Limit" in str(first[0])
    assert all(kind == "throttled" and 0 < w <= 3 for kind, w in outcomes), outcomes
    assert len(public.requests) == 1
    time.sleep(max(w for _, w in outcomes))
    assert in_processes(workers) == [("ok", 1)]
    earned, later = public.requests
    assert later.time - earned.time >= 3
    public.fail_next("429")  # without Retry-After: CoinGecko counts by the minute
    with pytest.raises(Throttled) as info:
        gecko().snapshots(["BTC-USD"])
    assert info.value.retry_after == 60


def test_call_budget_holds_across_two_processes(public, workers, monkeypatch):
    monkeypatch.setenv("CHRONOX_COINGECKO_RATE_LIMIT", "3")
    public.calls_per_window, public.window = 5, 1.0  # CoinGecko's own limit: 429 beyond it
    public.set_price_record("bitcoin", SIMPLE_PRICE_EXAMPLE["bitcoin"])
    outcomes = in_processes(workers, processes=2, count=4, window=1.0)
    assert [kind for kind, _ in outcomes] == ["ok"] * 8
    arrivals = sorted(r.time for r in public.requests)
    assert [r.status for r in public.requests] == [200] * 8
    # 3 calls a second: the 4th waits a window after the 1st. Grants are spaced 1.1 s (the
    # window and its margin); arrival allows for a busy machine's jitter.
    for i in range(len(arrivals) - 3):
        assert arrivals[i + 3] - arrivals[i] >= 0.75, arrivals
    assert arrivals[-1] - arrivals[0] >= 2.0


def test_breaker_counts_coingecko_failures(public, monkeypatch):
    monkeypatch.setenv("CHRONOX_BREAKER_FAILURES", "2")
    public.set_price_record("bitcoin", SIMPLE_PRICE_EXAMPLE["bitcoin"])
    public.fail_next("503", count=2)
    for _ in range(2):
        with pytest.raises(TransientProviderError):
            gecko().snapshots(["BTC-USD"])
    with pytest.raises(ProviderError, match="coingecko circuit open after 2 consecutive transient failures"):
        gecko().snapshots(["BTC-USD"])
    assert len(public.requests) == 2
