"""Ticks from the stream: `chronox stream` (a real subprocess) subscribes `T.<sym>` and `Q.<sym>`
for streaming symbols with the trades/quotes phases and stores and publishes the events the
Polygon websocket stand-in sends in Polygon's documented T/Q shapes."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from chronox import registry
from chronox.db import get_engine
from chronox.testing import polygon_tick_examples as ex
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)

T0 = 1_704_292_200_123  # 2024-01-03 14:30:00.123 UTC, epoch ms as the stream sends SIP times


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:4].upper()}"


def scalar(url: str, sql: str) -> Any:
    with get_engine(url).connect() as conn:
        return conn.execute(text(sql)).scalar()


def test_trade_and_quote_events_are_stored_and_published(db_url, kafka, ws, start_stream):
    a, b, c, d = unique("TA"), unique("QB"), unique("SC"), unique("TD")
    engine = get_engine(db_url)
    registry.add_symbol(engine, a, "trades+stream")
    registry.add_symbol(engine, b, "quotes+stream")
    registry.add_symbol(engine, c, "stream")
    registry.add_symbol(engine, d, "trades")  # no stream phase: nothing to subscribe
    stream = start_stream()
    wanted = {f"AM.{a}", f"T.{a}", f"AM.{b}", f"Q.{b}", f"AM.{c}"}
    assert ws.wait_for(lambda: ws.subscriptions == wanted, 15), ws.subscriptions

    documented_t = {k: v for k, v in ex.T_EVENT.items() if k != "ev"}
    documented_q = {k: v for k, v in ex.Q_EVENT.items() if k != "ev"}
    trade = {**documented_t, "sym": a, "t": T0}
    ws.send_trades([trade, dict(trade),  # the same trade twice: stored once
                    {**trade, "q": trade["q"] + 1, "p": -1.0}])  # a negative price: quarantined
    ws.send_quotes([{**documented_q, "sym": b, "t": T0 + 5}])
    ws.send_trades([{**trade, "sym": d}])  # nobody subscribed it: the stand-in does not send it
    wait_until(lambda: scalar(db_url, "SELECT count(*) FROM trades") == 1 and
               scalar(db_url, "SELECT count(*) FROM quotes") == 1 and
               scalar(db_url, "SELECT count(*) FROM quarantine") == 1, what="stream ticks")

    with engine.connect() as conn:
        [stored_trade] = conn.execute(text("SELECT * FROM trades")).mappings().all()
        [stored_quote] = conn.execute(text("SELECT * FROM quotes")).mappings().all()
        [(symbol, reason)] = conn.execute(text("SELECT symbol, reason FROM quarantine")).all()
    assert {k: v for k, v in stored_trade.items() if k != "ts"} == {
        "symbol": a, "sip_timestamp": T0 * 1_000_000, "sequence_number": 3681328, "participant_timestamp": None,
        "trf_timestamp": None, "conditions": "0,12", "tape": 3, "source": "stream", "exchange": 4,
        "trade_id": "12345", "price": 114.125, "size": 100.0, "correction": None, "trf_id": None}
    assert {k: v for k, v in stored_quote.items() if k != "ts"} == {
        "symbol": b, "sip_timestamp": (T0 + 5) * 1_000_000, "sequence_number": 50385480,
        "participant_timestamp": None, "trf_timestamp": None, "conditions": "0", "tape": 3, "source": "stream",
        "bid_exchange": 4, "bid_price": 114.125, "bid_size": 100.0, "ask_exchange": 7, "ask_price": 114.128,
        "ask_size": 160.0, "indicators": "604"}
    assert (symbol, reason) == (a, "price must be positive and finite, got -1.0")

    # kafka-first: each event is published before it is stored, the repeat too, with one dedup_key
    trades = kafka.json_messages(f"chronox.trades.{a}")
    assert [t["dedup_key"] for t in trades] == [f"{a}|trades|{T0 * 1_000_000}|3681328"] * 2
    assert trades[0] == {
        "event": "trade", "symbol": a, "ts": "2024-01-03T14:30:00.123000000Z", "sip_timestamp": T0 * 1_000_000,
        "participant_timestamp": None, "trf_timestamp": None, "sequence_number": 3681328, "exchange": 4,
        "id": "12345", "price": 114.125, "size": 100.0, "conditions": [0, 12], "correction": None, "tape": 3,
        "trf_id": None, "source": "stream", "version": "v1", "dedup_key": f"{a}|trades|{T0 * 1_000_000}|3681328",
        "market": "stocks", "provider": "polygon"}
    [q] = kafka.json_messages(f"chronox.quotes.{b}")
    assert (q["event"], q["bid_price"], q["ask_price"], q["indicators"], q["dedup_key"]) == \
        ("quote", 114.125, 114.128, [604], f"{b}|quotes|{(T0 + 5) * 1_000_000}|50385480")

    code, stats = stream.stop()
    assert code == 0, stream.log()
    assert (stats["received"], stats["ticks"], stats["written"], stats["quarantined"]) == (4, 2, 0, 1)
