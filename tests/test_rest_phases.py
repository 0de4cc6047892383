"""The REST phases in-process (the embedded default): flatpack's reference data, corporate
actions and daily bars; running without a key; the replay provider; snapshots stored,
cached, mirrored and published; retries and failures recorded on the registry."""
import datetime as dt
import json
import time

import pytest
import redis
from sqlalchemy import text

from chronox import registry
from chronox.backfill import plan_run
from chronox.completion import run_summary
from chronox.db import get_engine
from chronox.rest import SKIP_WARNING
from chronox.runner import inline_steps, run_inline
from chronox.settings import load_settings
from chronox.snapshot import refresh
from tests.helpers import KEY, count, polygon_daily_bar, rows_by_symbol_day, write_days

pytestmark = pytest.mark.timeout(120)

D = dt.date
DAYS = [D(2024, 1, 2), D(2024, 1, 3), D(2024, 1, 4)]


def run(symbols, start=DAYS[0], end=DAYS[-1]):
    plan = plan_run(load_settings(), symbols=symbols, start=start.isoformat(), end=end.isoformat())
    return run_inline(inline_steps(plan))


def rows(url, sql, **params):
    with get_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def as_date(value):
    return value if isinstance(value, dt.date) else D.fromisoformat(value)


def test_flatpack_loads_reference_actions_and_daily_bars_before_minute_bars(rest_db, flatfiles, polygon, kafka):
    symbol = "REF" + rest_db[:2].upper()
    flat = write_days(flatfiles, DAYS, [symbol])
    polygon.set_ticker_details(symbol, {"name": "Reference Corp.", "list_date": "1999-03-10",
                                        "primary_exchange": "XNYS", "sic_code": "3571"})
    polygon.add_dividends(symbol, [{"ex_dividend_date": "2023-11-10", "pay_date": "2023-11-16",
                                    "cash_amount": 0.24, "frequency": 4, "dividend_type": "CD"},
                                   {"ex_dividend_date": "2023-08-11", "cash_amount": 0.24}])
    polygon.add_splits(symbol, [{"execution_date": "2020-08-31", "split_from": 1, "split_to": 4}])
    polygon.add_daily_bars(symbol, [polygon_daily_bar(d, symbol) for d in DAYS])
    registry.add_symbol(get_engine(rest_db), symbol, "flatpack")
    for _ in range(2):  # a rerun leaves the same rows
        results = run([symbol])
        assert not [r for r in results if isinstance(r, dict) and r.get("error")], results
        [details] = rows(rest_db, "SELECT name, primary_exchange, list_date, raw FROM ticker_details")
        assert details[:3] == ("Reference Corp.", "XNYS", details[2]) and as_date(details[2]) == D(1999, 3, 10)
        assert json.loads(details[3])["sic_code"] == "3571"
        dividends = sorted((as_date(d), a)
                           for d, a in rows(rest_db, "SELECT ex_dividend_date, cash_amount FROM dividends"))
        assert dividends == [(D(2023, 8, 11), 0.24), (D(2023, 11, 10), 0.24)]
        assert rows(rest_db, "SELECT symbol, split_from, split_to FROM splits") == [(symbol, 1.0, 4.0)]
        daily = rows(rest_db, "SELECT day, open, close, volume, source FROM ohlcv_1d ORDER BY day")
        assert [(as_date(d), o, c, v, s) for d, o, c, v, s in daily] == \
            [(d, b["o"], b["c"], b["v"], "api") for d, b in ((d, polygon_daily_bar(d, symbol)) for d in DAYS)]
    assert rows_by_symbol_day(rest_db) == {(symbol, d.isoformat()): flat[(symbol, d)] for d in DAYS}
    row = registry.get_symbol(get_engine(rest_db), symbol)
    assert (row.status, row.error_message) == ("completed", None)
    daily_events = [e for e in kafka.json_messages(f"chronox.backfill.{symbol}", timeout_ms=1500)
                    if e.get("tf") == "1d"]
    assert len(daily_events) == 2 * len(DAYS)  # each run publishes its bars
    assert daily_events[0]["dedup_key"] == f"{symbol}|1d|2024-01-02T05:00:00Z"


