"""The Polygon stand-ins must satisfy the real clients, or every test built on
them proves nothing; these tests drive them with polygon-api-client and
websockets exactly as production code would."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from polygon import RESTClient, WebSocketClient
from polygon.exceptions import AuthError, BadResponse
from urllib3.exceptions import MaxRetryError, ResponseError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from chronox.testing.polygon_rest import FakePolygonRest, RequestRecord
from chronox.testing.polygon_ws import FakePolygonStream

pytestmark = pytest.mark.timeout(60)

DAY1 = 1_704_153_600_000  # 2024-01-02 00:00 UTC
OPEN1 = DAY1 + 14 * 3_600_000 + 30 * 60_000  # 14:30 UTC = 09:30 New York
DAY2 = DAY1 + 86_400_000


def minute_bars(start_ms: int, count: int, base: float = 100.0) -> list[dict[str, Any]]:
    return [
        {"t": start_ms + i * 60_000, "o": base + i, "h": base + i + 0.5, "l": base + i - 0.5,
         "c": base + i + 0.25, "v": 1000 + i, "vw": base + i + 0.1, "n": 10 + i}
        for i in range(count)
    ]


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture
def rest() -> Iterator[FakePolygonRest]:
    with FakePolygonRest() as server:
        yield server


@pytest.fixture
def client(rest: FakePolygonRest) -> RESTClient:
    # retries=0: urllib3's built-in retries would otherwise hide faults.
    return RESTClient("test-key", base=rest.base_url, retries=0)


# -- aggregates ---------------------------------------------------------------


def test_list_aggs_follows_pagination_in_order(rest: FakePolygonRest, client: RESTClient) -> None:
    day1, day2 = minute_bars(OPEN1, 390), minute_bars(DAY2 + 14 * 3_600_000 + 30 * 60_000, 390, 200.0)
    rest.add_minute_bars("AAPL", day2)
    rest.add_minute_bars("AAPL", day1)  # out of order on purpose
    rest.add_minute_bars("MSFT", minute_bars(OPEN1, 5, 50.0))

    aggs = list(client.list_aggs("AAPL", 1, "minute", "2024-01-02", "2024-01-03", limit=200))

    assert [a.timestamp for a in aggs] == [b["t"] for b in day1 + day2]
    assert (aggs[0].open, aggs[0].close, aggs[0].volume, aggs[0].vwap, aggs[0].transactions) == \
        (100.0, 100.25, 1000, 100.1, 10)
    assert aggs[-1].close == day2[-1]["c"]
    assert rest.count_requests("/v2/aggs/ticker/AAPL") == 4  # 780 bars / 200 per page


def test_aggs_bounds_sort_and_next_url(rest: FakePolygonRest, client: RESTClient) -> None:
    bars = minute_bars(OPEN1, 10) + minute_bars(DAY2, 3)
    rest.add_minute_bars("AAPL", bars)

    day_only = list(client.list_aggs("AAPL", 1, "minute", "2024-01-02", "2024-01-02"))
    assert [a.timestamp for a in day_only] == [b["t"] for b in bars[:10]]

    exact = list(client.list_aggs("AAPL", 1, "minute", OPEN1 + 60_000, OPEN1 + 180_000))
    assert [a.timestamp for a in exact] == [OPEN1 + 60_000, OPEN1 + 120_000, OPEN1 + 180_000]

    desc = list(client.list_aggs("AAPL", 1, "minute", "2024-01-01", "2024-01-05", sort="desc", limit=4))
    assert [a.timestamp for a in desc] == [b["t"] for b in reversed(bars)]

    status, _, body = get_json(f"{rest.base_url}/v2/aggs/ticker/AAPL/range/1/minute/2024-01-02/2024-01-02?limit=4",
                               AUTH)
    page = json.loads(body)
    assert status == 200
    assert (page["status"], page["resultsCount"], page["queryCount"], page["adjusted"]) == ("OK", 4, 10, True)
    assert page["next_url"].startswith(f"{rest.base_url}/v2/aggs/ticker/AAPL/range/1/minute/")
    assert "cursor=" in page["next_url"]


def test_aggs_empty_range_omits_results(rest: FakePolygonRest, client: RESTClient) -> None:
    status, _, body = get_json(f"{rest.base_url}/v2/aggs/ticker/NONE/range/1/day/2024-01-01/2024-01-31", AUTH)
    page = json.loads(body)
    assert status == 200
    assert page["status"] == "OK" and page["resultsCount"] == 0 and "results" not in page and "next_url" not in page
    assert list(client.list_aggs("NONE", 1, "day", "2024-01-01", "2024-01-31")) == []


def test_aggs_bucketing_and_daily_bars(rest: FakePolygonRest, client: RESTClient) -> None:
    rest.add_minute_bars("AAPL", minute_bars(OPEN1, 10))
    five = list(client.list_aggs("AAPL", 5, "minute", "2024-01-02", "2024-01-02"))
    assert [a.timestamp for a in five] == [OPEN1, OPEN1 + 300_000]
    first = five[0]
    assert (first.open, first.close, first.high, first.low) == (100.0, 104.25, 104.5, 99.5)
    assert first.volume == sum(1000 + i for i in range(5)) and first.transactions == sum(10 + i for i in range(5))

    daily = [{"t": DAY1 + 5 * 3_600_000 + d * 86_400_000, "o": 10 + d, "h": 11 + d, "l": 9 + d,
              "c": 10.5 + d, "v": 1e6, "vw": 10.2 + d, "n": 5000} for d in range(3)]
    rest.add_daily_bars("AAPL", daily)
    got = list(client.list_aggs("AAPL", 1, "day", "2024-01-03", "2024-01-04"))
    assert [(a.timestamp, a.close) for a in got] == [(daily[1]["t"], 11.5), (daily[2]["t"], 12.5)]


# -- snapshots, last trade, reference -----------------------------------------


def test_snapshots(rest: FakePolygonRest, client: RESTClient) -> None:
    rest.set_snapshot("AAPL", 187.5, 1_234_567, 1_704_207_000_123_456_789, prev_close=185.0)
    rest.add_daily_bars("MSFT", [{"t": DAY1, "o": 1, "h": 1, "l": 1, "c": 370.0, "v": 1, "vw": 1, "n": 1}])
    rest.add_minute_bars("MSFT", minute_bars(DAY2 + 14 * 3_600_000 + 30 * 60_000, 3, 371.0))

    snaps = client.get_snapshot_all("stocks", ["AAPL", "MSFT", "NOPE"])
    by_ticker = {s.ticker: s for s in snaps}
    assert set(by_ticker) == {"AAPL", "MSFT"}

    aapl = by_ticker["AAPL"]
    assert aapl.updated == 1_704_207_000_123_456_789
    assert (aapl.day.close, aapl.day.volume, aapl.min.accumulated_volume) == (187.5, 1_234_567, 1_234_567)
    assert aapl.last_trade.price == 187.5 and aapl.prev_day.close == 185.0
    assert aapl.todays_change == 2.5 and aapl.todays_change_percent == pytest.approx(1.3514, abs=1e-4)

    msft = client.get_snapshot_ticker("stocks", "MSFT")
    last = minute_bars(DAY2 + 14 * 3_600_000 + 30 * 60_000, 3, 371.0)[-1]
    assert (msft.ticker, msft.min.timestamp, msft.min.close, msft.updated) == \
        ("MSFT", last["t"], last["c"], last["t"] * 1_000_000)
    assert msft.day.volume == 1000 + 1001 + 1002 and msft.day.open == 371.0
    assert msft.prev_day.close == 370.0

    with pytest.raises(BadResponse, match="NOT_FOUND"):
        client.get_snapshot_ticker("stocks", "NOPE")


def test_last_trade_and_ticker_details(rest: FakePolygonRest, client: RESTClient) -> None:
    rest.set_snapshot("AAPL", 190.25, 10, 1_704_207_000_000_000_001)
    trade = client.get_last_trade("AAPL")
    assert (trade.ticker, trade.price, trade.sip_timestamp, trade.size) == \
        ("AAPL", 190.25, 1_704_207_000_000_000_001, 100)

    rest.set_ticker_details("AAPL", {"name": "Apple Inc.", "cik": "0000320193", "market_cap": 2.9e12,
                                     "share_class_shares_outstanding": 15_500_000_000})
    details = client.get_ticker_details("AAPL")
    assert (details.ticker, details.name, details.cik, details.market, details.primary_exchange) == (
        "AAPL", "Apple Inc.", "0000320193", "stocks", "XNAS")
    assert details.market_cap == 2.9e12 and details.share_class_shares_outstanding == 15_500_000_000 and details.active

    with pytest.raises(BadResponse, match="NOT_FOUND"):
        client.get_ticker_details("ZZZZ")
    with pytest.raises(BadResponse, match="NOT_FOUND"):
        client.get_last_trade("ZZZZ")
    assert [r.status for r in rest.requests[-2:]] == [404, 404]


def test_dividends_and_splits_paginate_and_filter(rest: FakePolygonRest, client: RESTClient) -> None:
    divs = [{"cash_amount": 0.24 + i / 100, "declaration_date": f"2023-0{i + 1}-01",
             "ex_dividend_date": f"2023-0{i + 1}-10", "pay_date": f"2023-0{i + 1}-20",
             "record_date": f"2023-0{i + 1}-11", "frequency": 4,
             "dividend_type": "CD", "currency": "USD"} for i in range(5)]
    rest.add_dividends("AAPL", divs)
    rest.add_dividends("MSFT", [{"cash_amount": 0.75, "ex_dividend_date": "2023-02-15"}])
    rest.add_splits("AAPL", [{"execution_date": "2020-08-31", "split_from": 1, "split_to": 4}])
    rest.add_splits("TSLA", [{"execution_date": "2022-08-25", "split_from": 1, "split_to": 3}])

    got = list(client.list_dividends(ticker="AAPL", limit=2))
    assert [d.cash_amount for d in got] == [d["cash_amount"] for d in divs]
    assert all(d.ticker == "AAPL" and d.frequency == 4 and d.id for d in got)
    assert len({d.id for d in got}) == 5
    assert rest.count_requests("/v3/reference/dividends") == 3

    recent = list(client.list_dividends(ticker="AAPL", ex_dividend_date_gte="2023-04-01"))
    assert [d.ex_dividend_date for d in recent] == ["2023-04-10", "2023-05-10"]

    splits = list(client.list_splits(ticker="AAPL"))
    assert [(s.ticker, s.execution_date, s.split_from, s.split_to) for s in splits] == [("AAPL", "2020-08-31", 1, 4)]
    assert {s.ticker for s in client.list_splits()} == {"AAPL", "TSLA"}


# -- auth ---------------------------------------------------------------------


def test_auth(rest: FakePolygonRest) -> None:
    rest.set_snapshot("AAPL", 1.0, 1, 1)
    with pytest.raises(BadResponse, match="Unknown API Key"):
        RESTClient("wrong", base=rest.base_url, retries=0).get_last_trade("AAPL")

    status, _, body = get_json(f"{rest.base_url}/v2/last/trade/AAPL")
    assert status == 401 and json.loads(body)["status"] == "ERROR"
    status, _, body = get_json(f"{rest.base_url}/v2/last/trade/AAPL?apiKey=test-key")
    assert status == 200 and json.loads(body)["results"]["p"] == 1.0

    assert [(r.status, r.has_auth) for r in rest.requests] == [(401, True), (401, False), (200, False)]
    assert rest.requests[-1].query == {"apiKey": "<redacted>"}


# -- faults -------------------------------------------------------------------


def test_429_and_500_are_observable(rest: FakePolygonRest, client: RESTClient) -> None:
    rest.set_snapshot("AAPL", 5.0, 1, 1)
    rest.inject("/v2/last/trade", "429", retry_after=2)
    status, headers, body = get_json(f"{rest.base_url}/v2/last/trade/AAPL", AUTH)
    assert status == 429 and headers["Retry-After"] == "2" and json.loads(body)["status"] == "ERROR"

    rest.inject(None, "429", retry_after=1)
    with pytest.raises(MaxRetryError) as info:
        client.get_last_trade("AAPL")
    assert isinstance(info.value.reason, ResponseError) and "429" in str(info.value.reason)

    rest.inject("/v2/last/trade", "500")
    with pytest.raises(MaxRetryError, match="500"):
        client.get_last_trade("AAPL")
    assert client.get_last_trade("AAPL").price == 5.0  # consumed
    assert [r.status for r in rest.requests] == [429, 429, 500, 200]

    # With retries on, urllib3 honours Retry-After and the caller never sees the 429.
    rest.inject(None, "429", retry_after=1)
    began = time.monotonic()
    assert RESTClient("test-key", base=rest.base_url, retries=1).get_last_trade("AAPL").price == 5.0
    assert time.monotonic() - began >= 1.0


def test_fault_matching_order_and_kinds(rest: FakePolygonRest, client: RESTClient) -> None:
    rest.set_snapshot("AAPL", 5.0, 1, 1)
    rest.set_ticker_details("AAPL", {})
    rest.inject("/v2/last/trade", "502", count=2)
    rest.inject(None, "503")

    with pytest.raises(MaxRetryError, match="503"):
        client.get_ticker_details("AAPL")  # prefix does not match the 502s
    for _ in range(2):
        with pytest.raises(MaxRetryError, match="502"):
            client.get_last_trade("AAPL")
    assert client.get_last_trade("AAPL").price == 5.0
    assert [(r.path, r.status, r.fault) for r in rest.requests] == [
        ("/v3/reference/tickers/AAPL", 503, "503"),
        ("/v2/last/trade/AAPL", 502, "502"),
        ("/v2/last/trade/AAPL", 502, "502"),
        ("/v2/last/trade/AAPL", 200, None),
    ]

    rest.inject(None, "502")
    status, headers, body = get_json(f"{rest.base_url}/v2/last/trade/AAPL", AUTH)
    assert status == 502 and headers["Content-Type"] == "text/html" and b"Bad Gateway" in body

    # The client swallows undecodable / result-less bodies: no exception, just nothing.
    rest.add_minute_bars("AAPL", minute_bars(OPEN1, 3))
    for kind in ("malformed", "garbage_json"):
        rest.inject(None, kind)
        assert client.get_last_trade("AAPL") == []
        rest.inject("/v2/aggs", kind)
        assert list(client.list_aggs("AAPL", 1, "minute", "2024-01-02", "2024-01-02")) == []
    rest.inject(None, "malformed")
    with pytest.raises(ValueError):
        json.loads(get_json(f"{rest.base_url}/v2/last/trade/AAPL", AUTH)[2])
    rest.inject(None, "garbage_json")
    garbage = json.loads(get_json(f"{rest.base_url}/v2/last/trade/AAPL", AUTH)[2])
    assert "results" not in garbage and garbage["resultsCount"] == "three"

    rest.inject(None, "slow", delay=0.3)
    began = time.monotonic()
    assert client.get_last_trade("AAPL").price == 5.0
    assert time.monotonic() - began >= 0.3

    rest.inject(None, "500", count=5)
    rest.clear_faults()
    assert client.get_last_trade("AAPL").price == 5.0

    with pytest.raises(ValueError):
        rest.inject(None, "404")


def test_fail_ratio_is_deterministic(rest: FakePolygonRest) -> None:
    def statuses(seed: int) -> list[int]:
        rest.fail_ratio(0.3, kinds=("429", "500"), seed=seed)
        return [get_json(f"{rest.base_url}/v2/snapshot/locale/us/markets/stocks/tickers", AUTH)[0] for _ in range(60)]

    first, again, other = statuses(1), statuses(1), statuses(2)
    assert first == again and first != other
    assert {429, 500, 200} == set(first)
    assert 8 <= sum(s != 200 for s in first) <= 30
    rest.clear_faults()
    assert get_json(f"{rest.base_url}/v2/snapshot/locale/us/markets/stocks/tickers", AUTH)[0] == 200


# -- request log --------------------------------------------------------------


def test_request_counting_and_window(rest: FakePolygonRest, client: RESTClient) -> None:
    rest.set_snapshot("AAPL", 1.0, 1, 1)
    for _ in range(5):
        client.get_last_trade("AAPL")
    client.get_snapshot_all("stocks", ["AAPL"])
    assert rest.count_requests() == 6
    assert rest.count_requests("/v2/last/trade") == 5
    assert rest.max_requests_in_window(60) == 6
    assert rest.requests[-1].query["tickers"] == "AAPL" and rest.requests[-1].has_auth

    rest.clear_requests()
    for t in (0.0, 0.1, 0.5, 1.05, 1.2, 3.0):
        rest.requests.append(RequestRecord(t, "GET", "/x", {}, 200, True))
    assert rest.max_requests_in_window(1.0) == 3
    assert rest.max_requests_in_window(1.1) == 4  # 0.1 .. 1.2
    assert rest.max_requests_in_window(0.01) == 1


def test_requests_from_another_process_are_counted(rest: FakePolygonRest) -> None:
    rest.set_snapshot("AAPL", 42.0, 1, 1)
    code = (
        "import sys; from polygon import RESTClient\n"
        "c = RESTClient('test-key', base=sys.argv[1], retries=0)\n"
        "print(c.get_last_trade('AAPL').price)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, rest.base_url], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "42.0", out.stderr
    assert rest.count_requests("/v2/last/trade/AAPL") == 1


# -- websocket ----------------------------------------------------------------


@pytest.fixture
def stream() -> Iterator[FakePolygonStream]:
    with FakePolygonStream() as server:
        yield server


def test_ws_handshake_subscribe_and_am(stream: FakePolygonStream) -> None:
    async def scenario() -> None:
        async with connect(stream.url) as ws:
            assert json.loads(await ws.recv()) == \
                [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
            await ws.send(json.dumps({"action": "subscribe", "params": "AM.AAPL"}))
            assert json.loads(await ws.recv())[0]["status"] == "error"  # not yet authenticated

            await ws.send(json.dumps({"action": "auth", "params": "test-key"}))
            assert json.loads(await ws.recv()) == \
                [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
            await ws.send(json.dumps({"action": "subscribe", "params": "AM.AAPL,AM.MSFT"}))
            assert [m["message"] for m in json.loads(await ws.recv())] == \
                ["subscribed to: AM.AAPL", "subscribed to: AM.MSFT"]
            assert stream.subscriptions == {"AM.AAPL", "AM.MSFT"}

            event = {"sym": "AAPL", "v": 100, "av": 5000, "op": 180.0, "vw": 181.1, "o": 181.0, "c": 181.2,
                     "h": 181.3, "l": 180.9, "a": 180.5, "z": 12, "s": OPEN1, "e": OPEN1 + 60_000}
            sent = await asyncio.to_thread(stream.send_am, [event, {**event, "sym": "TSLA"}])
            assert sent == 1
            assert json.loads(await ws.recv()) == [{"ev": "AM", **event}]  # TSLA filtered out

            await ws.send(json.dumps({"action": "unsubscribe", "params": "AM.MSFT"}))
            assert json.loads(await ws.recv()) == \
                [{"ev": "status", "status": "success", "message": "unsubscribed to: AM.MSFT"}]
            assert stream.subscriptions == {"AM.AAPL"}

            await asyncio.to_thread(stream.send_raw, "not json {")
            assert await ws.recv() == "not json {"

    asyncio.run(scenario())
    assert [m["action"] for m in stream.messages_received] == ["subscribe", "auth", "subscribe", "unsubscribe"]
    assert stream.wait_for(lambda: stream.open_connections == 0)
    assert stream.subscriptions == set()


def test_ws_auth_failed_closes(stream: FakePolygonStream) -> None:
    async def scenario() -> None:
        async with connect(stream.url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "auth", "params": "wrong"}))
            assert json.loads(await ws.recv()) == \
                [{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 1008

    asyncio.run(scenario())

    polygon_client = WebSocketClient(api_key="wrong", feed=stream.feed, market="stocks", secure=False)

    async def ignore(msgs: Any) -> None:
        pass

    with pytest.raises(AuthError):
        asyncio.run(asyncio.wait_for(polygon_client.connect(ignore), 5))


def test_ws_drop_connections(stream: FakePolygonStream) -> None:
    async def scenario() -> None:
        async with connect(stream.url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "auth", "params": "test-key"}))
            await ws.recv()
            assert await asyncio.to_thread(stream.drop_connections) == 1
            with pytest.raises(ConnectionClosedError):
                await ws.recv()

    asyncio.run(scenario())
    assert stream.connections == 1 and stream.open_connections == 0


def test_ws_blast(stream: FakePolygonStream) -> None:
    symbols = ["AAPL", "MSFT", "NVDA"]

    async def scenario() -> list[list[dict[str, Any]]]:
        frames = []
        async with connect(stream.url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "auth", "params": "test-key"}))
            await ws.recv()
            await ws.send(json.dumps({"action": "subscribe", "params": "AM.*"}))
            await ws.recv()
            stream.prepare_blast(symbols, 1000, batch=100)
            elapsed = await asyncio.to_thread(stream.blast)
            assert elapsed > 0
            while sum(map(len, frames)) < 1000:
                frames.append(json.loads(await ws.recv()))
        return frames

    frames = asyncio.run(scenario())
    events = [e for f in frames for e in f]
    assert len(frames) == 10 and len(events) == 1000
    assert [e["sym"] for e in events[:4]] == ["AAPL", "MSFT", "NVDA", "AAPL"]
    assert all(e["ev"] == "AM" and e["e"] - e["s"] == 60_000 for e in events)
    assert events[3]["s"] - events[0]["s"] == 60_000
