"""Day loads on PostgreSQL (COPY) and SQLite: exact rows, idempotent reloads, atomicity."""
import datetime as dt
import gzip

import pytest
from sqlalchemy import event, text

from chronox import registry
from chronox.backfill import load_day, load_flat_day
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.settings import load_settings
from chronox.sources.flatfiles import DayFileReader, FlatFileError, relative_path
from chronox.store import OHLCV
from tests.helpers import count, rows_by_symbol_day, write_days

DAY = dt.date(2024, 1, 2)


def test_load_then_reload_leaves_exactly_the_same_rows(db_url, flatfiles):
    expected = write_days(flatfiles, [DAY], ["AAPL", "MSFT", "SPY"])
    settings = load_settings()
    first = load_day(settings, DAY.isoformat(), ["AAPL", "MSFT"])
    assert first["rows"] == expected[("AAPL", DAY)] + expected[("MSFT", DAY)]
    snapshot = count(db_url, "SELECT count(*) FROM ohlcv_1m"), rows_by_symbol_day(db_url)
    with get_engine(db_url).connect() as conn:
        before = conn.execute(text("SELECT symbol, ts, open, high, low, close, volume, transactions, source "
                                   "FROM ohlcv_1m ORDER BY symbol, ts")).all()
    load_day(settings, DAY.isoformat(), ["AAPL", "MSFT"])
    with get_engine(db_url).connect() as conn:
        after = conn.execute(text("SELECT symbol, ts, open, high, low, close, volume, transactions, source "
                                  "FROM ohlcv_1m ORDER BY symbol, ts")).all()
    assert after == before
    assert snapshot == (count(db_url, "SELECT count(*) FROM ohlcv_1m"), rows_by_symbol_day(db_url))
    assert rows_by_symbol_day(db_url) == {("AAPL", "2024-01-02"): expected[("AAPL", DAY)],
                                          ("MSFT", "2024-01-02"): expected[("MSFT", DAY)]}
    assert count(db_url, "SELECT count(*) FROM coverage WHERE trading_day = :d", d=DAY) == 2
    assert count(db_url, "SELECT sum(rows) FROM coverage") == first["rows"]
    assert count(db_url, "SELECT count(*) FROM ohlcv_1m WHERE source <> 'flatpack'") == 0


def test_a_symbol_absent_from_the_file_still_covers_the_day(db_url, flatfiles):
    write_days(flatfiles, [DAY], ["AAPL"])
    load_day(load_settings(), DAY.isoformat(), ["AAPL", "QQQ"])
    assert count(db_url, "SELECT rows FROM coverage WHERE symbol = 'QQQ'") == 0
    assert count(db_url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = 'QQQ'") == 0


def test_flat_file_replaces_rest_bars_of_the_same_day(db_url, flatfiles):
    expected = write_days(flatfiles, [DAY], ["AAPL"])
    with get_engine(db_url).begin() as conn:
        # 05:00 New York, a pre-market minute the sample file has no trade in
        conn.execute(OHLCV.insert().values(symbol="AAPL", ts=dt.datetime(2024, 1, 2, 10, 0, 30, tzinfo=dt.UTC),
                                           open=1, high=1, low=1, close=1, volume=1, source="api"))
        conn.execute(text("INSERT INTO coverage (symbol, trading_day, source, rows) VALUES ('AAPL', :d, 'api', 1)"),
                     {"d": DAY})
    load_day(load_settings(), DAY.isoformat(), ["AAPL"])
    assert count(db_url, "SELECT count(*) FROM ohlcv_1m WHERE source = 'api'") == 0
    assert count(db_url, "SELECT count(*) FROM ohlcv_1m") == expected[("AAPL", DAY)]
    # coverage follows the bars: only the flat file's row is left
    assert count(db_url, "SELECT count(*) FROM coverage") == 1
    assert count(db_url, "SELECT rows FROM coverage WHERE source = 'flatpack'") == expected[("AAPL", DAY)]


def test_truncated_file_commits_nothing_and_marks_the_symbols(db_url, flatfiles):
    write_days(flatfiles, [DAY], ["AAPL", "MSFT"])
    engine = get_engine(db_url)
    for s in ("AAPL", "MSFT"):
        registry.add_symbol(engine, s, "flatpack")
    load_day(load_settings(), DAY.isoformat(), ["AAPL", "MSFT"])
    loaded = count(db_url, "SELECT count(*) FROM ohlcv_1m")
    path = flatfiles / relative_path(DAY)
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * 0.7)])
    result = load_day(load_settings(), DAY.isoformat(), ["AAPL", "MSFT"])
    assert "corrupt or truncated gzip" in result["error"]
    # the earlier complete load is untouched: the failed reload rolled back its DELETE too
    assert count(db_url, "SELECT count(*) FROM ohlcv_1m") == loaded
    assert count(db_url, "SELECT count(*) FROM quarantine WHERE reason LIKE '%truncated gzip%'") == 1
    assert registry.get_symbol(engine, "AAPL").status == "error"
    assert "truncated gzip" in registry.get_symbol(engine, "MSFT").error_message


def test_truncated_file_on_first_load_leaves_no_rows(db_url, flatfiles):
    write_days(flatfiles, [DAY], ["AAPL"])
    path = flatfiles / relative_path(DAY)
    path.write_bytes(path.read_bytes()[:-200])
    engine = get_engine(db_url)
    with open(path, "rb") as raw:
        reader = DayFileReader(raw, DAY, ["AAPL"], str(path))
        with pytest.raises(FlatFileError):
            load_flat_day(Delivery(load_settings(), engine), reader, ["AAPL"])
    assert reader.stats.rows_read > 100  # rows were read and sent before the failure...
    assert count(db_url, "SELECT count(*) FROM ohlcv_1m") == 0  # ...and none were committed
    assert count(db_url, "SELECT count(*) FROM coverage") == 0


