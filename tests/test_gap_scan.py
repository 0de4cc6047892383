"""The set-based gap scan (one coverage query per market calendar) against gaps planted in
coverage rows of stocks (NYSE: weekends, holidays, early closes) and crypto (every UTC day)
symbols, on SQLite and PostgreSQL."""
import datetime as dt
import random

import pytest

from chronox import gaps, registry
from chronox.bars import UTC
from chronox.calendar import calendar_for
from chronox.db import get_engine
from chronox.gaps import find_gaps, missing_days, scan, symbol_gaps, windows
from chronox.settings import load_settings
from chronox.store import cover_days

pytestmark = pytest.mark.timeout(120)

D = dt.date
# Over a year boundary, Thanksgiving, Christmas, New Year and more than six 64-day words.
FIRST, LAST = D(2024, 1, 16), D(2025, 3, 10)
NOW = dt.datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
NEW_YORK_TODAY = NOW.date()

# symbol -> (market, last_backfill, planted missing days beyond the random ones)
SYMBOLS = {
    "GSA": ("stocks", None, [FIRST, D(2024, 11, 27), D(2024, 11, 29), D(2024, 12, 24), D(2024, 12, 26),
                             D(2025, 1, 2), LAST]),
    "GSB": ("stocks", D(2024, 6, 30), [D(2024, 7, 1), D(2024, 7, 3), D(2024, 7, 5)]),
    "GSC": ("stocks", None, "all"),  # never covered
    "GSD": ("stocks", None, []),  # only the random ones
    "BTC-USD": ("crypto", None, [D(2024, 2, 29), D(2024, 12, 30), D(2024, 12, 31), D(2025, 1, 1), LAST]),
    "ETH-USD": ("crypto", D(2024, 12, 31), [D(2025, 1, 1), D(2025, 2, 28)]),
}


@pytest.fixture
def planted(db_url):
    """Coverage of every symbol with its planted gaps and 2 % of its days missing at random;
    per symbol, the first day of its own window and every missing day."""
    engine = get_engine(db_url)
    rng = random.Random(16)
    expected = {}
    with engine.begin() as conn:
        for symbol, (market, last_backfill, planted_days) in SYMBOLS.items():
            registry.add_symbol(conn, symbol, "flatpack+api" if market == "stocks" else "api", market=market)
            days = calendar_for(market).trading_days(FIRST - dt.timedelta(days=20), LAST + dt.timedelta(days=5))
            if planted_days == "all":
                missing = set(days)
            else:
                missing = set(planted_days) | {d for d in days if rng.random() < 0.02}
            covered = [d for d in days if d not in missing]
            cover_days(conn, symbol, {d: 390 for d in covered}, "flatpack")
            # A second source on some days, and coverage of a day that is no session: neither may matter.
            cover_days(conn, symbol, {d: 5 for d in covered[::7]}, "api")
            if market == "stocks":
                cover_days(conn, symbol, {D(2024, 7, 6): 0, D(2024, 12, 25): 0}, "api")
            since = last_backfill + dt.timedelta(days=1) if last_backfill else FIRST
            expected[symbol] = (since, missing)
        cover_days(conn, "NOTASKED", {FIRST: 390}, "flatpack")  # no registered symbol: never reported
    for symbol, (_, last_backfill, _) in SYMBOLS.items():
        if last_backfill:
            registry.set_status(engine, [symbol], "completed", last_backfill=last_backfill)
    return expected


@pytest.mark.parametrize("named_in_query", [True, False], ids=["few-symbols", "many-symbols"])
def test_one_scan_finds_exactly_the_planted_gaps_on_each_calendar(planted, named_in_query, monkeypatch):
    if not named_in_query:  # the query a market's worth of symbols gets: every symbol's rows
        monkeypatch.setattr(gaps, "FEW_SYMBOLS", 0)
    settings = load_settings()
    # Named symbols from their last backfill (or --start), and the default: every backfilling symbol.
    named = find_gaps(settings, list(SYMBOLS), end=LAST.isoformat(), now=NOW)
    everyone = find_gaps(settings, start=FIRST.isoformat(), end=LAST.isoformat(), now=NOW)
    assert {g.symbol for g in everyone} == set(SYMBOLS)
    for g in named:
        since, missing = planted[g.symbol]
        if SYMBOLS[g.symbol][1] is None:
            since = settings.default_backfill_start(NEW_YORK_TODAY)
        assert (g.since, g.until) == (since, LAST)
        assert g.gaps == [d for d in calendar_for(g.market).trading_days(since, LAST) if d in missing], g.symbol
    for g in everyone:
        _, missing = planted[g.symbol]
        assert (g.since, g.until, g.market) == (FIRST, LAST, SYMBOLS[g.symbol][0])
        assert g.gaps == [d for d in calendar_for(g.market).trading_days(FIRST, LAST) if d in missing], g.symbol
        assert set(SYMBOLS[g.symbol][2]) <= set(g.gaps) or SYMBOLS[g.symbol][2] == "all"
    assert len(next(g for g in everyone if g.symbol == "GSA").gaps) > 7  # the random ones too
    assert next(g for g in everyone if g.symbol == "GSC").gaps == calendar_for("stocks").trading_days(FIRST, LAST)


def test_single_symbol_paths_and_windows_agree_with_the_scan(planted, db_url):
    settings = load_settings()
    with get_engine(db_url).connect() as conn:
        together = scan(conn, [(s, planted[s][0], LAST) for s in SYMBOLS if SYMBOLS[s][0] == "stocks"],
                        calendar_for("stocks"))
        for symbol, (market, _, _) in SYMBOLS.items():
            since, missing = planted[symbol]
            gaps = [d for d in calendar_for(market).trading_days(since, LAST) if d in missing]
            alone = missing_days(conn, symbol, since, LAST, calendar_for(market))
            assert alone == gaps, symbol
            if market == "stocks":
                assert together[symbol] == gaps
            found = symbol_gaps(settings, symbol, since, LAST, now=NOW, market=market)
            assert found.gaps == gaps
    # Crypto trades every day: the turn of the year is one window; on NYSE a holiday does not
    # break a window either, and a covered session between two gap days does.
    crypto = calendar_for("crypto")
    assert windows([D(2024, 12, 30), D(2024, 12, 31), D(2025, 1, 1)], calendar=crypto) == \
        [(D(2024, 12, 30), D(2025, 1, 1))]
    assert windows([D(2024, 12, 24), D(2024, 12, 26)]) == [(D(2024, 12, 24), D(2024, 12, 26))]
    assert windows([D(2024, 11, 27), D(2024, 12, 2)]) == [(D(2024, 11, 27), D(2024, 11, 27)),
                                                          (D(2024, 12, 2), D(2024, 12, 2))]
    assert windows([D(2024, 12, 31), D(2025, 1, 2), D(2025, 1, 3)]) == [(D(2024, 12, 31), D(2025, 1, 3))]
