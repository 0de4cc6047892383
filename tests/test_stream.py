"""The stream process (`chronox stream` as a real subprocess) against the local Polygon
websocket stand-in, on PostgreSQL/SQLite, the mock Kafka broker and Redis; the stream
phase and the health monitor through their Celery tasks."""
from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from chronox import registry
from chronox.calendar import NEW_YORK
from chronox.db import get_engine
from chronox.sources.reconnect import backoff_delay
from chronox.sources.websocket import am_to_bar
from chronox.store import OHLCV
from chronox.testing.binance import FakeBinanceStream
from chronox.testing.polygon_ws import FakePolygonStream
from tests.helpers import StreamProcess, as_utc, stream_starter, wait_until

pytestmark = pytest.mark.timeout(90)

M0 = 1_704_205_800_000  # 2024-01-02 14:30 UTC (09:30 New York)
M1 = M0 + 60_000
UTC = dt.UTC


def unique(prefix: str) -> str:
    """Kafka topics are per symbol and the mock broker lives for the whole session."""
    return f"{prefix}{uuid.uuid4().hex[:5].upper()}"


def am(symbol: str, start_ms: int, price: float = 100.0, **extra: Any) -> dict[str, Any]:
    return {"sym": symbol, "o": price, "h": price + 0.5, "l": price - 0.5, "c": price + 0.25,
            "v": 1200, "vw": price + 0.1, "av": 5000, "a": price, "z": 12,
            "s": start_ms, "e": start_ms + 60_000, **extra}


def stored_bars(url: str, symbol: str) -> dict[dt.datetime, tuple]:
    with get_engine(url).connect() as conn:
        rows = conn.execute(text("SELECT ts, open, high, low, close, volume, vwap, transactions, source "
                                 "FROM ohlcv_1m WHERE symbol = :s"), {"s": symbol}).all()
    return {as_utc(ts): tuple(rest) for ts, *rest in rows}


def scalar(url: str, sql: str, **params: Any) -> Any:
    with get_engine(url).connect() as conn:
        return conn.execute(text(sql), params).scalar()


@pytest.fixture
def polygon(ws: FakePolygonStream) -> FakePolygonStream:
    """The websocket stand-in of tests/conftest.py, by the name this module's tests use."""
    return ws


@pytest.fixture
def start_stream(ws: FakePolygonStream, tmp_path: Path) -> Iterator[Callable[..., StreamProcess]]:
    """tests/conftest.py's start_stream, reconnecting quickly."""
    with stream_starter(ws, tmp_path, CHRONOX_STREAM_RECONNECT_MIN_SECONDS="0.05",
                        CHRONOX_STREAM_RECONNECT_MAX_SECONDS="0.2") as start:
        yield start


def subscribed(polygon: FakePolygonStream, *symbols: str, timeout: float = 15) -> None:
    wanted = {f"AM.{s}" for s in symbols}
    assert polygon.wait_for(lambda: polygon.subscriptions == wanted, timeout), \
        f"server subscriptions {polygon.subscriptions}, wanted {wanted}"


def actions(polygon: FakePolygonStream, action: str) -> list[set[str]]:
    return [set(m["params"].split(",")) for m in polygon.messages_received
            if isinstance(m, dict) and m.get("action") == action]


# -- ingestion --------------------------------------------------------------------