def test_bad_rows_land_in_quarantine_with_reasons(db_url, flatfiles):
    from chronox.calendar import day_bounds_utc

    start_ns = int(day_bounds_utc(DAY)[0].timestamp()) * 10**9
    lines = ["ticker,volume,open,close,high,low,window_start,transactions",
             f"AAPL,100,10,10,10,10,{start_ns + 600 * 60 * 10**9},5",
             f"AAPL,100,10,10,9,9,{start_ns + 601 * 60 * 10**9},5",
             f"AAPL,100,10,10,10,10,{(start_ns + 602 * 60 * 10**9) // 10**6},5"]
    path = flatfiles / relative_path(DAY)
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    result = load_day(load_settings(), DAY.isoformat(), ["AAPL"])
    assert (result["rows"], result["quarantined"]) == (1, 2)
    with get_engine(db_url).connect() as conn:
        reasons = sorted(r for (r,) in conn.execute(text("SELECT reason FROM quarantine WHERE symbol = 'AAPL'")))
    assert "below max(open, close)" in reasons[0] and "epoch nanoseconds" in reasons[1]


def test_postgres_day_load_uses_copy_not_inserts(pg_url, flatfiles):
    expected = write_days(flatfiles, [DAY], ["AAPL"])
    statements = []
    engine = get_engine(pg_url)

    def spy(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", spy)
    try:
        load_day(load_settings(), DAY.isoformat(), ["AAPL"])
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert not [s for s in statements if "INSERT INTO ohlcv_1m" in s]
    assert count(pg_url, "SELECT count(*) FROM ohlcv_1m") == expected[("AAPL", DAY)]


def _bar(ts_minute, source, price):
    from chronox.bars import Bar

    ts = dt.datetime(2024, 1, 2, 15, 0, tzinfo=dt.UTC) + dt.timedelta(minutes=ts_minute)
    return Bar("AAPL", ts, price, price, price, price, 10.0, price, 3, source)


def upsert_bars(engine, bars):
    from chronox.store import upsert_bars as upsert

    with engine.begin() as conn:
        return upsert(conn, bars)


def test_upsert_bars_respects_source_precedence(db_url):
    engine = get_engine(db_url)
    assert upsert_bars(engine, [_bar(0, "flatpack", 10.0), _bar(1, "stream", 20.0)]) == 2
    # api never overwrites flatpack, but does replace stream; snapshot fills a hole only
    upsert_bars(engine, [_bar(0, "api", 11.0), _bar(1, "api", 21.0), _bar(2, "snapshot", 30.0)])
    upsert_bars(engine, [_bar(1, "stream", 22.0), _bar(2, "snapshot", 31.0)])
    with engine.connect() as conn:
        got = conn.execute(text("SELECT open, source FROM ohlcv_1m ORDER BY ts")).all()
    assert [tuple(r) for r in got] == [(10.0, "flatpack"), (21.0, "api"), (31.0, "snapshot")]


def test_postgres_reload_rewrites_only_changed_symbols(pg_url, flatfiles):
    expected = write_days(flatfiles, [DAY], ["AAPL", "MSFT"])
    settings = load_settings()
    load_day(settings, DAY.isoformat(), ["AAPL", "MSFT", "IBM"])
    with get_engine(pg_url).begin() as conn:
        # an extra bar (as if from another source) and a changed price: both must be undone
        conn.execute(text("UPDATE ohlcv_1m SET close = close + 1 WHERE symbol = 'MSFT' AND ts = "
                          "(SELECT min(ts) FROM ohlcv_1m WHERE symbol = 'MSFT')"))
        conn.execute(OHLCV.insert().values(symbol="IBM", ts=dt.datetime(2024, 1, 2, 15, 0, tzinfo=dt.UTC),
                                           open=1, high=1, low=1, close=1, volume=1, source="api"))
        xmin_aapl = conn.execute(text("SELECT max(xmin::text::bigint) FROM ohlcv_1m WHERE symbol = 'AAPL'")).scalar()
    load_day(settings, DAY.isoformat(), ["AAPL", "MSFT", "IBM"])
    assert rows_by_symbol_day(pg_url) == {("AAPL", "2024-01-02"): expected[("AAPL", DAY)],
                                          ("MSFT", "2024-01-02"): expected[("MSFT", DAY)]}
    with get_engine(pg_url).connect() as conn:
        # unchanged AAPL rows were not rewritten (same row versions)
        xmin_now = conn.execute(text("SELECT max(xmin::text::bigint) FROM ohlcv_1m WHERE symbol = 'AAPL'")).scalar()
        assert xmin_now == xmin_aapl
    from chronox.sample import day_rows

    first_msft = min((r for r in day_rows(DAY, ["AAPL", "MSFT"]) if r[0] == "MSFT"), key=lambda r: r[6])
    with get_engine(pg_url).connect() as conn:
        close = conn.execute(text("SELECT close FROM ohlcv_1m WHERE symbol = 'MSFT' ORDER BY ts LIMIT 1")).scalar()
    assert close == first_msft[3]


def test_upsert_bars_keeps_the_best_of_duplicates_within_a_batch(db_url):
    engine = get_engine(db_url)
    upsert_bars(engine, [_bar(0, "stream", 1.0), _bar(0, "stream", 2.0), _bar(1, "api", 5.0), _bar(1, "stream", 6.0)])
    with engine.connect() as conn:
        got = conn.execute(text("SELECT open, source FROM ohlcv_1m ORDER BY ts")).all()
    assert [tuple(r) for r in got] == [(2.0, "stream"), (5.0, "api")]