def test_without_a_key_rest_steps_are_skipped_with_a_warning_and_flat_files_still_load(rest_db, flatfiles):
    flat = write_days(flatfiles, DAYS, ["NOKEY"])
    registry.add_symbol(get_engine(rest_db), "NOKEY", "flatpack+api+snapshot")
    plan = plan_run(load_settings(), symbols=["NOKEY"], start=DAYS[0].isoformat(), end=DAYS[-1].isoformat())
    steps = inline_steps(plan)
    # the REST steps are left out of the canvas, not run to say "skipped" one by one
    assert [s.task for s in steps] == ["chronox.phase.begin"] + ["chronox.phase.flatpack_day"] * 3 + \
        ["chronox.phase.finalize"]
    results = run_inline(steps)
    skipped = [r for r in results if isinstance(r, dict) and r.get("skipped")]
    assert [(r["step"], r["symbols"], r["skipped"]) for r in skipped] == [("REST steps", ["NOKEY"], SKIP_WARNING)]
    assert rows_by_symbol_day(rest_db) == {("NOKEY", d.isoformat()): flat[("NOKEY", d)] for d in DAYS}
    row = registry.get_symbol(get_engine(rest_db), "NOKEY")
    assert (row.status, row.last_backfill, row.error_message) == ("completed", dt.date(2024, 1, 4), SKIP_WARNING)
    info = run_summary(load_settings(), ["NOKEY"])["symbols"]["NOKEY"]
    assert (info["status"], info["error"], info["warning"]) == ("completed", None, SKIP_WARNING)
    assert count(rest_db, "SELECT count(*) FROM ticker_details") == 0


def test_replay_provider_runs_the_api_and_snapshot_phases_offline(rest_db, flatfiles, monkeypatch, redis_url):
    monkeypatch.setenv("CHRONOX_PROVIDER", "replay")
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    flat = write_days(flatfiles, DAYS, ["RPLA", "RPLB"])
    engine = get_engine(rest_db)
    registry.add_symbol(engine, "RPLA", "api+snapshot")
    registry.add_symbol(engine, "RPLB", "flatpack")
    results = run(["RPLA", "RPLB"])
    assert not [r for r in results if isinstance(r, dict) and (r.get("error") or r.get("skipped"))], results
    assert rows_by_symbol_day(rest_db) == {(s, d.isoformat()): flat[(s, d)] for s in ("RPLA", "RPLB") for d in DAYS}
    assert rows(rest_db, "SELECT DISTINCT source FROM ohlcv_1m WHERE symbol = 'RPLA'") == [("api",)]
    assert count(rest_db, "SELECT count(*) FROM ohlcv_1d WHERE symbol = 'RPLB'") == 3
    assert "replay" in rows(rest_db, "SELECT name FROM ticker_details")[0][0]
    [(price, ts)] = rows(rest_db, "SELECT price, ts FROM snapshot_latest WHERE symbol = 'RPLA'")
    from chronox.sample import day_rows

    last = max((r for r in day_rows(DAYS[-1], ["RPLA"])), key=lambda r: r[6])
    assert price == last[3]
    cached = json.loads(redis.Redis.from_url(redis_url).get("latest_price:RPLA"))
    assert (cached["price"], cached["method"], cached["event"]) == (last[3], "snapshot", "snapshot")
    for symbol in ("RPLA", "RPLB"):
        assert registry.get_symbol(engine, symbol).status == "completed"
    # a day without a file is not answered as "no trades": it stays a gap
    from chronox.gaps import fill_window
    from chronox.sources.base import ProviderError

    with pytest.raises(ProviderError, match="replay provider has no day file for 2024-01-05"):
        fill_window(load_settings(), "RPLA", "2024-01-05", "2024-01-05")
    assert count(rest_db, "SELECT count(*) FROM coverage WHERE trading_day > '2024-01-04'") == 0