def test_am_events_land_in_the_database_and_on_kafka(db_url, kafka, polygon, start_stream):
    a, b, flat, off = unique("SA"), unique("SB"), unique("SF"), unique("SO")
    engine = get_engine(db_url)
    registry.add_symbol(engine, a, "stream")
    registry.add_symbol(engine, b, "snapshot+stream")
    registry.add_symbol(engine, flat, "flatpack")
    registry.add_symbol(engine, off, "stream", enabled=False)
    registry.mark_stale(engine, [b], "last bar 2024-01-02T14:00:00Z (30 min ago)")
    with engine.begin() as conn:  # a flat-file bar the stream must not overwrite
        conn.execute(OHLCV.insert().values(symbol=a, ts=dt.datetime(2024, 1, 2, 14, 31, tzinfo=UTC), open=1, high=2,
                                           low=0.5, close=1.5, volume=10, transactions=7, source="flatpack"))
    stream = start_stream()
    subscribed(polygon, a, b)

    polygon.send_am([am(a, M0, 100.0), am(a, M1, 300.0), am(b, M0, 50.0),
                     am(b, M1, 50.0, h=40.0)])  # high below open: quarantined
    polygon.send_raw("this is not json")
    wait_until(lambda: scalar(db_url, "SELECT count(*) FROM quarantine") == 2 and
               scalar(db_url, "SELECT count(*) FROM ohlcv_1m") == 3, what="bars and quarantine rows")

    m0 = dt.datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    m1 = dt.datetime(2024, 1, 2, 14, 31, tzinfo=UTC)
    assert stored_bars(db_url, a) == {m0: (100.0, 100.5, 99.5, 100.25, 1200.0, 100.1, None, "stream"),
                                      m1: (1.0, 2.0, 0.5, 1.5, 10.0, None, 7, "flatpack")}
    assert stored_bars(db_url, b) == {m0: (50.0, 50.5, 49.5, 50.25, 1200.0, 50.1, None, "stream")}
    # The batch's hours were rolled up in its transaction, with the flat-file minute beside the stream's.
    with engine.connect() as conn:
        five = conn.execute(text("SELECT bucket, open, high, low, close, volume, bars FROM ohlcv_5m "
                                 "WHERE symbol = :s"), {"s": a}).all()
    assert [(as_utc(bucket), *rest) for bucket, *rest in five] == [(m0, 100.0, 100.5, 0.5, 1.5, 1210.0, 2)]
    with engine.connect() as conn:
        reasons = dict(conn.execute(text("SELECT coalesce(symbol, '-'), reason FROM quarantine")).all())
    assert reasons[b].startswith("high 40.0 below max(open, close)")
    assert reasons["-"].startswith("unreadable frame")

    envelopes = kafka.json_messages(f"chronox.stream.{a}")
    assert [(e["ts"], e["ohlcv"]["open"], e["ohlcv"]["close"]) for e in envelopes] == \
        [("2024-01-02T14:30:00Z", 100.0, 100.25), ("2024-01-02T14:31:00Z", 300.0, 300.25)]
    assert envelopes[0] == {"event": "bar", "symbol": a, "tf": "1m", "ts": "2024-01-02T14:30:00Z",
                            "ohlcv": {"open": 100.0, "high": 100.5, "low": 99.5, "close": 100.25, "volume": 1200.0},
                            "features": {}, "source": "stream", "version": "v1",
                            "dedup_key": f"{a}|1m|2024-01-02T14:30:00Z", "market": "stocks", "provider": "polygon"}
    assert [e["ts"] for e in kafka.json_messages(f"chronox.stream.{b}")] == ["2024-01-02T14:30:00Z"]

    rows = wait_until(lambda: {r.symbol: r for r in registry.list_symbols(engine)}
                      if registry.get_symbol(engine, b).last_stream else None, what="last_stream")
    assert rows[a].last_stream and rows[b].last_stream
    assert rows[flat].last_stream is None and rows[off].last_stream is None
    assert (rows[b].status, rows[b].error_message) == ("completed", None)  # stale flag cleared
    assert polygon.subscriptions == {f"AM.{a}", f"AM.{b}"}

    code, stats = stream.stop()
    assert code == 0, stream.log()
    assert (stats["received"], stats["written"], stats["published"], stats["quarantined"]) == (5, 3, 3, 2)


def xa(pair: str, start_ms: int, price: float) -> dict[str, Any]:
    """Polygon crypto cluster's minute aggregate, shaped as its documented XA example (z is the
    average trade size, not a count: the bar has no transactions)."""
    return {"ev": "XA", "pair": pair, "v": 951.6112, "vw": price + 0.01, "z": 73, "o": price, "c": price + 0.5,
            "h": price + 1.0, "l": price - 1.0, "s": start_ms, "e": start_ms + 60_000}


