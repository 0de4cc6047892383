"""coverage_days, the 64-day words the gap scan reads, stays the exact fold of `coverage`
whoever writes it: the loads' upserts, a day load replacing other sources, an operator's
DELETE or UPDATE, a TRUNCATE, and the migration that builds it from existing rows; on
SQLite (row triggers) and PostgreSQL (statement triggers with transition tables)."""
import datetime as dt
import random

import pytest
from sqlalchemy import text

from alembic import command
from chronox.calendar import NYSE
from chronox.db import alembic_config, get_engine, upgrade
from chronox.gaps import COVERAGE_EPOCH, REST_SOURCE, WORD, missing_days
from chronox.store import cover_day, cover_days

pytestmark = pytest.mark.timeout(180)

D = dt.date
SYMBOLS = ("AAA", "BBB", "CCC")
SOURCES = ("flatpack", REST_SOURCE, "stream")
# Days across word boundaries, bit 63 (the sign bit of a bigint) and the words before 1970.
DAYS = ([D(1969, 12, 1) + dt.timedelta(days=i) for i in range(0, 70, 3)]
        + [D(2024, 1, 1) + dt.timedelta(days=i) for i in range(200)])


def folded(conn) -> dict[tuple[str, int], tuple[int, int]]:
    """What coverage_days must hold, computed here from every coverage row."""
    out: dict[tuple[str, int], list[int]] = {}
    for symbol, day, source in conn.execute(text("SELECT symbol, trading_day, source FROM coverage")):
        day = day if isinstance(day, dt.date) else D.fromisoformat(day)
        number = (day - COVERAGE_EPOCH).days
        word = out.setdefault((symbol, number // WORD), [0, 0])
        word[0] |= 1 << number % WORD
        if source != REST_SOURCE:
            word[1] |= 1 << number % WORD
    return {key: (days, final) for key, (days, final) in out.items()}


def summary(conn) -> dict[tuple[str, int], tuple[int, int]]:
    """coverage_days as unsigned words; a word whose days all went (both zero) is no word."""
    mask = (1 << WORD) - 1
    rows = conn.execute(text("SELECT symbol, word, days, final_days FROM coverage_days")).all()
    return {(s, w): (d & mask, f & mask) for s, w, d, f in rows if d or f}


def random_step(conn, rng: random.Random) -> str:
    """One write to coverage, the way ChronoX or an operator makes it; returns what it was."""
    symbol, source = rng.choice(SYMBOLS), rng.choice(SOURCES)
    days = rng.sample(DAYS, rng.randint(1, 12))
    kind = rng.choice(["cover_days", "cover_day", "delete", "delete_range", "change_source", "move_day",
                       "row_counts"])
    if kind == "cover_days":
        cover_days(conn, symbol, {d: rng.randint(0, 390) for d in days}, source)
    elif kind == "cover_day":  # a day file: every symbol's row of the day, other sources' rows go
        cover_day(conn, days[0], {s: rng.randint(0, 390) for s in rng.sample(SYMBOLS, 2)}, source)
    elif kind == "delete":
        for day in days:
            conn.execute(text("DELETE FROM coverage WHERE symbol = :s AND trading_day = :d AND source = :src"),
                         {"s": symbol, "d": day, "src": source})
    elif kind == "delete_range":  # "delete those days so the next run loads them again"
        first, last = min(days[:2]), max(days[:2])
        conn.execute(text("DELETE FROM coverage WHERE symbol = :s AND trading_day BETWEEN :a AND :b"),
                     {"s": symbol, "a": first, "b": last})
    elif kind == "change_source":
        conn.execute(text("UPDATE coverage SET source = :new WHERE symbol = :s AND source = :old AND NOT EXISTS "
                          "(SELECT 1 FROM coverage c WHERE c.symbol = coverage.symbol "
                          "AND c.trading_day = coverage.trading_day AND c.source = :new)"),
                     {"s": symbol, "old": rng.choice(SOURCES), "new": source})
    elif kind == "move_day":
        day, later = days[0], days[-1]
        conn.execute(text("UPDATE coverage SET trading_day = :later WHERE symbol = :s AND trading_day = :d "
                          "AND NOT EXISTS (SELECT 1 FROM coverage c WHERE c.symbol = coverage.symbol "
                          "AND c.trading_day = :later AND c.source = coverage.source)"),
                     {"s": symbol, "d": day, "later": later})
    else:  # a reload's new row counts: keys unchanged
        conn.execute(text("UPDATE coverage SET rows = rows + 1 WHERE symbol = :s"), {"s": symbol})
    return kind


def test_the_words_are_the_fold_of_coverage_after_every_kind_of_write(db_url):
    rng = random.Random(12)
    engine = get_engine(db_url)
    seen: set[str] = set()
    for step in range(150):
        with engine.begin() as conn:
            kind = random_step(conn, rng)
            seen.add(kind)
            expected = folded(conn)
            assert summary(conn) == expected, f"after step {step} ({kind})"
    assert len(seen) == 7
    with engine.connect() as conn:
        assert len(folded(conn)) > 10  # the walk left coverage in several words of several symbols


def test_a_rolled_back_write_leaves_the_words_as_they_were(db_url):
    engine = get_engine(db_url)
    with engine.begin() as conn:
        cover_days(conn, "AAA", {D(2024, 1, 2): 390}, "flatpack")
        before = summary(conn)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        cover_days(conn, "AAA", {D(2024, 1, 3): 390}, "flatpack")
        conn.execute(text("DELETE FROM coverage WHERE trading_day = '2024-01-02'"))
        raise RuntimeError("the load failed")
    with engine.connect() as conn:
        assert summary(conn) == before == folded(conn)


def test_the_gap_scan_sees_an_operators_delete_and_a_day_file_replacing_rest(db_url):
    """End to end: the scan's answer moves with the rows, not with what a writer remembered."""
    engine = get_engine(db_url)
    days = NYSE.trading_days(D(2024, 3, 1), D(2024, 3, 28))
    with engine.begin() as conn:
        cover_days(conn, "AAA", {d: 390 for d in days}, REST_SOURCE)
        cover_day(conn, days[3], {"AAA": 390}, "flatpack")  # the day file replaces the api row
    with engine.begin() as conn:
        assert missing_days(conn, "AAA", days[0], days[-1]) == []
        conn.execute(text("DELETE FROM coverage WHERE symbol = 'AAA' AND trading_day IN (:a, :b)"),
                     {"a": days[3], "b": days[10]})
        assert missing_days(conn, "AAA", days[0], days[-1]) == [days[3], days[10]]
        assert (conn.execute(text("SELECT count(*) FROM coverage WHERE symbol = 'AAA'")).scalar_one()
                == len(days) - 2)


def test_truncating_coverage_empties_the_words(pg_url):
    engine = get_engine(pg_url)
    with engine.begin() as conn:
        cover_days(conn, "AAA", {D(2024, 1, 2): 390, D(2024, 6, 3): 1}, "flatpack")
        assert len(summary(conn)) == 2
        conn.execute(text("TRUNCATE coverage"))
        assert conn.execute(text("SELECT count(*) FROM coverage_days")).scalar_one() == 0


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_migration_builds_the_words_from_existing_coverage(dialect, tmp_path, pg_database):
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        upgrade(url, "0011")
    else:
        url = pg_database
        command.downgrade(alembic_config(url), "0011")
    try:
        rng = random.Random(5)
        rows = [{"s": s, "d": d, "src": src, "n": 1} for s in SYMBOLS for d in DAYS for src in SOURCES
                if rng.random() < 0.3]
        with get_engine(url).begin() as conn:
            conn.execute(text("DELETE FROM coverage"))
            conn.execute(text("INSERT INTO coverage (symbol, trading_day, source, rows) "
                              "VALUES (:s, :d, :src, :n)"), rows)
        upgrade(url)
        with get_engine(url).connect() as conn:
            expected = folded(conn)
            assert summary(conn) == expected
            assert len(expected) >= 6 and any(word < 0 for _, word in expected)  # words before 1970 too
    finally:
        upgrade(url)
        if dialect == "postgresql":
            with get_engine(url).begin() as conn:
                conn.execute(text("DELETE FROM coverage"))