@pytest.mark.parametrize("method", ["snapshot", "agg", "rest"])
def test_snapshot_is_stored_cached_mirrored_published_and_stamped(rest_pg, polygon, kafka, redis_url, monkeypatch,
                                                                  method):
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    symbol = f"SN{method[:2].upper()}"
    now_ms = int(time.time() * 1000) // 60_000 * 60_000
    polygon.add_minute_bars(symbol, [{"t": now_ms - 120_000, "o": 10, "h": 11, "l": 9, "c": 10.5, "v": 300},
                                     {"t": now_ms - 60_000, "o": 10.5, "h": 12, "l": 10, "c": 11.75, "v": 200}])
    registry.add_symbol(get_engine(rest_pg), symbol, "snapshot")
    subscriber = redis.Redis.from_url(redis_url).pubsub()
    subscriber.subscribe(f"chronox.snapshot.{symbol}")
    subscriber.get_message(timeout=1)
    before = dt.datetime.now(dt.UTC)
    outcome = refresh(load_settings(), [symbol], method)
    assert (outcome["stored"], outcome["missing"], outcome["method"]) == (1, [], method)
    [(price, ts, stored_method)] = rows(rest_pg, "SELECT price, ts, method FROM snapshot_latest")
    assert (price, stored_method) == (11.75, method)
    assert ts == dt.datetime.fromtimestamp((now_ms - 60_000) / 1000, dt.UTC)
    client = redis.Redis.from_url(redis_url)
    event = json.loads(client.get(f"latest_price:{symbol}"))
    assert 0 < client.ttl(f"latest_price:{symbol}") <= 60
    assert {k: event[k] for k in ("event", "symbol", "price", "source", "version", "method")} == \
        {"event": "snapshot", "symbol": symbol, "price": 11.75, "source": "snapshot", "version": "v1", "method": method}
    mirrored = subscriber.get_message(timeout=5)
    assert json.loads(mirrored["data"]) == event
    assert kafka.json_messages(f"chronox.snapshot.{symbol}", timeout_ms=1500) == [event]
    stamped = registry.get_symbol(get_engine(rest_pg), symbol).last_snapshot
    assert before <= stamped <= dt.datetime.now(dt.UTC)
    expected_path = {"snapshot": "/v2/snapshot/locale/us/markets/stocks/tickers",
                     "agg": f"/v2/aggs/ticker/{symbol}/range/1/minute", "rest": f"/v2/last/trade/{symbol}"}
    assert [r.path.startswith(expected_path[method]) for r in polygon.requests] == [True]


def test_many_symbols_are_refreshed_with_batched_all_ticker_snapshots(rest_pg, polygon):
    symbols = [f"B{i:04d}" for i in range(600)]
    for i, s in enumerate(symbols[:-3]):  # the last three have no data
        polygon.set_snapshot(s, price=10 + i, volume=100, updated_ns=1_704_207_600_000_000_000)
    engine = get_engine(rest_pg)
    for s in symbols:
        registry.add_symbol(engine, s, "snapshot")
    outcome = refresh(load_settings(), symbols, "snapshot")
    assert (outcome["stored"], outcome["missing"]) == (597, symbols[-3:])
    batches = [r.query["tickers"].split(",") for r in polygon.requests]
    assert [len(b) for b in batches] == [250, 250, 100] and sum(batches, []) == symbols
    assert count(rest_pg, "SELECT count(*) FROM snapshot_latest") == 597
    assert count(rest_pg, "SELECT count(*) FROM symbol_registry WHERE last_snapshot IS NOT NULL") == 597
    assert rows(rest_pg, "SELECT price FROM snapshot_latest WHERE symbol = 'B0123'") == [(133.0,)]


def test_transient_error_is_retried_after_retry_after_then_succeeds(rest_db, polygon):
    polygon.set_snapshot("RETRY", price=5.5, volume=1, updated_ns=1_704_207_600_000_000_000)
    registry.add_symbol(get_engine(rest_db), "RETRY", "snapshot")
    polygon.inject("/v2/snapshot", "429", retry_after=1)
    polygon.inject("/v2/snapshot", "503")
    from chronox.tasks.rest import snapshot_phase

    result = snapshot_phase.apply(kwargs={"symbol": "RETRY"})
    assert result.successful() and result.result["stored"] == 1
    times = [r.time for r in polygon.requests]
    assert [r.status for r in polygon.requests] == [429, 503, 200]
    assert times[1] - times[0] >= 1.0  # Retry-After honoured
    assert rows(rest_db, "SELECT price FROM snapshot_latest") == [(5.5,)]


def test_permanent_errors_fail_with_a_clear_message_on_the_registry(rest_db, flatfiles, polygon, monkeypatch):
    flat = write_days(flatfiles, DAYS[:1], ["PERMA", "PERMB"])
    polygon.set_ticker_details("PERMB", {})
    engine = get_engine(rest_db)
    registry.add_symbol(engine, "PERMA", "flatpack")  # no ticker details: Polygon answers 404
    registry.add_symbol(engine, "PERMB", "flatpack+api")
    polygon.inject("/v2/aggs/ticker/PERMB/range/1/minute", "malformed")
    results = run(["PERMA", "PERMB"], DAYS[0], DAYS[1])
    errors = {r["task"] if "task" in r else "soft": r["error"]
              for r in results if isinstance(r, dict) and r.get("error")}
    assert set(errors) == {"soft", "chronox.rest.api_gaps"}
    a, b = registry.get_symbol(engine, "PERMA"), registry.get_symbol(engine, "PERMB")
    assert a.status == "error" and a.error_message.startswith(
        "chronox.rest.reference failed: PolygonError: Polygon answered 404 (Ticker not found.) for "
        "/v3/reference/tickers/PERMA")
    # in-process, the window's failure also fails the api phase task that ran it
    assert b.status == "error" and b.error_message.startswith("chronox.rest.api_")
    assert "failed: PolygonError: malformed response to minute aggregates of PERMB" in b.error_message
    # the shared day load went on for both symbols
    assert rows_by_symbol_day(rest_db) == {(s, DAYS[0].isoformat()): flat[(s, DAYS[0])] for s in ("PERMA", "PERMB")}
    assert KEY not in json.dumps(results) + a.error_message + b.error_message