def test_stocks_polygon_crypto_and_binance_stream_side_by_side(db_url, kafka, polygon, start_stream):
    stock, coin, token = unique("SS"), unique("C"), unique("T")
    pair, usdt = f"{coin}-USD", f"{token}-USDT"
    engine = get_engine(db_url)
    registry.add_symbol(engine, stock, "stream")
    registry.add_symbol(engine, pair, "stream", market="crypto", provider="polygon")
    registry.add_symbol(engine, usdt, "stream", market="crypto", provider="binance")
    with FakePolygonStream(api_key=polygon.api_key) as crypto, FakeBinanceStream() as binance:
        stream = start_stream(CHRONOX_POLYGON_CRYPTO_WS_URL=crypto.url, CHRONOX_BINANCE_WS_URL=binance.url)
        subscribed(polygon, stock)
        assert crypto.wait_for(lambda: crypto.subscriptions == {f"XA.{pair}"}, 15), crypto.subscriptions
        assert binance.wait_for(lambda: binance.streams == {f"{token.lower()}usdt@kline_1m"}, 15), binance.streams

        polygon.send_am([am(stock, M0, 100.0)])
        crypto.send_events([xa(pair, M0, 42000.0), xa(pair, M1, 42001.0)])
        binance.send_kline(f"{token}USDT", M0, 2.0, 2.5, 1.5, 2.25, 10.0, closed=False)  # still open: no bar
        binance.send_kline(f"{token}USDT", M0, 2.0, 2.5, 1.5, 2.25, 10.0, closed=True, trades=4, quote_volume=21.0)
        wait_until(lambda: scalar(db_url, "SELECT count(*) FROM ohlcv_1m") == 4, what="bars of the three feeds")
        code, stats = stream.stop()
    assert code == 0, stream.log()
    m0, m1 = dt.datetime(2024, 1, 2, 14, 30, tzinfo=UTC), dt.datetime(2024, 1, 2, 14, 31, tzinfo=UTC)
    assert stored_bars(db_url, stock) == {m0: (100.0, 100.5, 99.5, 100.25, 1200.0, 100.1, None, "stream")}
    assert stored_bars(db_url, pair) == {m0: (42000.0, 42001.0, 41999.0, 42000.5, 951.6112, 42000.01, None, "stream"),
                                         m1: (42001.0, 42002.0, 42000.0, 42001.5, 951.6112, 42001.01, None, "stream")}
    assert stored_bars(db_url, usdt) == {m0: (2.0, 2.5, 1.5, 2.25, 10.0, 2.1, 4, "stream")}
    origins = {symbol: {(e["market"], e["provider"]) for e in kafka.json_messages(f"chronox.stream.{symbol}")}
               for symbol in (stock, pair, usdt)}
    assert origins == {stock: {("stocks", "polygon")}, pair: {("crypto", "polygon")}, usdt: {("crypto", "binance")}}
    assert [e["ts"] for e in kafka.json_messages(f"chronox.stream.{pair}")] == \
        ["2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z"]
    assert (stats["received"], stats["written"], stats["quarantined"]) == (4, 4, 0)


def test_sigterm_flushes_buffered_bars_then_exits_0(pg_url, kafka, polygon, start_stream):
    symbol = unique("ST")
    registry.add_symbol(get_engine(pg_url), symbol, "stream")
    stream = start_stream(CHRONOX_STREAM_BATCH="50")
    subscribed(polygon, symbol)
    blocker = get_engine(pg_url).connect()
    blocker.execute(text("LOCK TABLE ohlcv_1m IN SHARE ROW EXCLUSIVE MODE"))  # inserts wait
    try:
        for frame in range(10):
            polygon.send_am([am(symbol, M0 + (frame * 50 + i) * 60_000, 100.0 + i) for i in range(50)])
        time.sleep(1.0)  # the reader takes the frames; the writer is stuck on the lock
        stream.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert stream.proc.poll() is None, "exited while bars were still buffered"
    finally:
        blocker.rollback()
        blocker.close()
    code, stats = stream.stop(sig=None)
    assert code == 0, stream.log()
    assert stats["flushed_on_stop"] > 0 and "flushing" in stream.log()
    assert len(stored_bars(pg_url, symbol)) == 500
    assert len(kafka.json_messages(f"chronox.stream.{symbol}")) == 500
    assert registry.get_symbol(get_engine(pg_url), symbol).last_stream is not None


