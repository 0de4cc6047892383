"""ChronoX's Polygon REST source driven through the real polygon-api-client against the
local stand-in: pagination, timestamp normalization, classification of every failure
mode, timeouts, and the API key kept out of every message and URL."""
import datetime as dt
import json
import time

import pytest

from chronox.bars import UTC, ts_from_ms
from chronox.calendar import day_bounds_utc
from chronox.ratelimit import LocalRateLimiter
from chronox.settings import load_settings
from chronox.sources.polygon import PolygonError, PolygonRest, TransientPolygonError
from tests.rest_support import KEY, polygon, polygon_minute_bars, serve_days  # noqa: F401

pytestmark = pytest.mark.timeout(60)
DAY1, DAY2 = dt.date(2024, 3, 4), dt.date(2024, 3, 5)


def client(**kwargs) -> PolygonRest:
    return PolygonRest(load_settings(), **kwargs)


def failure(call) -> PolygonError:
    with pytest.raises(PolygonError) as info:
        call()
    assert KEY not in str(info.value)
    return info.value


def test_minute_bars_follow_pagination_and_normalize_ms_to_utc(polygon):
    served = serve_days(polygon, "AAPL", [DAY1, DAY2])
    # a bar just before DAY1 (New York) must not come back
    polygon.add_minute_bars("AAPL", [{"t": int(day_bounds_utc(DAY1)[0].timestamp() * 1000) - 60_000,
                                      "o": 1, "h": 1, "l": 1, "c": 1, "v": 1}])
    bars = client(page_limit=300).minute_bars("AAPL", DAY1, DAY2)
    expected = polygon_minute_bars(DAY1, "AAPL") + polygon_minute_bars(DAY2, "AAPL")
    assert len(bars) == served == len(expected)
    assert [(b.ts, b.open, b.high, b.low, b.close, b.volume, b.transactions) for b in bars] == \
        [(ts_from_ms(e["t"]), e["o"], e["h"], e["l"], e["c"], e["v"], e["n"]) for e in expected]
    assert all(b.ts.tzinfo == UTC and b.source == "api" and b.symbol == "AAPL" for b in bars)
    assert polygon.count_requests("/v2/aggs/ticker/AAPL/range/1/minute") == -(-served // 300)
    first = polygon.requests[0]
    assert first.query["adjusted"] == "false"  # flat files are unadjusted
    assert all(r.has_auth and "apiKey" not in r.query for r in polygon.requests)


def test_snapshot_and_last_trade_normalize_ns(polygon):
    updated_ns = 1_709_580_000_123_456_789
    polygon.set_snapshot("AAPL", price=171.25, volume=5_000_000, updated_ns=updated_ns, prev_close=170.0)
    polygon.set_snapshot("MSFT", price=410.5, volume=2_000_000, updated_ns=updated_ns + 1000)
    snaps = {s.symbol: s for s in client().snapshots(["AAPL", "MSFT", "NOPE"])}
    assert set(snaps) == {"AAPL", "MSFT"}
    aapl = snaps["AAPL"]
    assert (aapl.price, aapl.volume, aapl.prev_close, aapl.method) == (171.25, 5_000_000, 170.0, "snapshot")
    assert aapl.ts == dt.datetime(2024, 3, 4, 19, 20, 0, 123456, tzinfo=UTC)
    assert polygon.requests[-1].query["tickers"] == "AAPL,MSFT,NOPE"
    trade = client().last_trade("MSFT")
    assert (trade.price, trade.method, trade.ts) == (410.5, "rest", dt.datetime(2024, 3, 4, 19, 20, 0, 123457, tzinfo=UTC))


def test_reference_dividends_and_splits_with_pagination(polygon):
    polygon.set_ticker_details("AAPL", {"name": "Apple Inc.", "list_date": "1980-12-12"})
    polygon.add_dividends("AAPL", [{"ex_dividend_date": f"2023-{m:02d}-10", "pay_date": f"2023-{m:02d}-20",
                                    "cash_amount": 0.24, "frequency": 4, "dividend_type": "CD"}
                                   for m in range(1, 13)])
    polygon.add_dividends("MSFT", [{"ex_dividend_date": "2023-05-17", "cash_amount": 0.68}])
    polygon.add_splits("AAPL", [{"execution_date": "2020-08-31", "split_from": 1, "split_to": 4}])
    rest = client(page_limit=5)
    assert rest.ticker_details("AAPL")["name"] == "Apple Inc."
    dividends = rest.dividends("AAPL")
    assert len(dividends) == 12 and {d["symbol"] for d in dividends} == {"AAPL"}
    assert dividends[0]["ex_dividend_date"] == dt.date(2023, 1, 10) and dividends[0]["cash_amount"] == 0.24
    assert polygon.count_requests("/v3/reference/dividends") == 3  # 12 records, 5 per page
    [split] = rest.splits("AAPL")
    assert (split["execution_date"], split["split_from"], split["split_to"]) == (dt.date(2020, 8, 31), 1.0, 4.0)


def test_429_carries_retry_after_and_5xx_are_transient(polygon):
    polygon.inject("/v2/aggs", "429", retry_after=7)
    error = failure(lambda: client().minute_bars("AAPL", DAY1, DAY1))
    assert isinstance(error, TransientPolygonError) and error.retry_after == 7
    assert "429" in str(error) and "exceeded the maximum requests" in str(error)
    for kind in ("500", "502", "503"):
        polygon.inject("/v2/snapshot", kind)
        error = failure(lambda: client().snapshots(["AAPL"]))
        assert isinstance(error, TransientPolygonError) and kind in str(error)
    assert polygon.count_requests() == 4  # the client itself never retried


def test_slow_answer_times_out_as_transient(polygon, monkeypatch):
    monkeypatch.setenv("CHRONOX_POLYGON_TIMEOUT", "0.5")
    polygon.inject("/v2/last/trade", "slow", delay=3)
    started = time.monotonic()
    error = failure(lambda: client().last_trade("AAPL"))
    assert isinstance(error, TransientPolygonError) and "ReadTimeoutError" in str(error)
    assert time.monotonic() - started < 2.5


def test_unreachable_server_is_transient(monkeypatch):
    monkeypatch.setenv("POLYGON_API_KEY", KEY)
    monkeypatch.setenv("CHRONOX_POLYGON_BASE_URL", "http://127.0.0.1:9")  # discard port: refused
    error = failure(lambda: client().ticker_details("AAPL"))
    assert isinstance(error, TransientPolygonError)


@pytest.mark.parametrize("kind,call,detail", [
    ("malformed", lambda r: r.minute_bars("AAPL", DAY1, DAY1), "not JSON"),
    ("garbage_json", lambda r: r.minute_bars("AAPL", DAY1, DAY1), "resultsCount 'three'"),
    ("garbage_json", lambda r: r.snapshots(["AAPL"]), "no tickers list"),
    ("garbage_json", lambda r: r.dividends("AAPL"), "results is not a list"),
    ("garbage_json", lambda r: r.ticker_details("AAPL"), "no results object"),
    ("malformed", lambda r: r.last_trade("AAPL"), "not JSON"),
])
def test_malformed_answers_fail_clearly_instead_of_looking_empty(polygon, kind, call, detail):
    polygon.inject(None, kind)
    error = failure(lambda: call(client()))
    assert not isinstance(error, TransientPolygonError)
    assert str(error).startswith("malformed response to ") and detail in str(error)


def test_client_errors_are_permanent_and_never_show_the_key(polygon, monkeypatch):
    error = failure(lambda: client().ticker_details("NOPE"))
    assert not isinstance(error, TransientPolygonError)
    assert "404" in str(error) and "/v3/reference/tickers/NOPE" in str(error)
    monkeypatch.setenv("POLYGON_API_KEY", KEY + "-wrong")
    error = failure(lambda: client().snapshots(["AAPL"]))
    assert "401" in str(error) and "Unknown API Key" in str(error)
    assert KEY + "-wrong" not in str(error)


def test_next_url_is_followed_without_an_api_key_in_the_url(polygon):
    serve_days(polygon, "AAPL", [DAY1])
    bars = polygon_minute_bars(DAY1, "AAPL")
    start, end = (int(t.timestamp() * 1000) for t in day_bounds_utc(DAY1))
    # A first page whose next_url carries the key, as some Polygon endpoints do.
    first_page = {"status": "OK", "resultsCount": 2, "queryCount": 2, "results": bars[:2],
                  "next_url": f"{polygon.base_url}/v2/aggs/ticker/AAPL/range/1/minute/{bars[2]['t']}/{end - 1}"
                              f"?limit=50000&sort=asc&adjusted=false&apiKey={KEY}"}
    polygon.inject("/v2/aggs", "malformed", body=json.dumps(first_page))
    got = client().minute_bars("AAPL", DAY1, DAY1)
    assert [b.ts for b in got] == [ts_from_ms(b["t"]) for b in bars]
    second = polygon.requests[1]
    assert second.path.endswith(f"/{bars[2]['t']}/{end - 1}") and "apiKey" not in second.query
    assert start <= bars[0]["t"]


def test_every_request_spends_the_budget(polygon):
    serve_days(polygon, "AAPL", [DAY1, DAY2])
    limiter = LocalRateLimiter(limit=2, window=1.0)
    rest = client(page_limit=400, limiter=limiter)
    started = time.monotonic()
    rest.minute_bars("AAPL", DAY1, DAY2)
    pages = polygon.count_requests()
    assert pages >= 3
    assert rest.budget.sent == pages
    # two per second (plus the margin): the third page waited for the window to move on
    assert time.monotonic() - started >= 1.0
    assert polygon.max_requests_in_window(1.0) <= 2
