"""Gap detection on the NYSE calendar and the api phase that fills gaps from REST, in-process,
on SQLite and PostgreSQL, against the Polygon stand-in and the mock Kafka broker."""
import datetime as dt
import json
import threading
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from chronox import registry
from chronox.backfill import load_day, plan_run
from chronox.bars import UTC
from chronox.calendar import NEW_YORK, day_bounds_utc
from chronox.cli import cli
from chronox.db import get_engine
from chronox.gaps import fill_window, find_gaps, last_complete_day, windows
from chronox.runner import inline_steps, run_inline
from chronox.settings import load_settings
from tests.helpers import count, polygon_minute_bars, rows_by_symbol_day, serve_days, write_days

pytestmark = pytest.mark.timeout(120)

D = dt.date
# 2024-11-28 Thanksgiving (closed), 2024-11-29 early close (13:00, after-hours to 17:00)
WINDOW = [D(2024, 11, 22), D(2024, 11, 25), D(2024, 11, 26), D(2024, 11, 27), D(2024, 11, 29),
          D(2024, 12, 2), D(2024, 12, 3)]
FLAT_DAYS = [D(2024, 11, 22), D(2024, 11, 25), D(2024, 11, 27), D(2024, 12, 2)]
GAP_DAYS = [D(2024, 11, 26), D(2024, 11, 29), D(2024, 12, 3)]
SHIFT = 1000.0  # REST prices differ from the flat files', so every bar shows where it came from


def ny(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=NEW_YORK).astimezone(UTC)


def test_last_complete_day_waits_for_extended_hours_and_skips_holidays():
    assert last_complete_day(ny(2024, 11, 29, 16, 59)) == D(2024, 11, 27)  # Thanksgiving is no session
    assert last_complete_day(ny(2024, 11, 29, 17, 0)) == D(2024, 11, 29)  # early close: after-hours end 17:00
    assert last_complete_day(ny(2024, 12, 2, 19, 59)) == D(2024, 11, 29)
    assert last_complete_day(ny(2024, 12, 2, 20, 0)) == D(2024, 12, 2)


def test_windows_split_long_gaps_into_seven_day_pieces():
    december = [D(2024, 12, d) for d in (2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 16, 17, 18, 19, 20, 23, 24)]
    assert windows(december) == [(D(2024, 12, 2), D(2024, 12, 6)), (D(2024, 12, 9), D(2024, 12, 13)),
                                 (D(2024, 12, 16), D(2024, 12, 20)), (D(2024, 12, 23), D(2024, 12, 24))]
    # days with covered trading days between them are separate; a holiday between is not a break
    assert windows(GAP_DAYS) == [(d, d) for d in GAP_DAYS]
    assert windows([D(2024, 11, 27), D(2024, 11, 29)]) == [(D(2024, 11, 27), D(2024, 11, 29))]
    assert windows([]) == []