def test_documented_polygon_answers_are_stored(rest_db, flatfiles, polygon):
    """Polygon's documented examples, served as published (dividends and splits without `id`,
    as in its docs until 2024): every row stored, and a rerun keeps the same rows and ids."""
    from chronox.testing import polygon_examples as ex

    days = [D(2020, 1, 2), D(2020, 1, 3)]
    write_days(flatfiles, days, ["AAPL"])
    polygon.set_ticker_details("AAPL", ex.TICKER_DETAILS["results"])
    polygon.add_dividends("AAPL", ex.DIVIDENDS_2022["results"], assign_ids=False)
    polygon.add_splits("AAPL", ex.SPLITS_2022["results"], assign_ids=False)
    polygon.add_daily_bars("AAPL", ex.AGGS["results"])
    engine = get_engine(rest_db)
    registry.add_symbol(engine, "AAPL", "flatpack")
    stored = []
    for _ in range(2):
        results = run(["AAPL"], days[0], days[-1])
        assert not [r for r in results if isinstance(r, dict) and r.get("error")], results
        dividends = sorted((r[0], *map(as_date, r[1:5]), *r[5:]) for r in
                           rows(rest_db, "SELECT id, ex_dividend_date, record_date, pay_date, declaration_date, "
                                         "cash_amount, currency, frequency, dividend_type FROM dividends"))
        splits = sorted((i, as_date(e), f, t) for i, e, f, t in
                        rows(rest_db, "SELECT id, execution_date, split_from, split_to FROM splits"))
        stored.append((dividends, splits))
    assert stored[0] == stored[1]
    assert sorted(d[1:] for d in dividends) == [
        (D(2021, 8, 6), D(2021, 8, 9), D(2021, 8, 12), D(2021, 7, 27), 0.22, None, 4, "CD"),
        (D(2021, 11, 5), D(2021, 11, 8), D(2021, 11, 11), D(2021, 10, 28), 0.22, None, 4, "CD")]
    assert sorted(s[1:] for s in splits) == [(D(2005, 2, 28), 1.0, 2.0), (D(2020, 8, 31), 1.0, 4.0)]
    [details] = rows(rest_db, "SELECT name, market, primary_exchange, type, active, currency, list_date "
                              "FROM ticker_details WHERE symbol = 'AAPL'")
    assert details[:4] + (bool(details[4]), details[5], as_date(details[6])) == \
        ("Apple Inc.", "stocks", "XNAS", "CS", True, "usd", D(1980, 12, 12))
    daily = rows(rest_db, "SELECT day, open, high, low, close, volume, vwap, transactions FROM ohlcv_1d "
                          "WHERE symbol = 'AAPL' ORDER BY day")
    assert [(as_date(d), *rest) for d, *rest in daily] == [
        (D(2020, 1, 2), 74.06, 75.15, 73.7975, 75.0875, 135647456.0, 74.6099, 1),
        (D(2020, 1, 3), 74.2875, 75.145, 74.125, 74.3575, 146535512.0, 74.7026, 1)]
    # the documented all-tickers snapshot and last trade
    registry.add_symbol(engine, "BCAT", "snapshot")
    polygon.set_snapshot_record(ex.SNAPSHOT_2022["tickers"][0])
    polygon.set_last_trade_record("AAPL", ex.LAST_TRADE["results"])
    assert refresh(load_settings(), ["BCAT"], "snapshot")["stored"] == 1
    assert refresh(load_settings(), ["AAPL"], "rest")["stored"] == 1
    snapshots = {s: (as_utc(ts), price, volume, prev_close, method) for s, ts, price, volume, prev_close, method in
                 rows(rest_db, "SELECT symbol, ts, price, volume, prev_close, method FROM snapshot_latest")}
    assert snapshots == {
        "BCAT": (dt.datetime(2020, 11, 12, 14, 54, 54, 630916, tzinfo=dt.UTC), 20.506, 37216.0, 20.63, "snapshot"),
        "AAPL": (dt.datetime(2021, 4, 8, 17, 2, 22, 969834, tzinfo=dt.UTC), 129.8473, 25.0, None, "rest")}


def as_utc(value):
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