def test_a_full_backlog_pauses_reading_and_is_reported(pg_url, polygon, start_stream):
    symbol = unique("SQ")
    registry.add_symbol(get_engine(pg_url), symbol, "stream")
    stream = start_stream(CHRONOX_STREAM_BACKLOG="100", CHRONOX_STREAM_BATCH="50")
    subscribed(polygon, symbol)
    blocker = get_engine(pg_url).connect()
    blocker.execute(text("LOCK TABLE ohlcv_1m IN SHARE ROW EXCLUSIVE MODE"))
    sender = threading.Thread(target=lambda: [
        polygon.send_am([am(symbol, M0 + (frame * 50 + i) * 60_000) for i in range(50)]) for frame in range(20)])
    try:
        sender.start()
        wait_until(lambda: "stream backlog full" in stream.log(), what="the backlog warning")
    finally:
        blocker.rollback()
        blocker.close()
    sender.join(30)
    wait_until(lambda: len(stored_bars(pg_url, symbol)) == 1000, what="all 1,000 bars")
    code, stats = stream.stop()
    assert code == 0
    assert stats["backlog_full_waits"] >= 1 and stats["backlog_full_seconds"] > 0
    assert stats["backlog_high"] <= 100
    assert stats["received"] == stats["written"] == 1000


# -- following the registry ---------------------------------------------------------------


def test_stream_phase_activation_subscribes_through_the_redis_signal(pg_url, kafka, redis_url, polygon,
                                                                     start_stream, monkeypatch):
    from chronox.tasks.stream import stream_phase

    first, later, other = unique("SR"), unique("SN"), unique("SX")
    engine = get_engine(pg_url)
    registry.add_symbol(engine, first, "stream")
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    # A long poll: only the Redis signal can make the subscription quick.
    stream = start_stream(CHRONOX_STREAM_POLL_SECONDS="120")
    subscribed(polygon, first)
    registry.add_symbol(engine, later, "flatpack+stream")
    registry.add_symbol(engine, other, "flatpack")
    time.sleep(0.5)
    assert f"AM.{later}" not in polygon.subscriptions

    result = stream_phase.apply(kwargs={"symbol": later, "start": "2024-01-02", "end": "2024-01-03"}).get()
    assert result == {"symbol": later, "activated": True, "published": True, "signalled": True}
    subscribed(polygon, first, later, timeout=5)
    assert actions(polygon, "subscribe")[-1] == {f"AM.{later}"}
    [event] = kafka.json_messages(f"chronox.stream.{later}")
    assert (event["event"], event["symbol"], event["version"]) == ("stream_activated", later, "v1")
    assert as_utc(event["ts"]) <= dt.datetime.now(UTC)
    assert registry.get_symbol(engine, later).status == "running"

    refused = stream_phase.apply(kwargs={"symbol": other}).get()
    assert refused["activated"] is False and "no stream phase" in refused["reason"]
    assert stream.stop()[0] == 0


def test_registry_polling_subscribes_and_unsubscribes(sqlite_url, polygon, start_stream):
    kept, added = unique("SK"), unique("SD")
    engine = get_engine(sqlite_url)
    registry.add_symbol(engine, kept, "stream")
    stream = start_stream()
    subscribed(polygon, kept)
    registry.add_symbol(engine, added, "snapshot+stream")
    subscribed(polygon, kept, added, timeout=5)
    registry.update_symbol(engine, kept, enabled=False)
    subscribed(polygon, added, timeout=5)
    registry.remove_symbol(engine, added)
    subscribed(polygon, timeout=5)
    assert actions(polygon, "unsubscribe") == [{f"AM.{kept}"}, {f"AM.{added}"}]
    assert stream.stop()[0] == 0


# -- connection loss -------------------------------------------------------------------