def test_gaps_are_exactly_the_missing_trading_days(rest_db, flatfiles):
    write_days(flatfiles, FLAT_DAYS, ["GAPS"])
    engine = get_engine(rest_db)
    registry.add_symbol(engine, "GAPS", "flatpack+api")
    registry.add_symbol(engine, "SNAPONLY", "snapshot")
    for day in FLAT_DAYS:
        load_day(load_settings(), day.isoformat(), ["GAPS"])
    registry.set_status(engine, ["GAPS"], "completed", last_backfill=D(2024, 11, 21))
    settings = load_settings()
    [found] = find_gaps(settings, end="2024-12-03", now=ny(2024, 12, 10, 12, 0))  # snapshot-only: no coverage to check
    assert (found.symbol, found.since, found.until, found.gaps) == ("GAPS", D(2024, 11, 22), D(2024, 12, 3), GAP_DAYS)
    # during the early-close session the day is not a gap yet, nor is any later day
    [during] = find_gaps(settings, ["GAPS"], "2024-11-22", "2024-12-03", now=ny(2024, 11, 29, 16, 0))
    assert (during.until, during.gaps) == (D(2024, 11, 27), [D(2024, 11, 26)])
    result = CliRunner().invoke(cli, ["gaps", "GAPS", "--start", "2024-11-25", "--end", "2024-11-29", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"symbol": "GAPS", "since": "2024-11-25", "until": "2024-11-29",
                                          "gaps": ["2024-11-26", "2024-11-29"],
                                          "windows": [["2024-11-26", "2024-11-26"], ["2024-11-29", "2024-11-29"]]}]
    result = CliRunner().invoke(cli, ["gaps", "GAPS", "--start", "2024-11-22", "--end", "2024-12-03"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["GAPS: 3 gap day(s) in 2024-11-22..2024-12-03",
                                          "    window 2024-11-26..2024-11-26: 2024-11-26",
                                          "    window 2024-11-29..2024-11-29: 2024-11-29",
                                          "    window 2024-12-03..2024-12-03: 2024-12-03"]
    result = CliRunner().invoke(cli, ["gaps", "GAPS", "--start", "2024-11-22", "--end", "2024-11-25"])
    assert result.output.splitlines() == ["GAPS: no gap day(s) in 2024-11-22..2024-11-25"]


def table(url: str, symbol: str) -> list[tuple]:
    with get_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT ts, open, high, low, close, volume, transactions, source FROM ohlcv_1m "
            "WHERE symbol = :s ORDER BY ts"), {"s": symbol})]


