"""ChronoX's Polygon REST source driven through the real polygon-api-client against the
local stand-in: pagination, timestamp normalization, classification of every failure
mode, timeouts, and the API key kept out of every message and URL."""
import datetime as dt
import json
import time

import pytest
from click.testing import CliRunner

from chronox.bars import UTC, ts_from_ms
from chronox.breaker import BreakerOpen, breaker_states
from chronox.calendar import day_bounds_utc
from chronox.cli import cli
from chronox.ratelimit import LocalRateLimiter
from chronox.settings import load_settings
from chronox.sources.polygon import PolygonError, PolygonRest, TransientPolygonError
from tests.helpers import KEY, polygon_minute_bars, serve_days

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
    assert (trade.price, trade.method, trade.ts) == \
        (410.5, "rest", dt.datetime(2024, 3, 4, 19, 20, 0, 123457, tzinfo=UTC))


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


def test_polygon_circuit_opens_after_consecutive_5xx_and_a_429_does_not_count(polygon, redis_url, sqlite_url,
                                                                              monkeypatch):
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    monkeypatch.setenv("CHRONOX_BREAKER_FAILURES", "3")
    monkeypatch.setenv("CHRONOX_BREAKER_COOLDOWN_SECONDS", "30")
    polygon.inject("/v2/snapshot", "429", count=5, retry_after=1)
    for _ in range(5):  # Polygon is up and says "slow down": not a failure
        assert isinstance(failure(lambda: client().snapshots(["AAPL"])), TransientPolygonError)
    polygon.inject("/v2/snapshot", "503", count=3)
    for _ in range(3):
        failure(lambda: client().snapshots(["AAPL"]))
    asked = polygon.count_requests()
    with pytest.raises(BreakerOpen) as info:
        client().snapshots(["AAPL"])
    assert 25 < info.value.retry_after <= 30
    assert polygon.count_requests() == asked == 8  # open: Polygon was not called
    assert breaker_states(load_settings())["polygon"]["state"] == "open"
    status = CliRunner().invoke(cli, ["status"])
    assert status.exit_code == 0 and "provider polygon: circuit open, next call in " in status.output
    assert "Polygon answered 503" in status.output and KEY not in status.output


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


# -- Polygon's documented answers (chronox.testing.polygon_examples), served as published ------

def test_documented_dividends_and_splits_without_id_get_stable_derived_ids(polygon):
    from chronox.testing import polygon_examples as ex

    polygon.add_dividends("AAPL", ex.DIVIDENDS_2022["results"], assign_ids=False)
    polygon.add_splits("AAPL", ex.SPLITS_2022["results"], assign_ids=False)
    rest = client()
    dividends = rest.dividends("AAPL")
    assert [{k: v for k, v in d.items() if k != "id"} for d in dividends] == [
        {"symbol": "AAPL", "ex_dividend_date": dt.date(2021, 11, 5), "record_date": dt.date(2021, 11, 8),
         "pay_date": dt.date(2021, 11, 11), "declaration_date": dt.date(2021, 10, 28), "cash_amount": 0.22,
         "currency": None, "frequency": 4, "dividend_type": "CD"},
        {"symbol": "AAPL", "ex_dividend_date": dt.date(2021, 8, 6), "record_date": dt.date(2021, 8, 9),
         "pay_date": dt.date(2021, 8, 12), "declaration_date": dt.date(2021, 7, 27), "cash_amount": 0.22,
         "currency": None, "frequency": 4, "dividend_type": "CD"}]
    splits = rest.splits("AAPL")
    assert [(s["execution_date"], s["split_from"], s["split_to"]) for s in splits] == \
        [(dt.date(2020, 8, 31), 1.0, 4.0), (dt.date(2005, 2, 28), 1.0, 2.0)]
    ids = [d["id"] for d in dividends] + [s["id"] for s in splits]
    assert len(set(ids)) == 4 and all(i.startswith("chronox-") and len(i) <= 100 for i in ids)
    # asked again, the same records get the same ids: a rerun upserts, it does not duplicate
    assert [d["id"] for d in rest.dividends("AAPL")] + [s["id"] for s in rest.splits("AAPL")] == ids


