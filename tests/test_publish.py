"""Kafka envelopes from day loads, against librdkafka's mock broker, in both publish modes."""
import datetime as dt

import pytest

from chronox import registry
from chronox.backfill import drain_outbox, load_day
from chronox.completion import finalize_symbol
from chronox.db import get_engine
from chronox.settings import load_settings
from tests.helpers import count, write_days

DAY = dt.date(2024, 1, 3)
ENVELOPE_KEYS = {"event", "symbol", "tf", "ts", "ohlcv", "features", "source", "version", "dedup_key",
                 "market", "provider"}


def bars_in_db(url, symbol):
    from sqlalchemy import text

    from chronox.bars import isoformat_utc

    with get_engine(url).connect() as conn:
        rows = conn.execute(text("SELECT ts, open, high, low, close, volume FROM ohlcv_1m "
                                 "WHERE symbol = :s ORDER BY ts"), {"s": symbol}).all()
    out = {}
    for ts, *ohlcv in rows:
        if isinstance(ts, str):
            ts = dt.datetime.fromisoformat(ts)
        out[isoformat_utc(ts)] = dict(zip(("open", "high", "low", "close", "volume"), ohlcv, strict=True))
    return out


def test_kafka_first_publishes_one_envelope_per_bar(db_url, flatfiles, kafka):
    symbol = "KF" + db_url[:2].upper()  # distinct topic per parametrized run
    expected = write_days(flatfiles, [DAY], [symbol])
    registry.add_symbol(get_engine(db_url), symbol, "flatpack")
    result = load_day(load_settings(), DAY.isoformat(), [symbol])
    assert result["rows"] == result["published"] == expected[(symbol, DAY)]
    messages = kafka.messages(f"chronox.backfill.{symbol}")
    assert {m.key for m in messages} == {symbol.encode()}
    envelopes = [__import__("json").loads(m.value) for m in messages]
    assert len(envelopes) == expected[(symbol, DAY)]
    assert all(set(e) == ENVELOPE_KEYS for e in envelopes)
    assert len({e["dedup_key"] for e in envelopes}) == len(envelopes)
    stored = bars_in_db(db_url, symbol)
    for e in envelopes:
        assert (e["event"], e["symbol"], e["tf"], e["source"], e["version"]) == ("bar", symbol, "1m", "flatpack", "v1")
        assert (e["market"], e["provider"]) == ("stocks", "polygon")
        assert e["dedup_key"] == f"{symbol}|1m|{e['ts']}"
        assert e["ohlcv"] == stored[e["ts"]]
    summary = finalize_symbol(load_settings(), symbol, DAY.isoformat(), DAY.isoformat(), [DAY.isoformat()])
    completion = kafka.json_messages(f"chronox.backfill.{symbol}")[-1]
    assert completion["event"] == "backfill_completed" and completion["rows"] == expected[(symbol, DAY)]
    assert summary["status"] == "completed"


def test_kafka_first_with_kafka_down_commits_nothing(pg_url, flatfiles, monkeypatch):
    from kafka.errors import KafkaError

    from chronox.publish import PublishError

    write_days(flatfiles, [DAY], ["KDOWN"])
    monkeypatch.setenv("CHRONOX_KAFKA_BROKERS", "127.0.0.1:1")
    with pytest.raises((KafkaError, PublishError)):
        load_day(load_settings(), DAY.isoformat(), ["KDOWN"])
    assert count(pg_url, "SELECT count(*) FROM ohlcv_1m") == 0
    assert count(pg_url, "SELECT count(*) FROM coverage") == 0


def test_db_first_commits_while_kafka_is_down_and_publishes_when_it_is_back(pg_url, flatfiles, kafka, monkeypatch):
    symbol = "KDBF"
    expected = write_days(flatfiles, [DAY], [symbol])
    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", "db-first")
    monkeypatch.setenv("CHRONOX_KAFKA_BROKERS", "127.0.0.1:1")
    result = load_day(load_settings(), DAY.isoformat(), [symbol])
    assert result["rows"] == expected[(symbol, DAY)] and result["published"] == 0
    assert count(pg_url, "SELECT count(*) FROM ohlcv_1m") == expected[(symbol, DAY)]
    assert count(pg_url, "SELECT count(*) FROM publish_outbox") == 1
    monkeypatch.setenv("CHRONOX_KAFKA_BROKERS", kafka.bootstrap)
    assert drain_outbox(load_settings()) == {"published": expected[(symbol, DAY)], "pending": 0}
    envelopes = kafka.json_messages(f"chronox.backfill.{symbol}")
    assert len(envelopes) == expected[(symbol, DAY)]
    assert {e["ts"] for e in envelopes} == set(bars_in_db(pg_url, symbol))
    assert count(pg_url, "SELECT count(*) FROM publish_outbox") == 0


def test_db_first_with_kafka_up_publishes_right_after_commit(sqlite_url, flatfiles, kafka, monkeypatch):
    symbol = "KDBU"
    expected = write_days(flatfiles, [DAY], [symbol])
    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", "db-first")
    result = load_day(load_settings(), DAY.isoformat(), [symbol])
    assert result["published"] == expected[(symbol, DAY)]
    assert len(kafka.messages(f"chronox.backfill.{symbol}")) == expected[(symbol, DAY)]
    assert count(sqlite_url, "SELECT count(*) FROM publish_outbox") == 0


@pytest.mark.parametrize("mode", ["kafka-first", "db-first"])
def test_a_batch_of_several_providers_bars_names_each_ones_origin(pg_url, kafka, monkeypatch, mode):
    """Real-time hourly bars come in one batch for stocks and crypto symbols alike."""
    from chronox import store
    from chronox.bars import Bar
    from chronox.delivery import Delivery

    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", mode)
    stock, pair = ("OGK", "OGK-USD") if mode == "kafka-first" else ("OGD", "OGD-USD")
    ts = dt.datetime(2024, 1, 3, 15, tzinfo=dt.UTC)
    bars = [Bar(stock, ts, 10.0, 11.0, 9.5, 10.5, 1000.0, None, None, "api"),
            Bar(pair, ts, 42000.0, 42100.0, 41900.0, 42050.0, 3.5, None, None, "api")]
    with Delivery(load_settings()).transaction() as out:
        store.upsert_bars_at(out.conn, "1h", bars)
        out.bars(bars, "1h", {pair: ("crypto", "binance")})
    assert out.published == 2
    [stock_envelope] = kafka.json_messages(f"chronox.backfill.{stock}")
    [pair_envelope] = kafka.json_messages(f"chronox.backfill.{pair}")
    assert (stock_envelope["tf"], stock_envelope["market"], stock_envelope["provider"]) == ("1h", "stocks", "polygon")
    assert (pair_envelope["tf"], pair_envelope["market"], pair_envelope["provider"]) == ("1h", "crypto", "binance")
    assert pair_envelope["ohlcv"]["close"] == 42050.0
