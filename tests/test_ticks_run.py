"""A registry run of one symbol with bars, trades and quotes on real Celery workers (Redis broker,
PostgreSQL, the mock Kafka broker, the Polygon REST stand-in): minute-bar and tick day files load
once per day in the chord header, and the trading day without a trades file is filled from REST."""
from __future__ import annotations

import csv
import datetime as dt
from collections import Counter

import pytest
from sqlalchemy import text

from chronox import registry
from chronox.calendar import NEW_YORK
from chronox.db import get_engine
from chronox.sample_ticks import trade_lines, write_tick_file
from tests.conftest import DAYS
from tests.helpers import count, polygon_daily_bar, rows_by_symbol_day, wait_for_statuses, write_days

pytestmark = pytest.mark.timeout(180)


def quote_lines(day: dt.date, ticker: str, count_: int) -> list[str]:
    """Quotes of one ticker over the day's regular session, in Polygon's quotes_v1 columns."""
    start = int(dt.datetime.combine(day, dt.time(9, 30), NEW_YORK).timestamp()) * 1_000_000_000
    return [f"{ticker},12,{100 + i % 7 / 100:.2f},{i % 5},11,{99.9 + i % 3 / 100:.2f},{1 + i % 4},1,,"
            f"{start + i * 1_000_000 - 200},{i + 1},{start + i * 1_000_000},3," for i in range(count_)]


def trade_records(lines: list[bytes]) -> list[dict]:
    """The same trades as Polygon's /v3/trades records (what REST answers for a day without a file)."""
    out = []
    for fields in csv.reader(line.decode() for line in lines):
        (_, conditions, correction, exchange, trade_id, participant, price, seq, sip, size, tape, trf_id,
         trf_ts) = fields
        record = {"correction": int(correction), "exchange": int(exchange), "id": trade_id,
                  "participant_timestamp": int(participant), "price": float(price), "sequence_number": int(seq),
                  "sip_timestamp": int(sip), "size": float(size), "tape": int(tape), "trf_id": int(trf_id),
                  "trf_timestamp": int(trf_ts)}
        if conditions:
            record["conditions"] = [int(c) for c in conditions.split(",")]
        out.append(record)
    return out


def test_bars_trades_and_quotes_of_one_symbol_in_one_run(pg_url, flatfiles, kafka, polygon, start_worker,
                                                         celery_client):
    symbol = "TKRUN"
    bars = write_days(flatfiles, DAYS, [symbol, "OTHER"])
    trades: dict[dt.date, list[bytes]] = {}
    for i, day in enumerate(DAYS):
        lines = trade_lines(day, [symbol, "OTHER"], 400, seed=i).to_pylist()
        trades[day] = [line for line in lines if line.startswith(symbol.encode())]
        if i < 2:  # the last day's trades file is not out: REST has that day
            write_tick_file(flatfiles, "trades", day, lines)
        write_tick_file(flatfiles, "quotes", day, quote_lines(day, symbol, 300 + i) + quote_lines(day, "OTHER", 50))
    polygon.add_trades(symbol, trade_records(trades[DAYS[2]]))
    polygon.set_ticker_details(symbol, {"name": "Tick Run Corp."})
    polygon.add_daily_bars(symbol, [polygon_daily_bar(d, symbol) for d in DAYS])
    registry.add_symbol(get_engine(pg_url), symbol, "flatpack+trades+quotes")

    start_worker(concurrency=2)
    plan = celery_client.send_task("chronox.registry.execute", kwargs={
        "symbols": [symbol], "start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()}).get(timeout=60)
    assert plan["other_days"] == {
        "us_stocks_trades": {DAYS[0].isoformat(): [symbol], DAYS[1].isoformat(): [symbol]},
        "us_stocks_quotes": {d.isoformat(): [symbol] for d in DAYS}}
    assert f"us_stocks_trades:{DAYS[2]}" in plan["unpublished"]
    assert wait_for_statuses(pg_url, [symbol]) == {symbol: "completed"}

    assert rows_by_symbol_day(pg_url) == {(symbol, d.isoformat()): bars[(symbol, d)] for d in DAYS}
    with get_engine(pg_url).connect() as conn:
        per_day = {table: Counter(conn.execute(text(
            f"SELECT (ts AT TIME ZONE 'America/New_York')::date FROM {table} WHERE symbol = :s"),
            {"s": symbol}).scalars()) for table in ("trades", "quotes")}
        coverage = sorted(conn.execute(text("SELECT trading_day, dataset, source, rows FROM tick_coverage")).all())
        sources = dict(conn.execute(text("SELECT source, count(*) FROM trades GROUP BY source")).all())
    assert per_day["trades"] == {d: 400 for d in DAYS}
    assert per_day["quotes"] == {d: 300 + i for i, d in enumerate(DAYS)}
    assert sources == {"flatpack": 800, "api": 400}
    assert coverage == sorted([(DAYS[0], "trades", "flatpack", 400), (DAYS[1], "trades", "flatpack", 400),
                               (DAYS[2], "trades", "api", 400),
                               *[(d, "quotes", "flatpack", 300 + i) for i, d in enumerate(DAYS)]])
    assert count(pg_url, "SELECT count(*) FROM trades WHERE symbol = 'OTHER'") == 0
    row = registry.get_symbol(get_engine(pg_url), symbol)
    assert (row.status, row.last_backfill, row.error_message) == ("completed", DAYS[-1], None)

    trade_envelopes = kafka.json_messages(f"chronox.trades.{symbol}")
    quote_envelopes = kafka.json_messages(f"chronox.quotes.{symbol}")
    assert len(trade_envelopes) == len({e["dedup_key"] for e in trade_envelopes}) == 1200
    assert len(quote_envelopes) == len({e["dedup_key"] for e in quote_envelopes}) == 903
    bar_envelopes = [e for e in kafka.json_messages(f"chronox.backfill.{symbol}") if e["event"] == "bar"
                     and e["tf"] == "1m"]
    assert len(bar_envelopes) == sum(bars[(symbol, d)] for d in DAYS)