def test_client_fixtures_without_id_keep_distinct_records_apart(polygon):
    from chronox.testing import polygon_examples as ex

    for record in ex.DIVIDENDS_CLIENT["results"]:
        polygon.add_dividends(record["ticker"], [record], assign_ids=False)
    for record in ex.SPLITS_CLIENT["results"]:
        polygon.add_splits(record["ticker"], [record], assign_ids=False)
    rest = client()
    cssen = rest.dividends("CSSEN")
    assert len(cssen) == 8 == len({d["id"] for d in cssen})
    assert sorted(d["ex_dividend_date"] for d in cssen)[0] == dt.date(2023, 9, 14)
    assert {d["cash_amount"] for d in cssen} == {0.59375}
    # the same split on the same day for two share classes: two rows
    googl, goog = rest.splits("GOOGL"), rest.splits("GOOG")
    assert (googl[0]["split_from"], googl[0]["split_to"]) == (goog[0]["split_from"], goog[0]["split_to"]) == (1, 20)
    assert googl[0]["id"] != goog[0]["id"]
    shop = rest.splits("SHOP")
    assert sorted(s["execution_date"] for s in shop) == [dt.date(2022, 6, 22), dt.date(2022, 6, 29)]
    assert shop[0]["id"] != shop[1]["id"]
    [reverse] = rest.splits("BRW")
    assert (reverse["split_from"], reverse["split_to"]) == (2.0, 1.0)


def test_documented_ids_are_kept(polygon):
    from chronox.testing import polygon_examples as ex

    polygon.add_dividends("AAPL", ex.DIVIDENDS["results"])
    polygon.add_splits("AAPL", ex.SPLITS["results"])
    rest = client()
    assert [d["id"] for d in rest.dividends("AAPL")] == [r["id"] for r in ex.DIVIDENDS["results"]]
    assert [s["id"] for s in rest.splits("AAPL")] == [r["id"] for r in ex.SPLITS["results"]]


def test_documented_aggregates_daily_and_as_the_latest_minute(polygon):
    from chronox.testing import polygon_examples as ex

    polygon.add_daily_bars("AAPL", ex.AGGS["results"] + ex.AGGS_CLIENT["results"])
    rest = client()
    bars = rest.daily_bars("AAPL", dt.date(2020, 1, 2), dt.date(2020, 1, 3))
    assert [(b.ts, b.open, b.high, b.low, b.close, b.volume, b.vwap, b.transactions) for b in bars] == [
        (dt.datetime(2020, 1, 2, 5, tzinfo=UTC), 74.06, 75.15, 73.7975, 75.0875, 135647456.0, 74.6099, 1),
        (dt.datetime(2020, 1, 3, 5, tzinfo=UTC), 74.2875, 75.145, 74.125, 74.3575, 146535512.0, 74.7026, 1)]
    old = rest.daily_bars("AAPL", dt.date(2005, 4, 1), dt.date(2005, 4, 4))  # float volumes
    assert [(b.ts.date(), b.close, b.volume, b.transactions) for b in old] == \
        [(dt.date(2005, 4, 1), 1.4604, 642646396.0, 82132), (dt.date(2005, 4, 4), 1.4675, 578172308.0, 65543)]
    # The endpoint's one documented example serves the minute timespan too: the agg snapshot
    # method asks for the latest minute aggregate.
    polygon.add_minute_bars("AAPL", ex.AGGS["results"])
    snap = rest.last_minute_agg("AAPL", now=dt.datetime(2020, 1, 3, 12, tzinfo=UTC))
    assert (snap.ts, snap.price, snap.volume, snap.method) == \
        (dt.datetime(2020, 1, 3, 5, tzinfo=UTC), 74.3575, 146535512.0, "agg")


@pytest.mark.parametrize("example", ["SNAPSHOT_2022", "SNAPSHOT"])
def test_documented_all_tickers_snapshot(polygon, example):
    from chronox.testing import polygon_examples as ex

    [record] = getattr(ex, example)["tickers"]  # 2022: `min` without `t`; today: with it
    polygon.set_snapshot_record(record)
    [snap] = client().snapshots(["BCAT"])
    assert (snap.symbol, snap.price, snap.volume, snap.prev_close, snap.method) == \
        ("BCAT", 20.506, 37216.0, 20.63, "snapshot")
    assert snap.ts == dt.datetime(2020, 11, 12, 14, 54, 54, 630916, tzinfo=UTC)  # `updated`, ns


@pytest.mark.parametrize("example,price,size,ts", [
    ("LAST_TRADE", 129.8473, 25.0, dt.datetime(2021, 4, 8, 17, 2, 22, 969834, tzinfo=UTC)),
    ("LAST_TRADE_CLIENT", 166.25, 2.0, dt.datetime(2022, 4, 28, 20, 55, 19, 310617, tzinfo=UTC)),
])
def test_documented_last_trade(polygon, example, price, size, ts):
    from chronox.testing import polygon_examples as ex

    polygon.set_last_trade_record("AAPL", getattr(ex, example)["results"])
    trade = client().last_trade("AAPL")
    assert (trade.price, trade.volume, trade.ts, trade.method) == (price, size, ts, "rest")


def test_documented_ticker_details(polygon):
    from chronox.testing import polygon_examples as ex

    polygon.set_ticker_details("AAPL", ex.TICKER_DETAILS["results"])
    details = client().ticker_details("AAPL")
    assert details == ex.TICKER_DETAILS["results"]
