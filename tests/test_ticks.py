"""Trades and quotes: tick day files (bad rows, corrections, duplicates, broken files), REST gap
fill through polygon-api-client against the Polygon stand-in (pagination, documented payloads),
Kafka envelopes, partitions, the phases' planning and canvas."""
from __future__ import annotations

import datetime as dt
import gzip
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from chronox import registry, tick_store, ticks
from chronox.backfill import plan_run
from chronox.calendar import NEW_YORK
from chronox.db import get_engine
from chronox.markets import Instrument, Market, ProviderId, check_phases
from chronox.sample_ticks import tick_file_path, write_tick_file
from chronox.settings import load_settings
from chronox.sources.polygon import PolygonRest
from chronox.strategy import InvalidInput, parse_strategy
from chronox.testing import polygon_tick_examples as ex
from chronox.testing.polygon_rest import FakePolygonRest
from tests.helpers import KEY

pytestmark = pytest.mark.timeout(120)

DAY = dt.date(2024, 1, 3)  # a Wednesday: New York is UTC-5
TRADES_HEADER = ",".join(ticks.TRADE_KIND.header)


def ns(day: dt.date, hh: int, mm: int, ss: int = 0, frac: int = 0) -> int:
    """Epoch nanoseconds of a New York wall-clock time."""
    return int(dt.datetime.combine(day, dt.time(hh, mm, ss), NEW_YORK).timestamp()) * 1_000_000_000 + frac


def trade(ticker: str, sip: int, seq: int, price: str = "10.5", size: str = "100", conditions: str = "12",
          correction: str = "0", exchange: str = "11", trade_id: str | None = None, tape: str = "3",
          trf_id: str = "0", trf_ts: str = "0") -> str:
    """A trades_v1 line in Polygon's column order (several conditions quoted, as Polygon writes them)."""
    return ",".join([ticker, f'"{conditions}"' if "," in conditions else conditions, correction, exchange,
                     trade_id or str(5298352503000 + seq), str(sip - 350_000), price, str(seq), str(sip), size,
                     tape, trf_id, trf_ts])


def rows(url: str, sql: str, **params: Any) -> list[tuple]:
    with get_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def stored(url: str, table: str, symbol: str) -> list[dict[str, Any]]:
    with get_engine(url).connect() as conn:
        found = conn.execute(text(f"SELECT * FROM {table} WHERE symbol = :s ORDER BY sip_timestamp, "
                                  "sequence_number"), {"s": symbol}).mappings().all()
    return [{k: v for k, v in r.items() if k != "ts"} for r in found]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:4].upper()}"


# -- day files -------------------------------------------------------------------------------


def test_polygon_documented_trade_lines_load_with_their_values(db_url, flatfiles):
    day = dt.date(2024, 4, 5)  # the day of Polygon's sample rows (SIP times 2024-04-05 04:44 New York)
    write_tick_file(flatfiles, "trades", day, ex.TRADES_FILE_LINES[1:], header=ex.TRADES_FILE_LINES[0])
    result = ticks.load_day(load_settings(), "trades", day, ["A"])
    assert (result["rows"], result["quarantined"], result["duplicates"]) == (3, 0, 0)
    assert stored(db_url, "trades", "A") == [
        {"symbol": "A", "sip_timestamp": 1712306654208740096, "sequence_number": 3807,
         "participant_timestamp": 1712306654208705342, "trf_timestamp": 0, "conditions": "12,37", "tape": 1,
         "source": "flatpack", "exchange": 11, "trade_id": "52983525035312", "price": 142.99, "size": 5.0,
         "correction": 0, "trf_id": 0},
        {"symbol": "A", "sip_timestamp": 1712306654208743168, "sequence_number": 3808,
         "participant_timestamp": 1712306654208705342, "trf_timestamp": 0, "conditions": "12,37", "tape": 1,
         "source": "flatpack", "exchange": 11, "trade_id": "52983525035313", "price": 143.0, "size": 8.0,
         "correction": 0, "trf_id": 0},
        {"symbol": "A", "sip_timestamp": 1712306654429468160, "sequence_number": 3809,
         "participant_timestamp": 1712306654429439337, "trf_timestamp": 0, "conditions": "12", "tape": 1,
         "source": "flatpack", "exchange": 11, "trade_id": "52983525035314", "price": 143.0, "size": 187.0,
         "correction": 0, "trf_id": 0}]
    [(ts,)] = rows(db_url, "SELECT ts FROM trades WHERE sequence_number = 3807")
    ts = dt.datetime.fromisoformat(ts) if isinstance(ts, str) else ts  # SQLite: naive UTC text
    ts = ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts
    assert ts == dt.datetime(2024, 4, 5, 8, 44, 14, 208740, tzinfo=dt.UTC)  # the SIP time cut to microseconds