def queued_tasks(redis_url: str, name: str) -> list[tuple[list, dict]]:
    """Task messages waiting on the Redis broker (kombu keeps each queue as a list)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    found = []
    for key in client.scan_iter():
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message.get("headers", {}).get("task") == name:
                args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
                found.append((args, kwargs))
    return found


def test_reconnect_resubscribes_and_hands_the_missed_window_to_gap_fill(pg_url, redis_url, polygon,
                                                                        start_stream, monkeypatch):
    a, b = unique("SC"), unique("SD")
    engine = get_engine(pg_url)
    registry.add_symbol(engine, a, "stream")
    registry.add_symbol(engine, b, "api+stream")
    monkeypatch.setenv("CHRONOX_BROKER_URL", redis_url)
    stream = start_stream()
    subscribed(polygon, a, b)
    dropped_at = dt.datetime.now(UTC)

    assert polygon.drop_connections() == 1
    wait_until(lambda: polygon.connections == 2 and polygon.subscriptions == {f"AM.{a}", f"AM.{b}"},
               what="a second, re-subscribed connection")
    assert [m for m in polygon.messages_received if m.get("action") == "auth"] == \
        [{"action": "auth", "params": "test-key"}] * 2
    assert actions(polygon, "subscribe") == [{f"AM.{a}", f"AM.{b}"}] * 2

    tasks = wait_until(lambda: queued_tasks(redis_url, "chronox.backfill"), what="gap fill tasks")
    # the process logs the hand-off once the broker has the tasks: a moment after they show
    wait_until(lambda: all(line in stream.log() for line in ("connection lost", "reconnected after",
                                                             "gap fill queued")), what="the reconnect's log")

    polygon.send_am([am(a, M0)])  # data flows on the new connection
    wait_until(lambda: stored_bars(pg_url, a), what="a bar after the reconnect")
    code, stats = stream.stop()
    assert code == 0
    assert (stats["connections"], stats["reconnects"]) == (2, 1)
    [gap] = stats["gap_fills"]
    assert (gap["dispatched"], gap["tasks"], gap["symbols"]) == (True, 2, 2)
    assert as_utc(gap["from"]) <= dropped_at - dt.timedelta(minutes=2) <= as_utc(gap["to"])
    assert gap["end"] == dropped_at.astimezone(NEW_YORK).date().isoformat()
    assert sorted(tasks) == sorted(([s], {"start": gap["start"], "end": gap["end"], "strategy": "api"})
                                   for s in (a, b))


def test_without_a_broker_the_missed_window_is_logged_and_kept_in_the_stats(sqlite_url, polygon, start_stream):
    symbol = unique("SW")
    registry.add_symbol(get_engine(sqlite_url), symbol, "stream")
    stream = start_stream()
    subscribed(polygon, symbol)
    polygon.drop_connections()
    wait_until(lambda: "gap fill NOT dispatched" in stream.log(), what="the gap fill log line")
    code, stats = stream.stop()
    assert code == 0
    [gap] = stats["gap_fills"]
    assert (gap["dispatched"], gap["reason"], gap["symbols"]) == (False, "no broker configured", 1)
    assert f"chronox run --strategy api --start {gap['start']} --end {gap['end']} --symbols {symbol}" in stream.log()


def test_auth_failed_exits_non_zero_with_one_line_and_no_retry(sqlite_url, polygon, start_stream):
    registry.add_symbol(get_engine(sqlite_url), unique("SX"), "stream")
    stream = start_stream(POLYGON_API_KEY="wrong-key")
    code = stream.wait(20)
    errors = [line for line in stream.log().splitlines() if line.startswith("Error")]
    assert code != 0
    assert len(errors) == 1 and "rejected the API key" in errors[0] and "wrong-key" not in stream.log()
    assert "Traceback" not in stream.log()
    assert polygon.connections == 1 and actions(polygon, "subscribe") == []


def test_missing_api_key_is_a_one_line_error(sqlite_url):
    from chronox.cli import cli

    result = CliRunner().invoke(cli, ["stream"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: POLYGON_API_KEY is not set: `chronox stream` needs a Polygon API key"


# -- protocol details ---------------------------------------------------------------


@pytest.mark.parametrize("event,reason", [
    ({"ev": "AM", "sym": "AAPL", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1}, "missing field 's'"),
    ({"ev": "AM", "sym": "AAPL", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "s": True}, "not epoch milliseconds"),
    ({"ev": "AM", "sym": "AAPL", "o": "x", "h": 1, "l": 1, "c": 1, "v": 1, "s": M0}, "could not convert"),
    ({"ev": "AM", "sym": "../etc", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "s": M0}, "invalid symbol"),
    ({"ev": "T", "sym": "AAPL"}, "not an AM event"),
    ({"ev": "AM", "sym": "AAPL", "o": 1, "h": 1, "l": 1, "c": 1, "v": -5, "s": M0}, "volume must be"),
])
def test_unusable_am_events_are_rejected_with_a_reason(event, reason):
    with pytest.raises(ValueError, match=reason):
        am_to_bar(event)


def test_am_window_start_is_the_bar_timestamp():
    bar = am_to_bar({"ev": "AM", **am("BRK.B", M0 + 123)})
    assert bar.ts == dt.datetime(2024, 1, 2, 14, 30, 0, 123_000, tzinfo=UTC)
    assert (bar.symbol, bar.vwap, bar.transactions, bar.source) == ("BRK.B", 100.1, None, "stream")


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    assert [backoff_delay(n, 1.0, 60.0, rng=lambda: 0.0) for n in (1, 2, 3, 7, 20)] == [0.5, 1, 2, 30, 30]
    assert [backoff_delay(n, 1.0, 60.0, rng=lambda: 1.0) for n in (1, 2, 3, 7, 20)] == [1, 2, 4, 60, 60]


# -- the stream phase in a registry run, and the monitor -----------------------------


def test_a_registry_run_activates_stream_symbols_in_process(sqlite_url, kafka):
    from chronox.cli import cli
    from chronox.tasks.workflow import SYMBOL_PHASE_TASKS

    assert SYMBOL_PHASE_TASKS["stream"] == "chronox.phase.stream"
    symbol = unique("SP")
    registry.add_symbol(get_engine(sqlite_url), symbol, "stream")
    before = dt.datetime.now(UTC)
    result = CliRunner().invoke(cli, ["run", "--symbols", symbol, "--json"])
    after = dt.datetime.now(UTC)
    assert result.exit_code == 0, result.output
    assert registry.get_symbol(get_engine(sqlite_url), symbol).status == "completed"
    # The activation itself: announced once on the symbol's stream topic.
    [event] = kafka.json_messages(f"chronox.stream.{symbol}")
    assert set(event) == {"event", "symbol", "ts", "version", "strategy", "action", "timestamp", "market",
                          "provider"}, event
    assert (event["strategy"], event["action"], event["timestamp"]) == ("stream", "activate", event["ts"])
    assert (event["market"], event["provider"]) == ("stocks", "polygon")
    assert event["event"] == "stream_activated"
    assert event["symbol"] == symbol
    assert event["version"] == "v1"
    assert isinstance(event["ts"], str) and event["ts"].endswith("Z"), event["ts"]  # ISO-8601, UTC
    ts = dt.datetime.fromisoformat(event["ts"])
    assert ts.utcoffset() == dt.timedelta(0) and before <= ts <= after, (event["ts"], before, after)


def monitor(now: str) -> dict[str, Any]:
    from chronox.tasks.stream import monitor as task

    return task.apply(kwargs={"now": now}).get()


def test_monitor_flags_exactly_the_stale_symbols_during_the_session_only(db_url):
    engine = get_engine(db_url)
    now = dt.datetime(2024, 1, 3, 15, 0, tzinfo=UTC)  # Wednesday 10:00 New York
    setup = {  # symbol: (strategy, enabled, last_stream, created_at)
        "FRESH": ("stream", True, now - dt.timedelta(minutes=2), now - dt.timedelta(days=9)),
        "STALE": ("flatpack+stream", True, now - dt.timedelta(minutes=10), now - dt.timedelta(days=9)),
        "NEVER": ("stream", True, None, now - dt.timedelta(days=9)),
        "NEWBIE": ("stream", True, None, now - dt.timedelta(minutes=1)),
        "NOSTREAM": ("flatpack", True, now - dt.timedelta(days=3), now - dt.timedelta(days=9)),
        "OFF": ("stream", False, now - dt.timedelta(days=3), now - dt.timedelta(days=9)),
    }
    for symbol, (strategy, enabled, last, created) in setup.items():
        registry.add_symbol(engine, symbol, strategy, enabled=enabled)
        with engine.begin() as conn:
            conn.execute(text("UPDATE symbol_registry SET last_stream = :l, created_at = :c WHERE symbol = :s"),
                         {"l": last, "c": created, "s": symbol})

    quiet = ["2024-07-04T15:00:00Z",  # Independence Day, a weekday holiday
             "2024-01-06T15:00:00Z",  # Saturday
             "2024-01-03T01:30:00Z",  # 20:30 New York the evening before: after hours are over
             "2024-01-03T09:03:00+00:00"]  # 04:03 New York: the session has just opened
    for moment in quiet:
        result = monitor(moment)
        assert (result["stale"], result["stale_symbols"]) == (0, []), moment
    assert result["in_session"] is True and result["checked"] == 4
    assert {r.status for r in registry.list_symbols(engine)} == {"idle"}

    result = monitor(now.isoformat())
    assert result == {"now": "2024-01-03T15:00:00Z", "checked": 4, "in_session": True, "stale": 2,
                      "stale_symbols": ["NEVER", "STALE"]}
    rows = {r.symbol: r for r in registry.list_symbols(engine)}
    assert {s for s, r in rows.items() if r.status == "error"} == {"NEVER", "STALE"}
    assert rows["STALE"].error_message == "stream stale: last bar 2024-01-03T14:50:00Z (10 min ago)"
    assert rows["NEVER"].error_message.startswith("stream stale: no bar received yet")


def test_monitor_holds_crypto_to_the_clock_on_weekends_and_across_midnight(db_url):
    engine = get_engine(db_url)
    registry.add_symbol(engine, "BTC-USD", "stream", market="crypto")
    registry.add_symbol(engine, "AAPL", "stream")
    with engine.begin() as conn:  # BTC-USD quiet since 23:58 UTC on Friday, AAPL since 19:03 New York
        conn.execute(text("UPDATE symbol_registry SET last_stream = :l, created_at = :c WHERE symbol = :s"),
                     {"l": dt.datetime(2024, 1, 5, 23, 58, tzinfo=UTC), "c": dt.datetime(2024, 1, 1, tzinfo=UTC),
                      "s": "BTC-USD"})
        conn.execute(text("UPDATE symbol_registry SET last_stream = :l, created_at = :c WHERE symbol = :s"),
                     {"l": dt.datetime(2024, 1, 6, 0, 3, tzinfo=UTC), "c": dt.datetime(2024, 1, 1, tzinfo=UTC),
                      "s": "AAPL"})
    assert monitor("2024-01-06T00:02:00Z")["stale"] == 0  # four quiet minutes: not yet
    result = monitor("2024-01-06T00:04:00Z")  # six, just past UTC midnight: a new crypto day, no grace
    assert (result["stale_symbols"], result["checked"]) == (["BTC-USD"], 2)
    assert registry.get_symbol(engine, "BTC-USD").error_message == \
        "stream stale: last bar 2024-01-05T23:58:00Z (6 min ago)"
    assert monitor("2024-01-06T17:00:00Z")["stale_symbols"] == ["BTC-USD"]  # Saturday: only crypto trades
    assert registry.get_symbol(engine, "AAPL").status == "idle"  # no stock session on Saturday


def test_both_tasks_run_on_a_real_worker_by_name(pg_url, kafka, start_worker, celery_client):
    symbol = unique("SV")
    engine = get_engine(pg_url)
    registry.add_symbol(engine, symbol, "stream")
    with engine.begin() as conn:
        conn.execute(text("UPDATE symbol_registry SET created_at = '2023-12-01T00:00:00Z'"))
    start_worker(concurrency=1)
    # Outcomes are read from their effects: an earlier eager task in this process may have
    # cached Celery's disabled result backend, which the worker fixture does not reset.
    celery_client.send_task("chronox.phase.stream", kwargs={"symbol": symbol})
    [event] = wait_until(lambda: kafka.json_messages(f"chronox.stream.{symbol}", timeout_ms=500),
                         timeout=60, what="the activation event")
    assert (event["event"], registry.get_symbol(engine, symbol).status) == ("stream_activated", "running")
    celery_client.send_task("chronox.stream.monitor", kwargs={"now": "2024-01-03T15:00:00Z"})
    row = wait_until(lambda: (r := registry.get_symbol(engine, symbol)).status == "error" and r,
                     timeout=60, what="the stale flag")
    assert row.error_message.startswith("stream stale: no bar received yet")