def sources_by_day(url: str, symbol: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ts, *_, source in table(url, symbol):
        if isinstance(ts, str):
            ts = dt.datetime.fromisoformat(ts)
        day = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(NEW_YORK).date().isoformat()
        out.setdefault(day, set()).add(source)
    return out


def run(symbol: str) -> list:
    plan = plan_run(load_settings(), symbols=[symbol], start="2024-11-22", end="2024-12-03")
    return run_inline(inline_steps(plan))


def test_api_phase_fills_the_gaps_and_a_rerun_adds_nothing(rest_db, flatfiles, polygon, kafka):
    symbol = "FILL" + rest_db[:2].upper()
    flat = write_days(flatfiles, FLAT_DAYS, [symbol])
    served = {d: serve_days(polygon, symbol, [d], SHIFT) for d in WINDOW}
    polygon.set_ticker_details(symbol, {})
    engine = get_engine(rest_db)
    registry.add_symbol(engine, symbol, "flatpack+api")

    results = run(symbol)
    assert not [r for r in results if isinstance(r, dict) and r.get("error")], results
    expected = {(symbol, d.isoformat()): flat[(symbol, d)] for d in FLAT_DAYS}
    expected.update({(symbol, d.isoformat()): served[d] for d in GAP_DAYS})
    assert rows_by_symbol_day(rest_db) == expected
    assert sources_by_day(rest_db, symbol) == {d.isoformat(): {"flatpack" if d in FLAT_DAYS else "api"}
                                               for d in WINDOW}
    # REST bars carry REST prices, flat-file days keep the file's prices
    prices = {row[7]: set() for row in table(rest_db, symbol)}
    for row in table(rest_db, symbol):
        prices[row[7]].add(row[1] > SHIFT)
    assert prices == {"flatpack": {False}, "api": {True}}
    aggs = [r for r in polygon.requests if r.path.startswith(f"/v2/aggs/ticker/{symbol}/range/1/minute")]
    assert len(aggs) == 3  # one task and one request per window; none for a flat-file day
    with engine.connect() as conn:
        coverage = set(conn.execute(text("SELECT trading_day, source, rows FROM coverage WHERE symbol = :s"),
                                    {"s": symbol}))
    coverage = {(d if isinstance(d, dt.date) else D.fromisoformat(d), s, n) for d, s, n in coverage}
    assert coverage == {(d, "flatpack", flat[(symbol, d)]) for d in FLAT_DAYS} | \
        {(d, "api", served[d]) for d in GAP_DAYS}
    row = registry.get_symbol(engine, symbol)
    assert (row.status, row.last_backfill, row.error_message) == ("completed", D(2024, 12, 3), None)
    envelopes = kafka.json_messages(f"chronox.backfill.{symbol}", timeout_ms=1500)
    api_bars = [e for e in envelopes if e["event"] == "bar" and e["source"] == "api" and e["tf"] == "1m"]
    assert len(api_bars) == sum(served[d] for d in GAP_DAYS)
    assert all(e["ohlcv"]["open"] > SHIFT for e in api_bars)

    before, requests = table(rest_db, symbol), polygon.count_requests("/v2/aggs/ticker")
    run(symbol)
    assert table(rest_db, symbol) == before
    assert polygon.count_requests("/v2/aggs/ticker") == requests + 1  # only the daily bars again


def test_a_flat_file_load_replaces_rest_bars_of_its_day(rest_db, flatfiles, polygon):
    day = D(2024, 11, 26)
    served = serve_days(polygon, "PREC", [day], SHIFT)
    registry.add_symbol(get_engine(rest_db), "PREC", "api")
    assert fill_window(load_settings(), "PREC", day.isoformat(), day.isoformat())["rows"] == served
    assert sources_by_day(rest_db, "PREC") == {day.isoformat(): {"api"}}
    flat = write_days(flatfiles, [day], ["PREC"])
    load_day(load_settings(), day.isoformat(), ["PREC"])
    rows = table(rest_db, "PREC")
    assert len(rows) == flat[("PREC", day)] and {r[7] for r in rows} == {"flatpack"}
    assert max(r[1] for r in rows) < SHIFT


def test_rest_bars_never_land_in_a_day_a_flat_file_loaded_meanwhile(rest_db, flatfiles, polygon):
    days = [D(2024, 11, 25), D(2024, 11, 26)]
    served = {d: serve_days(polygon, "RACE", [d], SHIFT) for d in days}
    flat = write_days(flatfiles, [days[0]], ["RACE"])
    registry.add_symbol(get_engine(rest_db), "RACE", "flatpack+api")
    polygon.inject("/v2/aggs", "slow", delay=1.5)  # the flat file loads while REST answers
    outcome = {}
    filler = threading.Thread(target=lambda: outcome.update(
        fill_window(load_settings(), "RACE", days[0].isoformat(), days[1].isoformat())))
    filler.start()
    deadline = time.monotonic() + 10
    while not polygon.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    # the window was requested for both days, and the answer is still on its way
    start_ms = int(day_bounds_utc(days[0])[0].timestamp() * 1000)
    assert polygon.requests[0].path.split("/")[-2] == str(start_ms) and polygon.requests[0].status is None
    load_day(load_settings(), days[0].isoformat(), ["RACE"])
    filler.join(timeout=30)
    assert outcome["days"] == 1 and outcome["rows"] == served[days[1]]
    assert sources_by_day(rest_db, "RACE") == {days[0].isoformat(): {"flatpack"}, days[1].isoformat(): {"api"}}
    assert rows_by_symbol_day(rest_db) == {("RACE", days[0].isoformat()): flat[("RACE", days[0])],
                                           ("RACE", days[1].isoformat()): served[days[1]]}


def test_a_day_filled_at_1630_stays_a_gap_until_the_flat_file_replaces_it(rest_db, flatfiles, polygon, kafka):
    """daily_historical's REST fill of the day just closed is not the day's final data: the
    after-hours are still trading, so the day stays a gap, and the scan after it loads the
    day file over the REST bars."""
    from chronox.scheduling import gap_scan

    day = D(2024, 12, 3)
    engine = get_engine(rest_db)
    registry.add_symbol(engine, "LATE", "flatpack+api")
    registry.set_status(engine, ["LATE"], "completed", last_backfill=day - dt.timedelta(days=1))
    cut_ms = ny(2024, 12, 3, 16, 30).timestamp() * 1000
    until_1630 = [b for b in polygon_minute_bars(day, "LATE", SHIFT) if b["t"] < cut_ms]
    polygon.add_minute_bars("LATE", until_1630)
    filled = fill_window(load_settings(), "LATE", day.isoformat(), day.isoformat(), now=ny(2024, 12, 3, 16, 30))
    assert (filled["rows"], filled["open_days"]) == (len(until_1630), [day.isoformat()])
    assert sources_by_day(rest_db, "LATE") == {day.isoformat(): {"api"}}
    assert count(rest_db, "SELECT count(*) FROM coverage WHERE symbol = 'LATE'") == 0
    [found] = find_gaps(load_settings(), ["LATE"], day.isoformat(), day.isoformat(), now=ny(2024, 12, 4, 12, 0))
    assert found.gaps == [day]

    flat = write_days(flatfiles, [day], ["LATE"])
    [dispatch] = gap_scan(load_settings(), now=ny(2024, 12, 4, 19, 5))["dispatch"]
    assert (dispatch["symbol"], dispatch["start"], dispatch["end"]) == ("LATE", day.isoformat(), day.isoformat())
    run_inline(inline_steps(plan_run(load_settings(), symbols=["LATE"], start=day.isoformat(),
                                     end=day.isoformat())))
    rows = table(rest_db, "LATE")
    assert len(rows) == flat[("LATE", day)] > len(until_1630) and {r[7] for r in rows} == {"flatpack"}
    assert max(r[1] for r in rows) < SHIFT  # no REST bar is left in the day


def test_a_rest_filled_day_is_a_gap_again_once_its_day_file_is_published(rest_db, flatfiles, polygon):
    day, settings = D(2024, 12, 2), load_settings()
    serve_days(polygon, "SUPER", [day], SHIFT)
    engine = get_engine(rest_db)
    registry.add_symbol(engine, "SUPER", "flatpack+api")
    registry.add_symbol(engine, "APIONLY", "api")
    served = serve_days(polygon, "APIONLY", [day], SHIFT)
    for symbol in ("SUPER", "APIONLY"):
        assert fill_window(settings, symbol, day.isoformat(), day.isoformat())["days"] == 1
    # what finalize stamps after the fill: the next windows start the day after
    registry.set_status(engine, ["SUPER", "APIONLY"], "completed", last_backfill=day)
    later = ny(2024, 12, 5, 12, 0)
    assert {g.symbol: g.gaps for g in find_gaps(settings, end="2024-12-04", now=later)} == \
        {"SUPER": [D(2024, 12, 3), D(2024, 12, 4)], "APIONLY": [D(2024, 12, 3), D(2024, 12, 4)]}

    write_days(flatfiles, [day], ["SUPER", "APIONLY"])
    found = {g.symbol: g for g in find_gaps(settings, end="2024-12-04", now=later)}
    assert (found["SUPER"].gaps, found["SUPER"].superseded) == ([day, D(2024, 12, 3), D(2024, 12, 4)], [day])
    assert found["SUPER"].as_dict()["superseded"] == [day.isoformat()]
    assert (found["APIONLY"].gaps, found["APIONLY"].superseded) == ([D(2024, 12, 3), D(2024, 12, 4)], [])
    load_day(settings, day.isoformat(), ["SUPER"])  # what the run for the gap does
    assert sources_by_day(rest_db, "SUPER") == {day.isoformat(): {"flatpack"}}
    assert day not in next(g for g in find_gaps(settings, ["SUPER"], end="2024-12-04", now=later)).gaps
    assert count(rest_db, "SELECT count(*) FROM ohlcv_1m WHERE symbol = 'APIONLY'") == served  # REST's, kept