def test_a_trades_file_loads_once_with_bad_rows_quarantined_and_duplicates_dropped(db_url, flatfiles, monkeypatch):
    # Small parse blocks: the file's repeats fall in other blocks than their first occurrence.
    monkeypatch.setattr(ticks, "BLOCK_BYTES", 2048)
    t = lambda hh, mm, ss=0, frac=0: ns(DAY, hh, mm, ss, frac)  # noqa: E731
    good_aapl = [trade("AAPL", t(9, 30, 0, 123_456_789), 1, conditions="12,37"),
                 trade("AAPL", t(9, 30, 1), 2, price="10.75", size="50"),
                 # a correction: Polygon's indicator and the corrected values are kept as sent
                 trade("AAPL", t(9, 30, 2), 3, price="10.8", correction="1", conditions="12,41", trf_id="202",
                       trf_ts=str(t(9, 30, 2) - 9_000)),
                 trade("AAPL", t(19, 59, 59), 4, exchange="4", tape="1")]
    filler = [trade("ZZZZ", t(10, i // 60, i % 60), 1000 + i) for i in range(200)]  # another ticker: skipped
    lines = [good_aapl[0], good_aapl[0],  # an exact repeat, next to its first
             *good_aapl[1:3], *filler[:100],
             trade("AAPL", t(9, 30, 1), 2, price="99.0", size="1"),  # the key of trade 2 again, blocks later
             trade("MSFT", t(11, 0), 7, price="370.1"), good_aapl[3], *filler[100:],
             # bad rows of wanted tickers
             trade("AAPL", t(12, 0), 20, price="abc"),
             trade("AAPL", t(12, 0), 21, size="-3"),
             trade("AAPL", t(12, 0) // 1_000_000, 22),  # milliseconds where nanoseconds belong
             trade("AAPL", ns(DAY + dt.timedelta(days=1), 0, 0, 1), 23),  # the next New York day
             trade("AAPL", t(12, 0), 24, conditions="12;37"),
             trade("AAPL", t(12, 0), 25, exchange=str(2**31)),
             trade("AAPL", t(12, 0), 26, trade_id="12 34"),
             trade("MSFT", t(12, 0), 27, price="0"),
             trade("MSFT", t(12, 1), 28).replace(",28,", ",,"),  # no sequence number
             "MSFT,12,0,11,99",  # a row of 5 columns
             "ZZZZ,not,a,row",  # a short row of a ticker nobody wants: skipped
             trade("MSFT", t(11, 0, 0, 1), 29, price="370.2")]
    write_tick_file(flatfiles, "trades", DAY, lines)
    symbols = ["AAPL", "MSFT", "IBM"]  # IBM wants the day and has no trade in it

    result = ticks.load_day(load_settings(), "trades", DAY, symbols)
    assert result == {"dataset": "trades", "day": "2024-01-03", "rows": 6, "symbols": 3, "quarantined": 10,
                      "duplicates": 2, "published": 0}
    aapl = stored(db_url, "trades", "AAPL")
    assert [(r["sequence_number"], r["price"], r["size"], r["conditions"], r["correction"], r["trf_id"])
            for r in aapl] == [(1, 10.5, 100.0, "12,37", 0, 0), (2, 10.75, 50.0, "12", 0, 0),
                               (3, 10.8, 100.0, "12,41", 1, 202), (4, 10.5, 100.0, "12", 0, 0)]
    assert aapl[0] == {"symbol": "AAPL", "sip_timestamp": t(9, 30, 0, 123_456_789), "sequence_number": 1,
                       "participant_timestamp": t(9, 30, 0, 123_456_789) - 350_000, "trf_timestamp": 0,
                       "conditions": "12,37", "tape": 3, "source": "flatpack", "exchange": 11,
                       "trade_id": "5298352503001", "price": 10.5, "size": 100.0, "correction": 0, "trf_id": 0}
    assert aapl[2]["trf_timestamp"] == t(9, 30, 2) - 9_000
    assert [(r["sequence_number"], r["price"]) for r in stored(db_url, "trades", "MSFT")] == [(7, 370.1),
                                                                                              (29, 370.2)]
    assert rows(db_url, "SELECT count(*) FROM trades WHERE symbol = 'ZZZZ'") == [(0,)]
    quarantined = sorted(rows(db_url, "SELECT symbol, reason FROM quarantine"))
    assert quarantined == sorted([
        ("AAPL", "price 'abc' is not a number"),
        ("AAPL", "size must be >= 0 and finite, got -3.0"),
        ("AAPL", f"sip_timestamp {t(12, 0) // 1_000_000} is not in the day ({ns(DAY, 0, 0)} to "
                 f"{ns(DAY + dt.timedelta(days=1), 0, 0)}, epoch nanoseconds)"),
        ("AAPL", f"sip_timestamp {ns(DAY + dt.timedelta(days=1), 0, 0, 1)} is not in the day ({ns(DAY, 0, 0)} "
                 f"to {ns(DAY + dt.timedelta(days=1), 0, 0)}, epoch nanoseconds)"),
        ("AAPL", "conditions '12;37' is not a list of codes"),
        ("AAPL", f"exchange {2**31} is not between 0 and {2**31 - 1}"),
        ("AAPL", "id '12 34' is not a trade id of up to 64 letters and digits"),
        ("MSFT", "price must be positive and finite, got 0.0"),
        ("MSFT", "sequence_number is missing"),
        ("MSFT", "expected 13 columns, got 5")])
    raws = dict(rows(db_url, "SELECT reason, raw FROM quarantine"))
    assert raws["conditions '12;37' is not a list of codes"] == next(x for x in lines if "12;37" in x)
    assert raws["expected 13 columns, got 5"] == "MSFT,12,0,11,99"
    assert {r[0]: r[1:] for r in rows(db_url, "SELECT symbol, dataset, source, rows FROM tick_coverage")} == \
        {"AAPL": ("trades", "flatpack", 4), "MSFT": ("trades", "flatpack", 2), "IBM": ("trades", "flatpack", 0)}

    # A rerun leaves the same rows: the day is replaced, not added to.
    again = ticks.load_day(load_settings(), "trades", DAY, symbols)
    assert again["rows"] == 6
    assert rows(db_url, "SELECT count(*) FROM trades") == [(6,)]


# pyarrow reports the line it cannot decode for the invalid-row handler as an unraisable
# exception, before the load reads the file again with such bytes escaped.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_malformed_line_that_is_not_utf8_is_quarantined_and_the_rest_loads(db_url, flatfiles):
    good = [trade("AAPL", ns(DAY, 10, 0), 1), trade("AAPL", ns(DAY, 10, 1), 2)]
    path = write_tick_file(flatfiles, "trades", DAY, [good[0].encode(), b"AAPL,\xff\xfe,0,11", good[1].encode(),
                                                      trade("AAPL", ns(DAY, 10, 2), 3).encode().replace(b",12,",
                                                                                                     b",1\xff,")])
    assert path.exists()
    result = ticks.load_day(load_settings(), "trades", DAY, ["AAPL"])
    assert (result["rows"], result["quarantined"]) == (2, 2)
    assert [r["sequence_number"] for r in stored(db_url, "trades", "AAPL")] == [1, 2]
    assert sorted(rows(db_url, "SELECT raw, reason FROM quarantine")) == sorted([
        ("AAPL,\\xff\\xfe,0,11", "expected 13 columns, got 4"),
        (trade("AAPL", ns(DAY, 10, 2), 3).replace(",12,", ",1\\xff,"), "conditions '1\\\\xff' is not a list of codes")])


def quote(ticker: str, sip: int, seq: int, bid: str = "10.0", ask: str = "10.02", bid_size: str = "3",
          ask_size: str = "4", conditions: str = "1", indicators: str = "") -> str:
    """A quotes_v1 line in Polygon's column order."""
    quoted = lambda v: f'"{v}"' if "," in v else v  # noqa: E731
    return ",".join([ticker, "12", ask, ask_size, "11", bid, bid_size, quoted(conditions), quoted(indicators),
                     str(sip - 380_000), str(seq), str(sip), "3", ""])


def test_a_quotes_file_keeps_one_sided_quotes_and_quarantines_bad_ones(db_url, flatfiles):
    t = lambda hh, mm, ss=0: ns(DAY, hh, mm, ss)  # noqa: E731
    lines = [quote("AAPL", t(9, 30), 2060, bid="102.7", ask="0", bid_size="60", ask_size="0"),  # no ask side
             quote("AAPL", t(9, 30, 1), 2061, indicators="604,607"),
             quote("AAPL", t(9, 30, 2), 2062, bid="-1"),
             quote("QQQQ", t(9, 30), 1)]
    write_tick_file(flatfiles, "quotes", DAY, lines)
    assert ticks.load_day(load_settings(), "quotes", DAY, ["AAPL"])["rows"] == 2
    assert stored(db_url, "quotes", "AAPL") == [
        {"symbol": "AAPL", "sip_timestamp": t(9, 30), "sequence_number": 2060, "participant_timestamp": t(9, 30)
         - 380_000, "trf_timestamp": None, "conditions": "1", "tape": 3, "source": "flatpack", "bid_exchange": 11,
         "bid_price": 102.7, "bid_size": 60.0, "ask_exchange": 12, "ask_price": 0.0, "ask_size": 0.0,
         "indicators": None},
        {"symbol": "AAPL", "sip_timestamp": t(9, 30, 1), "sequence_number": 2061,
         "participant_timestamp": t(9, 30, 1) - 380_000, "trf_timestamp": None, "conditions": "1", "tape": 3,
         "source": "flatpack", "bid_exchange": 11, "bid_price": 10.0, "bid_size": 3.0, "ask_exchange": 12,
         "ask_price": 10.02, "ask_size": 4.0, "indicators": "604,607"}]
    assert rows(db_url, "SELECT symbol, reason FROM quarantine") == \
        [("AAPL", "bid_price must be >= 0 and finite, got -1.0")]


@pytest.mark.parametrize("damage, reason", [
    (lambda blob: blob[:len(blob) // 2], "corrupt or truncated gzip"),
    (lambda blob: b"this is no gzip stream" * 10, "corrupt or truncated gzip"),
    (lambda blob: gzip.compress(b"ticker,price,size\nAAPL,1,2\n"), "header lacks conditions, correction"),
])
def test_a_broken_file_loads_nothing_and_puts_its_symbols_in_error(db_url, flatfiles, damage, reason):
    engine = get_engine(db_url)
    registry.add_symbol(engine, "AAPL", "trades")
    filler = [trade("AAPL", ns(DAY, 9, 30) + i, i) for i in range(30_000)]
    path = write_tick_file(flatfiles, "trades", DAY, filler)
    path.write_bytes(damage(path.read_bytes()))

    result = ticks.load_day(load_settings(), "trades", DAY, ["AAPL"])
    assert reason in result["error"] and result["rows"] == 0
    assert rows(db_url, "SELECT count(*) FROM trades") == [(0,)]
    assert rows(db_url, "SELECT count(*) FROM tick_coverage") == [(0,)]
    [(origin, symbol, message)] = rows(db_url, "SELECT origin, symbol, reason FROM quarantine")
    assert (origin, symbol) == (str(tick_file_path(flatfiles, "trades", DAY)), None) and reason in message
    row = registry.get_symbol(engine, "AAPL")
    assert row.status == "error" and reason in (row.error_message or "")


def test_a_reload_replaces_the_symbol_day_in_its_own_partition(pg_url, flatfiles):
    symbol = unique("RL")
    day2 = DAY + dt.timedelta(days=1)
    for day in (DAY, day2):
        write_tick_file(flatfiles, "trades", day, [trade(symbol, ns(day, 10, 0), 1), trade(symbol, ns(day, 10, 1), 2)])
        ticks.load_day(load_settings(), "trades", day, [symbol])
    with get_engine(pg_url).begin() as conn:  # a stream tick (millisecond SIP time) of the first day
        tick_store.insert_new(conn, "trades", [ticks.stream_tick({
            "ev": "T", "sym": symbol, "x": 4, "i": "9", "z": 3, "p": 11.0, "s": 5, "c": [0], "t":
            ns(DAY, 10, 0) // 1_000_000 + 1, "q": 3})[1]])
    assert rows(pg_url, "SELECT count(*) FROM trades WHERE symbol = :s", s=symbol) == [(5,)]
    names = [name for name, _ in _partitions(pg_url)]
    assert {f"trades_p{DAY:%Y%m%d}", f"trades_p{day2:%Y%m%d}"} <= set(names)
    # The file of the first day again: its symbol-day is what the file says, the stream's tick gone.
    write_tick_file(flatfiles, "trades", DAY, [trade(symbol, ns(DAY, 10, 0), 1, price="12.5")])
    ticks.load_day(load_settings(), "trades", DAY, [symbol])
    assert rows(pg_url, "SELECT sequence_number, price, source FROM chronox_partitions.trades_p20240103 "
                        "WHERE symbol = :s", s=symbol) == [(1, 12.5, "flatpack")]
    assert rows(pg_url, "SELECT count(*) FROM chronox_partitions.trades_p20240104 WHERE symbol = :s",
                s=symbol) == [(2,)]


def _partitions(url: str) -> list[tuple[str, dt.datetime]]:
    from chronox import partitions

    with get_engine(url).connect() as conn:
        return partitions.partitions(conn, "trades")


def test_tick_retention_drops_old_trade_partitions(pg_url, flatfiles):
    from chronox import partitions
    from chronox.settings import Settings

    for day in (dt.date(2024, 1, 2), DAY):
        write_tick_file(flatfiles, "trades", day, [trade("RET", ns(day, 10, 0), 1)])
        ticks.load_day(load_settings(), "trades", day, ["RET"])
    result = partitions.drop_expired_ticks(Settings(database_url=pg_url, tick_retention_days=2),
                                           today=dt.date(2024, 1, 5))
    # (other tests' older days may go too: partitions outlive the tables' rows)
    assert "trades_p20240102" in result["dropped"]["trades"]
    assert "trades_p20240103" not in result["dropped"]["trades"]
    assert rows(pg_url, "SELECT count(*) FROM trades WHERE symbol = 'RET'") == [(1,)]


# -- Kafka --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["kafka-first", "db-first"])
def test_each_stored_tick_is_one_envelope_with_a_dedup_key(pg_url, flatfiles, kafka, monkeypatch, mode):
    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", mode)
    symbol = unique("KT")
    sip = ns(DAY, 9, 30, 0, 123_456_789)
    write_tick_file(flatfiles, "trades", DAY, [trade(symbol, sip, 1, conditions="12,37"), trade(symbol, sip, 1),
                                               trade(symbol, sip + 5, 2, price="-1"), trade(symbol, sip + 9, 3)])
    write_tick_file(flatfiles, "quotes", DAY, [quote(symbol, sip, 70, indicators="604")])
    trades_result = ticks.load_day(load_settings(), "trades", DAY, [symbol])
    quotes_result = ticks.load_day(load_settings(), "quotes", DAY, [symbol])
    assert (trades_result["rows"], trades_result["published"], quotes_result["published"]) == (2, 2, 1)

    envelopes = kafka.json_messages(f"chronox.trades.{symbol}")
    assert [e["sequence_number"] for e in envelopes] == [1, 3]
    assert envelopes[0] == {
        "event": "trade", "symbol": symbol, "ts": "2024-01-03T14:30:00.123456789Z", "sip_timestamp": sip,
        "participant_timestamp": sip - 350_000, "trf_timestamp": 0, "sequence_number": 1, "exchange": 11,
        "id": "5298352503001", "price": 10.5, "size": 100.0, "conditions": [12, 37], "correction": 0, "tape": 3,
        "trf_id": 0, "source": "flatpack", "version": "v1", "dedup_key": f"{symbol}|trades|{sip}|1",
        "market": "stocks", "provider": "polygon"}
    [q] = kafka.json_messages(f"chronox.quotes.{symbol}")
    assert q == {"event": "quote", "symbol": symbol, "ts": "2024-01-03T14:30:00.123456789Z", "sip_timestamp": sip,
                 "participant_timestamp": sip - 380_000, "trf_timestamp": None, "sequence_number": 70,
                 "bid_exchange": 11, "bid_price": 10.0, "bid_size": 3.0, "ask_exchange": 12, "ask_price": 10.02,
                 "ask_size": 4.0, "conditions": [1], "indicators": [604], "tape": 3, "source": "flatpack",
                 "version": "v1", "dedup_key": f"{symbol}|quotes|{sip}|70", "market": "stocks",
                 "provider": "polygon"}
    assert rows(pg_url, "SELECT count(*) FROM publish_outbox") == [(0,)]


# -- REST ---------------------------------------------------------------------------------------


def test_rest_pages_follow_the_cursor_with_the_documented_parameters(polygon):
    day = dt.date(2018, 2, 2)  # the spec example's trades (04:00 New York)
    records = [{**ex.TRADES["results"][0], "sequence_number": 1063 + i, "sip_timestamp":
                ex.TRADES["results"][0]["sip_timestamp"] + i, "id": str(i)} for i in range(5)]
    polygon.add_trades("AAPL", records)
    polygon.add_trades("AAPL", [{**records[0], "sip_timestamp": ns(day + dt.timedelta(days=1), 9, 30)}])  # later
    rest = PolygonRest(load_settings(), page_limit=2)
    start, end = (int(b.timestamp()) * 1_000_000_000 for b in tick_store.day_window(day))
    pages = list(rest.ticks("trades", "AAPL", start, end))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r["sequence_number"] for p in pages for r in p] == [1063, 1064, 1065, 1066, 1067]
    requests = [r for r in polygon.requests if r.path == "/v3/trades/AAPL"]
    assert len(requests) == 3 and all(r.has_auth for r in requests)
    assert requests[0].query == {"timestamp.gte": str(start), "timestamp.lt": str(end), "limit": "2",
                                 "sort": "timestamp", "order": "asc"}
    assert set(requests[1].query) == {"cursor"}  # then the next_url, as Polygon sends it


def test_rest_fill_stores_polygon_documented_answers(db_url, polygon):
    polygon.add_trades("AAPL", ex.TRADES["results"])
    polygon.add_quotes("AAPL", ex.QUOTES["results"])
    settings = load_settings()
    trades_result = ticks.fill_day(settings, "AAPL", "trades", "2018-02-02")
    assert (trades_result["rows"], trades_result["covered"], trades_result["quarantined"]) == (2, True, 0)
    assert stored(db_url, "trades", "AAPL") == [
        {"symbol": "AAPL", "sip_timestamp": 1517562000016036600, "sequence_number": 1063,
         "participant_timestamp": 1517562000015577000, "trf_timestamp": None, "conditions": "12,41", "tape": 3,
         "source": "api", "exchange": 11, "trade_id": "1", "price": 171.55, "size": 100.0, "correction": None,
         "trf_id": None},
        {"symbol": "AAPL", "sip_timestamp": 1517562000016038100, "sequence_number": 1064,
         "participant_timestamp": 1517562000015577600, "trf_timestamp": None, "conditions": "12,41", "tape": 3,
         "source": "api", "exchange": 11, "trade_id": "2", "price": 171.55, "size": 100.0, "correction": None,
         "trf_id": None}]
    assert ticks.fill_day(settings, "AAPL", "quotes", "2018-02-02")["rows"] == 2
    assert [(r["sequence_number"], r["bid_price"], r["ask_price"], r["ask_size"], r["conditions"])
            for r in stored(db_url, "quotes", "AAPL")] == [(2060, 102.7, 0.0, 0.0, "1"), (2061, 170.0, 0.0, 0.0, "1")]
    assert sorted(rows(db_url, "SELECT dataset, source, rows FROM tick_coverage")) == \
        [("quotes", "api", 2), ("trades", "api", 2)]
    # Covered days are not asked for again.
    before = polygon.count_requests("/v3/")
    assert ticks.fill_day(settings, "AAPL", "trades", "2018-02-02") == \
        {"symbol": "AAPL", "dataset": "trades", "day": "2018-02-02", "provider": "polygon", "rows": 0,
         "covered": True}
    assert polygon.count_requests("/v3/") == before


def test_rest_fill_of_the_client_fixtures_drops_the_repeat_and_pages_through(db_url, polygon):
    polygon.add_trades("AAPL", ex.TRADES_CLIENT["results"])  # two records of one key: the first is kept
    polygon.add_quotes("AAPL", ex.QUOTES_CLIENT["results"] + ex.QUOTES_CLIENT_NEXT["results"])
    settings = load_settings()
    result = ticks.fill_day(settings, "AAPL", "trades", "2022-04-28")
    assert (result["rows"], result["duplicates"]) == (1, 1)
    assert [(r["exchange"], r["price"], r["correction"], r["trf_id"], r["trf_timestamp"])
            for r in stored(db_url, "trades", "AAPL")] == [(11, 156.43, 1, 3, 1651181557090806500)]
    result = ticks.fill_day(settings, "AAPL", "quotes", "2022-05-10")
    assert result["rows"] == 20
    sips = [r["sip_timestamp"] for r in stored(db_url, "quotes", "AAPL")]
    assert sips == sorted(r["sip_timestamp"] for r in ex.QUOTES_CLIENT["results"] + ex.QUOTES_CLIENT_NEXT["results"])


def test_rest_fill_takes_50000_a_page_and_quarantines_bad_records(pg_url, polygon):
    day = dt.date(2024, 1, 4)
    base = ns(day, 4, 0)
    records = [{"conditions": [12, 37], "exchange": 4, "id": str(i), "participant_timestamp": base + i * 1000 - 7,
                "price": 50 + (i % 100) / 100, "sequence_number": i, "sip_timestamp": base + i * 1000, "size": 10,
                "tape": 3} for i in range(60_000)]
    records[10]["price"] = -2
    del records[11]["id"]
    records[12]["conditions"] = ["12"]  # not a list of codes
    polygon.add_trades("BIG", records)
    result = ticks.fill_day(load_settings(), "BIG", "trades", day.isoformat())
    assert (result["rows"], result["quarantined"], result["duplicates"]) == (59_997, 3, 0)
    requests = [r for r in polygon.requests if r.path == "/v3/trades/BIG"]
    assert len(requests) == 2 and requests[0].query["limit"] == "50000"
    assert rows(pg_url, "SELECT count(*), min(sequence_number), max(sequence_number) FROM trades") == \
        [(59_997, 0, 59_999)]
    assert sorted(r for (r,) in rows(pg_url, "SELECT reason FROM quarantine")) == sorted([
        "price must be positive and finite, got -2.0",
        "id is missing",
        "conditions ['12'] is not a list of codes"])
    [(origin,)] = rows(pg_url, "SELECT DISTINCT origin FROM quarantine")
    assert origin == "polygon:trades:BIG:2024-01-04"


def test_rest_fill_replaces_the_days_stream_ticks(db_url, polygon):
    sip = ex.TRADES["results"][0]["sip_timestamp"]
    with get_engine(db_url).begin() as conn:
        tick_store.insert_new(conn, "trades", [ticks.stream_tick(
            {"ev": "T", "sym": "AAPL", "x": 11, "i": "1", "z": 3, "p": 171.55, "s": 100, "c": [12, 41],
             "t": sip // 1_000_000, "q": 1063})[1]])
    polygon.add_trades("AAPL", ex.TRADES["results"])
    ticks.fill_day(load_settings(), "AAPL", "trades", "2018-02-02")
    assert [(r["sip_timestamp"], r["source"]) for r in stored(db_url, "trades", "AAPL")] == \
        [(sip, "api"), (ex.TRADES["results"][1]["sip_timestamp"], "api")]


def test_without_a_key_the_rest_fill_is_skipped_with_a_warning(db_url):
    registry.add_symbol(get_engine(db_url), "AAPL", "trades")
    result = ticks.plan_fill(load_settings(), "AAPL", "trades", "2024-01-02", "2024-01-04")
    assert "POLYGON_API_KEY is not set" in result["skipped"]
    assert "POLYGON_API_KEY is not set" in (registry.get_symbol(get_engine(db_url), "AAPL").warning or "")


# -- phases, planning, canvas --------------------------------------------------------------------


def test_tick_phases_combine_with_any_other_and_are_polygon_stocks_only():
    assert parse_strategy("quotes+flatpack+trades+stream") == ("flatpack", "stream", "trades", "quotes")
    check_phases(("api", "snapshot", "trades", "quotes"), Market.STOCKS, ProviderId.POLYGON, "1m")
    with pytest.raises(InvalidInput, match="polygon cannot serve the trades phase"):
        check_phases(("trades",), Market.CRYPTO, ProviderId.POLYGON, "1m")
    assert ticks.stream_channels(Instrument("AAPL"), ("stream", "trades", "quotes")) == ["T.AAPL", "Q.AAPL"]
    assert ticks.stream_channels(Instrument("BTC-USD", Market.CRYPTO), ("stream", "trades")) == []


def test_a_run_plans_one_load_per_tick_day_file_and_leaves_loaded_days_out(sqlite_url, flatfiles, monkeypatch):
    monkeypatch.setenv("CHRONOX_PROVIDER", "replay")
    engine = get_engine(sqlite_url)
    registry.add_symbol(engine, "TA", "trades")
    registry.add_symbol(engine, "TB", "trades+quotes")
    registry.add_symbol(engine, "TC", "flatpack")
    days = [dt.date(2024, 1, 2), DAY, dt.date(2024, 1, 4), dt.date(2024, 1, 5)]
    for day in days[:2]:
        write_tick_file(flatfiles, "trades", day, [trade("TA", ns(day, 10, 0), 1)])
    write_tick_file(flatfiles, "trades", days[3], [])  # the 4th is out, so the 3rd is missing
    write_tick_file(flatfiles, "quotes", days[0], [])
    with engine.begin() as conn:
        tick_store.cover(conn, "trades", days[0], {"TA": 1}, "flatpack")  # loaded before
        tick_store.cover(conn, "trades", days[1], {"TA": 1}, "api")  # REST filled it: the file replaces that
    plan = plan_run(load_settings(), start=days[0].isoformat(), end=days[-1].isoformat())
    assert plan.other_days == {
        "us_stocks_trades": {"2024-01-02": ["TB"], "2024-01-03": ["TA", "TB"], "2024-01-05": ["TA", "TB"]},
        "us_stocks_quotes": {"2024-01-02": ["TB"]}}
    assert "us_stocks_trades:2024-01-04" in plan.missing_files
    assert {"us_stocks_quotes:2024-01-03", "us_stocks_quotes:2024-01-05"} <= set(plan.unpublished)
    assert {s.symbol: s.days for s in plan.symbols}["TA"] == []  # bars' days: finalize's business only

    from chronox.runner import inline_steps

    steps = inline_steps(plan)
    loads = [(s.kwargs["dataset"], s.kwargs["day"], s.kwargs["symbols"]) for s in steps
             if s.task == "chronox.ticks.day"]
    assert loads == [("quotes", "2024-01-02", ["TB"]), ("trades", "2024-01-02", ["TB"]),
                     ("trades", "2024-01-03", ["TA", "TB"]), ("trades", "2024-01-05", ["TA", "TB"])]
    chains = [s.task for s in steps if s.kwargs.get("symbol") == "TB"]
    assert chains == ["chronox.ticks.trades_gaps", "chronox.ticks.quotes_gaps", "chronox.phase.finalize"]


def test_gaps_lists_each_tick_datasets_missing_days(db_url):
    import json

    from click.testing import CliRunner

    from chronox.cli import cli

    engine = get_engine(db_url)
    registry.add_symbol(engine, "TGA", "trades")
    registry.add_symbol(engine, "TGB", "flatpack+trades+quotes")
    registry.add_symbol(engine, "TGC", "flatpack")
    days = [dt.date(2024, 1, 2), DAY, dt.date(2024, 1, 4), dt.date(2024, 1, 5)]
    with engine.begin() as conn:
        tick_store.cover(conn, "trades", days[0], {"TGA": 5, "TGB": 0}, "flatpack")  # no trades is covered too
        tick_store.cover(conn, "trades", days[2], {"TGA": 3}, "api")
        tick_store.cover(conn, "quotes", days[1], {"TGB": 9}, "flatpack")

    def gaps(*args: str) -> dict[str, list[str]]:
        result = CliRunner().invoke(cli, ["gaps", "--start", "2024-01-02", "--end", "2024-01-05", "--json", *args])
        assert result.exit_code == 0, result.output
        return {g["symbol"]: g["gaps"] for g in json.loads(result.output)}

    assert gaps("--dataset", "trades") == {"TGA": ["2024-01-03", "2024-01-05"],
                                           "TGB": ["2024-01-03", "2024-01-04", "2024-01-05"]}
    assert gaps("--dataset", "quotes") == {"TGB": ["2024-01-02", "2024-01-04", "2024-01-05"]}
    assert gaps("--dataset", "quotes", "TGA") == {"TGA": [d.isoformat() for d in days]}  # named: listed anyway
    # The bars' gaps do not see the ticks' coverage.
    assert gaps() == {"TGB": [d.isoformat() for d in days], "TGC": [d.isoformat() for d in days]}
    result = CliRunner().invoke(cli, ["gaps", "--dataset", "trades", "--start", "2024-01-02", "--end", "2024-01-05"])
    assert result.output.splitlines()[:2] == ["TGA: 2 gap day(s) in 2024-01-02..2024-01-05",
                                              "    window 2024-01-03..2024-01-03: 2024-01-03"]
    registry.add_symbol(engine, "BTC-USD", "flatpack", market="crypto")
    refused = CliRunner().invoke(cli, ["gaps", "--dataset", "trades", "BTC-USD", "--end", "2024-01-05"])
    assert refused.exit_code != 0
    assert "no trades are kept for BTC-USD (US stocks from Polygon only)" in refused.output
    assert "Traceback" not in refused.output
    unknown = CliRunner().invoke(cli, ["gaps", "--dataset", "ticks"])
    assert unknown.exit_code == 2 and "'ticks' is not one of 'bars', 'trades', 'quotes'" in unknown.output


def test_without_a_provider_the_tick_rest_steps_are_left_out(sqlite_url, flatfiles):
    registry.add_symbol(get_engine(sqlite_url), "TA", "trades")
    from chronox.runner import inline_steps

    steps = inline_steps(plan_run(load_settings(), start="2024-01-02", end="2024-01-03"))
    assert [s.task for s in steps] == ["chronox.phase.begin", "chronox.phase.finalize"]
    assert steps[0].kwargs["rest_skipped"] == ["TA"]


def test_the_stand_in_answers_in_polygons_format(polygon: FakePolygonRest):
    polygon.add_quotes("AAPL", ex.QUOTES_CLIENT["results"])
    from polygon import RESTClient

    client = RESTClient(KEY, base=polygon.base_url, retries=0)
    quotes = list(client.list_quotes("AAPL", timestamp="2022-05-10", limit=4))
    assert [q.sequence_number for q in quotes] == [r["sequence_number"] for r in ex.QUOTES_CLIENT["results"]]
    assert (quotes[0].ask_price, quotes[0].bid_exchange, quotes[0].tape) == (155.87, 19, 3)
