"""Hostile input at every door: day files, Polygon REST bodies, websocket frames and the
command line.

Every case must end in a clear error or in quarantined rows that carry a reason; the
worker never crashes, a broken file loads nothing, and every input row of a registered
symbol is either stored (with exactly its values) or quarantined, never dropped.
The property tests draw good rows and hostile rows together and check that accounting.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from chronox import registry
from chronox.backfill import load_day
from chronox.calendar import day_bounds_utc
from chronox.cli import _expand_variadic, cli
from chronox.db import get_engine
from chronox.gaps import fill_window
from chronox.rest import load_corporate_actions
from chronox.settings import load_settings
from chronox.snapshot import refresh
from chronox.sources.flatfiles import HEADER, relative_path
from chronox.sources.polygon import PolygonError, PolygonRest, TransientPolygonError
from chronox.stream.process import StreamProcess
from chronox.testing.polygon_ws import FakePolygonStream
from tests.conftest import REPO
from tests.helpers import KEY, count

pytestmark = pytest.mark.timeout(180)

UTC = dt.UTC
HYPOTHESIS = settings(max_examples=40, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                             HealthCheck.data_too_large])
BAR_TABLES = ("ohlcv_1m", "coverage", "quarantine")


def as_utc(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def query(url: str, sql: str, **params: Any) -> list[tuple]:
    with get_engine(url).connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params)]


def empty(url: str, tables: Sequence[str] = BAR_TABLES) -> None:
    with get_engine(url).begin() as conn:
        for table in tables:
            conn.execute(text(f"DELETE FROM {table}"))


def stored_bars(url: str) -> dict[tuple[str, dt.datetime], tuple]:
    rows = query(url, "SELECT symbol, ts, open, high, low, close, volume, vwap, transactions FROM ohlcv_1m")
    return {(symbol, as_utc(ts)): tuple(rest) for symbol, ts, *rest in rows}


def quarantined(url: str) -> list[tuple[str | None, str, str, str]]:
    return query(url, "SELECT symbol, origin, raw, reason FROM quarantine ORDER BY id")


def coverage(url: str) -> dict[str, int]:
    return dict(query(url, "SELECT symbol, rows FROM coverage"))


# == Day flat files ==========================================================================

DAY = dt.date(2024, 1, 2)
DAY2 = dt.date(2024, 1, 3)
SYMBOLS = ("AAPL", "BRK.B")  # registered; every other ticker in a file is someone else's
MINUTE_NS = 60 * 10**9
HEADER_LINE = ",".join(HEADER)
COLUMN = {name: i for i, name in enumerate(HEADER)}
PRICES = ("open", "close", "high", "low")


def day_start_ns(day: dt.date) -> int:
    return int(day_bounds_utc(day)[0].timestamp()) * 10**9


def minute_ts(day: dt.date, minute: int) -> dt.datetime:
    return day_bounds_utc(day)[0] + dt.timedelta(minutes=minute)


def write_day(root: Path, day: dt.date, lines: Iterable[str], header: str = HEADER_LINE) -> Path:
    """A gzip day file; undecodable bytes are written as surrogate-escaped characters."""
    path = root / relative_path(day)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join([header, *lines]) + "\n"
    path.write_bytes(gzip.compress(body.encode("utf-8", "surrogateescape")))
    return path


def row(symbol: str, minute: int, day: dt.date = DAY, *, open_: str = "10.0", close: str = "10.5",
        high: str = "11.0", low: str = "9.5", volume: str = "100", transactions: str = "7") -> list[str]:
    fields = [""] * len(HEADER)
    values = {"ticker": symbol, "volume": volume, "open": open_, "close": close, "high": high, "low": low,
              "window_start": str(day_start_ns(day) + minute * MINUTE_NS), "transactions": transactions}
    for name, value in values.items():
        fields[COLUMN[name]] = value
    return fields


def as_stored(fields: Sequence[str]) -> str:
    """How a quarantined row's raw text reads back: cut at 2000 characters, undecodable
    bytes and NULs escaped."""
    raw = ",".join(fields)
    if len(raw) > 2000:
        raw = raw[:2000] + f"...(+{len(raw) - 2000} chars)"
    return raw.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


@pytest.fixture
def registered(db_url: str) -> str:
    engine = get_engine(db_url)
    for symbol in SYMBOLS:
        registry.add_symbol(engine, symbol, "flatpack")
    return db_url


def good_file_bytes(day: dt.date) -> bytes:
    from chronox.sample import day_rows

    lines = [",".join(str(v) for v in r) for r in day_rows(day, [*SYMBOLS, "SPY"])]
    return gzip.compress(("\n".join([HEADER_LINE, *lines]) + "\n").encode())


def _trailing_garbage(good: bytes) -> bytes:
    return good + b"this is not a gzip member"


# name: (file bytes made from a good file's bytes, what the error must say)
BROKEN_FILES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated gzip": (lambda good: good[: len(good) * 2 // 3], "corrupt or truncated gzip after"),
    "gzip cut inside its header": (lambda good: good[:5], "corrupt or truncated gzip after 0 rows"),
    "random bytes": (lambda good: random.Random(7).randbytes(5000), "corrupt or truncated gzip"),
    "gzip magic then random bytes": (lambda good: b"\x1f\x8b\x08\x00" + random.Random(8).randbytes(5000),
                                     "corrupt or truncated gzip"),
    "trailing garbage after the last row": (_trailing_garbage, "corrupt or truncated gzip after"),
    "zero bytes": (lambda good: b"", "empty file, no header"),
    "empty gzip": (lambda good: gzip.compress(b""), "empty file, no header"),
    "gzip of random bytes": (lambda good: gzip.compress(random.Random(9).randbytes(5000)), "header lacks"),
    "wrong header": (lambda good: gzip.compress(b"symbol,vol,o,c,h,l,t,n\nAAPL,1,1,1,1,1,1,1\n"),
                     "header lacks ticker, volume, open, close, high, low, window_start, transactions"),
    "header missing a column": (
        lambda good: gzip.compress(gzip.decompress(good).replace(b",transactions\n", b"\n", 1)),
        "header lacks transactions"),
    "rows without a header": (lambda good: gzip.compress(gzip.decompress(good).split(b"\n", 1)[1]),
                              "header lacks"),
    "UTF-16 text": (lambda good: gzip.compress(gzip.decompress(good).decode().encode("utf-16")), "header lacks"),
}


@pytest.mark.parametrize("kind", BROKEN_FILES)
def test_a_broken_day_file_is_one_clear_error_and_loads_nothing(registered, flatfiles, kind):
    url = registered
    make, message = BROKEN_FILES[kind]
    settings = load_settings()
    # DAY was loaded before and its file broke since; DAY2's first load meets a broken file.
    for day in (DAY, DAY2):
        (flatfiles / relative_path(day)).parent.mkdir(parents=True, exist_ok=True)
        (flatfiles / relative_path(day)).write_bytes(good_file_bytes(day))
    assert "error" not in load_day(settings, DAY.isoformat(), list(SYMBOLS))
    before = stored_bars(url), coverage(url)
    assert before[0] and set(before[1]) == set(SYMBOLS)
    for day in (DAY, DAY2):
        path = flatfiles / relative_path(day)
        path.write_bytes(make(good_file_bytes(day)))
        result = load_day(settings, day.isoformat(), list(SYMBOLS))
        assert message in result["error"] and str(path) in result["error"], result
        assert "Traceback" not in result["error"] and "\n" not in result["error"]
        assert (result["rows"], result["symbols"]) == (0, len(SYMBOLS))
        records = [q for q in quarantined(url) if q[1] == str(path)]
        assert records == [(None, str(path), "", result["error"])]
        for symbol in SYMBOLS:
            row_ = registry.get_symbol(get_engine(url), symbol)
            assert (row_.status, row_.error_message) == ("error", result["error"])
    # Nothing of the broken files: DAY kept its earlier load exactly, DAY2 has no bar at all.
    assert (stored_bars(url), coverage(url)) == before
    assert count(url, "SELECT count(*) FROM coverage WHERE trading_day = :d", d=DAY2) == 0
    assert len(quarantined(url)) == 2


def test_a_header_only_file_covers_the_day_with_zero_rows(registered, flatfiles):
    write_day(flatfiles, DAY, [])
    result = load_day(load_settings(), DAY.isoformat(), list(SYMBOLS))
    assert "error" not in result and (result["rows"], result["quarantined"]) == (0, 0)
    assert coverage(registered) == {s: 0 for s in SYMBOLS} and not quarantined(registered)


# Every row here belongs to a registered symbol and is wrong in one way; the reason must say how.
# (label, fields, fragment of the reason, symbol recorded on the quarantine row)
def _bad_rows() -> list[tuple[str, list[str], str, str | None]]:
    start = day_start_ns(DAY)
    cases = [
        ("non-numeric price", row("AAPL", 300, open_="ten"), "unparseable field", "AAPL"),
        ("empty price", row("AAPL", 301, close=""), "unparseable field", "AAPL"),
        ("negative price", row("AAPL", 302, open_="-10", low="-11"), "open must be a positive", "AAPL"),
        ("zero price", row("AAPL", 303, low="0"), "low must be a positive", "AAPL"),
        ("NaN price", row("AAPL", 304, high="nan"), "high must be a positive finite", "AAPL"),
        ("infinite price", row("AAPL", 305, high="inf"), "high must be a positive finite", "AAPL"),
        ("price overflowing a float", row("AAPL", 306, high="1e400"), "positive finite", "AAPL"),
        ("high below open", row("AAPL", 307, high="9.9"), "below max(open, close)", "AAPL"),
        ("low above close", row("AAPL", 308, low="10.2"), "above min(open, close)", "AAPL"),
        ("negative volume", row("AAPL", 309, volume="-1"), "volume must be finite and >= 0", "AAPL"),
        ("negative transactions", row("AAPL", 310, transactions="-2"), "transactions must be >= 0", "AAPL"),
        ("transactions beyond a 32-bit column", row("AAPL", 311, transactions=str(2**31)),
         "transactions must be <= 2147483647", "AAPL"),
        ("transactions beyond 64 bits", row("AAPL", 312, transactions="9" * 30), "transactions must be <=", "AAPL"),
        ("fractional transactions", row("AAPL", 313, transactions="1.5"), "unparseable field", "AAPL"),
        ("window_start in milliseconds", row("AAPL", 314)[:6] + [str((start + 314 * MINUTE_NS) // 10**6), "7"],
         "epoch nanoseconds expected", "AAPL"),
        ("window_start in seconds", row("AAPL", 315)[:6] + [str((start + 315 * MINUTE_NS) // 10**9), "7"],
         "epoch nanoseconds expected", "AAPL"),
        ("window_start off the minute", row("AAPL", 316)[:6] + [str(start + 316 * MINUTE_NS + 1), "7"],
         "not a minute of 2024-01-02", "AAPL"),
        ("window_start on the day before", row("AAPL", -5), "not a minute of 2024-01-02", "AAPL"),
        ("window_start in the next day's first hour", row("AAPL", 24 * 60 + 10),
         "not a minute of 2024-01-02", "AAPL"),
        ("window_start beyond any date", row("AAPL", 0)[:6] + ["9" * 40, "7"], "not a minute", "AAPL"),
        ("window_start as a float", row("AAPL", 0)[:6] + ["1.7041712e18", "7"], "unparseable field", "AAPL"),
        ("missing column", row("BRK.B", 320)[:-1], "expected 8 columns, got 7", "BRK.B"),
        ("missing columns", row("BRK.B", 321)[:2], "expected 8 columns, got 2", "BRK.B"),
        ("extra column", [*row("BRK.B", 322), "surplus"], "expected 8 columns, got 9", "BRK.B"),
        ("stray quote", row("BRK.B", 323, open_='"10.0'), "unparseable field", "BRK.B"),
        ("non-UTF-8 bytes in a price", row("BRK.B", 324, close="10.5\udcff\udcfe"), "unparseable field", "BRK.B"),
        ("NUL byte in a price", row("BRK.B", 325, volume="1\x000"), "unparseable field", "BRK.B"),
        ("huge line", row("BRK.B", 326, volume="1" * 200_000), "field larger than field limit", None),
    ]
    return cases


# Spellings Python's float() accepts: each must load as that number on both databases, though
# several (tab, non-ASCII digits and spaces) break PostgreSQL's COPY if passed on as written.
ODD_BUT_VALID = {
    "tab after the number": ("10.0\t", 10.0),
    "spaces around": (" 10.0 ", 10.0),
    "plus sign": ("+10.0", 10.0),
    "digit separator": ("1_0.0", 10.0),
    "exponent": ("1.0e1", 10.0),
    "Arabic-Indic digits": ("١٠", 10.0),
    "full-width digits": ("１０", 10.0),
    "no-break space": ("10.0\u00a0", 10.0),
}


def test_hostile_rows_are_quarantined_with_reasons_and_the_rest_loads(registered, flatfiles):
    url = registered
    bad = _bad_rows()
    good = [row("AAPL", m, open_=str(m / 10 + 10), close=str(m / 10 + 10), high="99", low="1")
            for m in range(400, 460)]
    good += [row("BRK.B", 500 + i, open_=spelling, close="10.0") for i, (spelling, _) in
             enumerate(ODD_BUT_VALID.values())]
    other = [row("MSFT", 600), row("aapl", 601), row("AA\udcffPL", 602), row("ZZZZZZZZZZZZ", 603, open_="x"),
             row("\udcff\udcfe", 604)[:3], [*row("AAPL ", 605), "x"]]  # not registered: not ours
    lines = [",".join(f) for f in [*good, *other, *(b[1] for b in bad)]]
    random.Random(3).shuffle(lines)
    path = write_day(flatfiles, DAY, lines)

    result = load_day(load_settings(), DAY.isoformat(), list(SYMBOLS))
    assert "error" not in result, result
    assert (result["rows"], result["quarantined"]) == (len(good), len(bad))
    stored = stored_bars(url)
    assert Counter(symbol for symbol, _ in stored) == Counter(f[0] for f in good)
    for fields in good[:60]:
        minute = (int(fields[COLUMN["window_start"]]) - day_start_ns(DAY)) // MINUTE_NS
        assert stored[("AAPL", minute_ts(DAY, minute))][:6] == \
            (float(fields[COLUMN["open"]]), 99.0, 1.0, float(fields[COLUMN["close"]]), 100.0, None)
    for i, (label, (_spelling, value)) in enumerate(ODD_BUT_VALID.items()):
        assert stored[("BRK.B", minute_ts(DAY, 500 + i))][0] == value, label
    assert coverage(url) == {"AAPL": 60, "BRK.B": len(ODD_BUT_VALID)}

    records = quarantined(url)
    assert len(records) == len(bad)
    assert {origin for _, origin, _, _ in records} == {str(path)}
    by_raw = {raw: (symbol, reason) for symbol, _, raw, reason in records}
    for label, fields, fragment, symbol in bad:
        if symbol is None:  # the csv module gave up on the line: no fields to show
            assert any(s is None and fragment in r for s, _, _, r in records), label
            continue
        assert as_stored(fields) in by_raw, label
        got_symbol, reason = by_raw[as_stored(fields)]
        assert got_symbol == symbol and fragment in reason, (label, reason)
    for symbol in SYMBOLS:
        assert registry.get_symbol(get_engine(url), symbol).status != "error"


def test_a_reload_of_the_same_hostile_file_changes_nothing(registered, flatfiles):
    """Rows stamped outside the day once landed in the next day and made every reload collide."""
    url = registered
    lines = [",".join(f) for f in (row("AAPL", 400), row("AAPL", 24 * 60 + 10), row("AAPL", 25 * 60 - 1),
                                   row("BRK.B", 401, transactions=str(2**31 + 5)))]
    write_day(flatfiles, DAY, lines)
    first = load_day(load_settings(), DAY.isoformat(), list(SYMBOLS))
    bars = stored_bars(url)
    second = load_day(load_settings(), DAY.isoformat(), list(SYMBOLS))
    assert first == second and (first["rows"], first["quarantined"]) == (1, 3)
    assert stored_bars(url) == bars and list(bars) == [("AAPL", minute_ts(DAY, 400))]


# -- the property: good rows and hostile rows drawn together --------------------------------

JUNK = st.text(st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
                         st.sampled_from("\udc80\udcff\x00,\"")), max_size=12)
SPELLINGS: dict[str, Callable[[float], str]] = {
    "repr": repr, "padded": lambda x: f" {x!r} ", "signed": lambda x: f"+{x!r}", "tabbed": lambda x: f"{x!r}\t",
    "exponent": lambda x: f"{x:.17e}", "EXPONENT": lambda x: f"{x:.17E}",
    "Arabic-Indic": lambda x: repr(x).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),
}


@st.composite
def good_rows(draw: st.DrawFn, symbol: str, minute: int) -> tuple[list[str], tuple]:
    o = draw(st.floats(0.01, 1e5))
    c = draw(st.floats(0.01, 1e5))
    h = max(o, c) + draw(st.floats(0, 100))
    low = min(o, c) * draw(st.floats(0.5, 1))
    v = draw(st.one_of(st.integers(0, 10**12).map(float), st.floats(0, 1e12)))
    n = draw(st.one_of(st.none(), st.integers(0, 2**31 - 1)))
    spell = SPELLINGS[draw(st.sampled_from(sorted(SPELLINGS)))]
    fields = row(symbol, minute, open_=spell(o), close=spell(c), high=spell(h), low=spell(low),
                 volume=spell(v), transactions="" if n is None else str(n))
    return fields, (o, h, low, c, v, None, n)


@st.composite
def hostile_rows(draw: st.DrawFn, symbol: str, minute: int) -> tuple[list[str], str | None]:
    """A row of a registered symbol that is wrong for sure; returns it and the symbol its
    quarantine record must name (None when the csv module cannot split the line)."""
    fields, (o, h, low, c, v, _, n) = draw(good_rows(symbol, minute))
    numeric = draw(st.sampled_from(("open", "close", "high", "low", "volume", "window_start", "transactions")))
    price = draw(st.sampled_from(PRICES))
    ws = day_start_ns(DAY) + minute * MINUTE_NS
    kind = draw(st.sampled_from((
        "junk number", "stray quote", "undecodable", "NUL", "non-positive price", "non-finite",
        "high below", "low above", "negative volume", "transactions out of range", "window unit",
        "window off minute", "window other day", "missing columns", "extra columns", "huge field")))
    if kind == "junk number":
        fields[COLUMN[numeric]] = "x" + draw(JUNK)
    elif kind == "stray quote":
        fields[COLUMN[numeric]] = '"' + fields[COLUMN[numeric]]
    elif kind == "undecodable":
        fields[COLUMN[numeric]] += draw(st.sampled_from(("\udcff", "\udc80\udc81")))
    elif kind == "NUL":
        fields[COLUMN[numeric]] += "\x00"
    elif kind == "non-positive price":
        fields[COLUMN[price]] = draw(st.sampled_from(("0", "-0", "-1", repr(-o), "-1e-300")))
    elif kind == "non-finite":
        fields[COLUMN[draw(st.sampled_from((*PRICES, "volume")))]] = \
            draw(st.sampled_from(("nan", "NaN", "inf", "-inf", "Infinity", "1e400")))
    elif kind == "high below":
        fields[COLUMN["high"]] = repr(max(o, c) * draw(st.floats(0.01, 0.999)))
    elif kind == "low above":
        fields[COLUMN["low"]] = repr(min(o, c) * draw(st.floats(1.001, 100)))
    elif kind == "negative volume":
        fields[COLUMN["volume"]] = repr(-draw(st.floats(1e-6, 1e12)))
    elif kind == "transactions out of range":
        fields[COLUMN["transactions"]] = str(draw(st.one_of(st.integers(max_value=-1),
                                                            st.integers(min_value=2**31))))
    elif kind == "window unit":
        fields[COLUMN["window_start"]] = str(draw(st.sampled_from((ws // 10**3, ws // 10**6, ws // 10**9,
                                                                   ws * 1000))))
    elif kind == "window off minute":
        fields[COLUMN["window_start"]] = str(ws + draw(st.integers(1, MINUTE_NS - 1)))
    elif kind == "window other day":
        fields[COLUMN["window_start"]] = str(ws + draw(st.sampled_from((-1, 1, 2, -30))) * 24 * 60 * MINUTE_NS)
    elif kind == "missing columns":
        fields = fields[: draw(st.integers(1, len(HEADER) - 1))]
    elif kind == "extra columns":
        fields = fields + draw(st.lists(JUNK.map(lambda j: j.replace(",", ";")), min_size=1, max_size=3))
    else:  # beyond the csv module's field size limit: it rejects the line before we see fields
        fields[COLUMN[numeric]] = "1" * 140_000
        return fields, None
    return fields, symbol


OTHER_TICKERS = st.text(st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r,"),
                                  st.sampled_from("\udc80\udcff")), max_size=8).filter(lambda t: t not in SYMBOLS)


@HYPOTHESIS
@given(data=st.data())
def test_every_row_of_a_registered_symbol_is_loaded_or_quarantined(registered, flatfiles, data):
    url = registered
    empty(url)
    slots = data.draw(st.lists(st.tuples(st.sampled_from(SYMBOLS), st.integers(0, 24 * 60 - 1)),
                               unique=True, max_size=40), label="symbol-minutes")
    n_good = data.draw(st.integers(0, len(slots)), label="good rows")
    good = [data.draw(good_rows(s, m)) for s, m in slots[:n_good]]
    bad = [data.draw(hostile_rows(s, m)) for s, m in slots[n_good:]]
    other = [row(data.draw(OTHER_TICKERS), data.draw(st.integers(0, 1439))) for _ in
             range(data.draw(st.integers(0, 5)))]
    lines = data.draw(st.permutations([",".join(f) for f in [*(g[0] for g in good), *(b[0] for b in bad), *other]]))
    write_day(flatfiles, DAY, lines)

    result = load_day(load_settings(), DAY.isoformat(), list(SYMBOLS))

    assert "error" not in result, result
    assert (result["rows"], result["quarantined"]) == (len(good), len(bad))
    expected = {(f[0], minute_ts(DAY, (int(f[COLUMN["window_start"]]) - day_start_ns(DAY)) // MINUTE_NS)): values
                for f, values in good}
    assert stored_bars(url) == expected
    assert coverage(url) == {s: sum(1 for f, _ in good if f[0] == s) for s in SYMBOLS}
    records = quarantined(url)
    assert Counter(symbol for symbol, *_ in records) == Counter(symbol for _, symbol in bad)
    assert all(reason.strip() for *_, reason in records)
    assert sorted(raw for symbol, _, raw, _ in records if symbol) == \
        sorted(as_stored(f) for f, symbol in bad if symbol)


# == Polygon REST ==============================================================================

RDAY = dt.date(2024, 3, 4)
RDAY_MS = int(day_bounds_utc(RDAY)[0].timestamp() * 1000)
RSYMBOL = "AAPL"


def agg(minute: int, **fields: Any) -> dict[str, Any]:
    return {"t": RDAY_MS + minute * 60_000, "o": 10.0, "h": 11.0, "l": 9.5, "c": 10.5, "v": 100, "vw": 10.2,
            "n": 5, **fields}


def page(results: list[Any], **fields: Any) -> str:
    return json.dumps({"status": "OK", "resultsCount": len(results), "results": results, **fields})


def fill() -> dict[str, Any]:
    return fill_window(load_settings(), RSYMBOL, RDAY.isoformat(), RDAY.isoformat())


def assert_clear_polygon_error(call: Callable[[], Any], what: str) -> PolygonError:
    with pytest.raises(PolygonError) as info:
        call()
    error = info.value
    assert not isinstance(error, TransientPolygonError)  # retrying a nonsense answer cannot help
    assert str(error).startswith(f"malformed response to {what}"), str(error)
    assert KEY not in str(error) and "\n" not in str(error) and len(str(error)) < 400
    return error


MALFORMED_AGGS: dict[str, tuple[str | bytes, str]] = {
    "cut mid-stream": ('{"status":"OK","results":[{"v":1234,"o":', "not JSON"),
    "nested a hundred thousand deep": ("[" * 100_000, "not JSON"),
    "NaN literal": (page([agg(600, o=float("nan"))]), "not JSON (NaN is not a JSON number"),
    "Infinity literal": (page([agg(600, v=float("inf"))]), "not JSON (Infinity is not a JSON number"),
    "not UTF-8": (b'{"status":"OK","resultsCount":1,"results":[{"t":1,"o":"\xff\xfe"}]}', "not JSON"),
    "top-level array": ("[]", "not a JSON object"),
    "status ERROR on a 200": (json.dumps({"status": "ERROR", "error": "boom"}), "status 'ERROR'"),
    "resultsCount disagrees": (json.dumps({"status": "OK", "resultsCount": 2, "results": [agg(600)]}),
                               "resultsCount 2 does not match"),
    "results is an object": (json.dumps({"status": "OK", "resultsCount": 1, "results": agg(600)}),
                             "does not match the results"),
    "result is not an object": (page([5]), "result 5 is not an object"),
    "t as a string": (page([agg(600, t="1709560800000")]), "field 't' is '1709560800000', not an integer"),
    "t as a float": (page([agg(600, t=1709560800000.0)]), "not an integer"),
    "t in seconds": (page([agg(600, t=(RDAY_MS + 600 * 60_000) // 1000)]), "is not epoch milliseconds"),
    "t in nanoseconds": (page([agg(600, t=(RDAY_MS + 600 * 60_000) * 10**6)]), "is not epoch milliseconds"),
    "t beyond any date": (page([agg(600, t=10**30)]), "is not epoch milliseconds"),
    "t negative": (page([agg(600, t=-60_000)]), "is not epoch milliseconds"),
    "t on the day before": (page([agg(-1)]), "is outside the requested"),
    "t on the day after": (page([agg(24 * 60)]), "is outside the requested"),
    "price too large for a float": (page([agg(600, o=10**400)]), "field 'o' is 1000"),
    "price as text": (page([agg(600, c="10.5")]), "field 'c' is '10.5', not a number"),
    "price true": (page([agg(600, h=True)]), "field 'h' is True, not a number"),
    "missing close": (page([{k: v for k, v in agg(600).items() if k != "c"}]), "field 'c' is None"),
    "transactions fractional": (page([agg(600, n=2.5)]), "field 'n' is 2.5, not an integer"),
    "huge text value": (page([agg(600, v="9" * 100_000)]), "...(+"),
    "next_url not a string": (page([agg(600)], next_url=5), "next_url is 5"),
}


@pytest.mark.parametrize("kind", MALFORMED_AGGS)
def test_a_malformed_aggregates_answer_fails_clearly_and_writes_nothing(rest_db, polygon, kind):
    body, detail = MALFORMED_AGGS[kind]
    polygon.inject("/v2/aggs", "malformed", body=body)
    error = assert_clear_polygon_error(fill, f"minute aggregates of {RSYMBOL}")
    assert detail in str(error)
    # The gap stays open for a later run: no bar, no coverage, nothing half-written.
    assert (stored_bars(rest_db), coverage(rest_db), quarantined(rest_db)) == ({}, {}, [])


# Bars of the right shape whose values cannot be a bar: quarantined one by one.
BAD_BARS: dict[str, tuple[dict[str, Any], str]] = {
    "negative open": ({"o": -10.0, "l": -11.0}, "open must be a positive finite price"),
    "zero close": ({"c": 0}, "close must be a positive finite price"),
    "high below low": ({"h": 9.0}, "below max(open, close)"),
    "low above close": ({"l": 10.4}, "above min(open, close)"),
    "negative volume": ({"v": -1}, "volume must be finite and >= 0"),
    "negative vwap": ({"vw": -0.5}, "vwap must be finite and >= 0"),
    "negative transactions": ({"n": -1}, "transactions must be between 0 and 2147483647"),
    "transactions beyond a 32-bit column": ({"n": 2**31}, "transactions must be between 0 and 2147483647"),
    "transactions beyond 64 bits": ({"n": 10**20}, "transactions must be between 0 and 2147483647"),
}


def test_bars_with_impossible_values_are_quarantined_and_the_rest_stored(rest_db, polygon):
    good = [agg(m, o=10.0 + m / 100, c=10.0 + m / 100, h=20.0, l=5.0) for m in range(570, 580)]
    bad = [agg(600 + i, **fields) for i, (fields, _) in enumerate(BAD_BARS.values())]
    polygon.inject("/v2/aggs", "malformed", body=page([*good, *bad]))
    result = fill()
    assert (result["days"], result["rows"], result["quarantined"]) == (1, len(good), len(bad))
    assert stored_bars(rest_db) == {
        (RSYMBOL, minute_ts(RDAY, 0) + dt.timedelta(milliseconds=b["t"] - RDAY_MS)):
            (b["o"], b["h"], b["l"], b["c"], float(b["v"]), b["vw"], b["n"]) for b in good}
    assert coverage(rest_db) == {RSYMBOL: len(good)}
    records = quarantined(rest_db)
    assert len(records) == len(bad)
    for (label, (_fields, reason)), (symbol, origin, raw, got) in zip(BAD_BARS.items(), records, strict=True):
        assert (symbol, origin.startswith(f"polygon:minute:{RSYMBOL}:")) == (RSYMBOL, True), label
        assert reason in got, (label, got)
        assert json.loads(raw)["ts"].startswith("2024-03-04T")


def test_a_minute_twice_in_one_answer_is_one_bar_and_counted_once(rest_db, polygon):
    polygon.inject("/v2/aggs", "malformed", body=page([agg(600), agg(600, c=10.75), agg(601)]))
    result = fill()
    assert result["rows"] == 2
    bars = stored_bars(rest_db)
    assert len(bars) == 2 and bars[(RSYMBOL, minute_ts(RDAY, 600))][3] == 10.75  # the later one, as upserted
    assert coverage(rest_db) == {RSYMBOL: 2}


@st.composite
def rest_answers(draw: st.DrawFn) -> tuple[list[dict], list[dict], list[dict]]:
    """(good bars, bad bars, the answer's results in the order served)"""
    minutes = draw(st.lists(st.integers(0, 24 * 60 - 1), unique=True, max_size=30))
    n_good = draw(st.integers(0, len(minutes)))
    good, bad = [], []
    for m in minutes[:n_good]:
        o, c = draw(st.floats(0.01, 1e5)), draw(st.floats(0.01, 1e5))
        good.append(agg(m, o=o, c=c, h=max(o, c) + draw(st.floats(0, 10)), l=min(o, c) * draw(st.floats(0.5, 1)),
                        v=draw(st.one_of(st.integers(0, 10**12), st.floats(0, 1e12))),
                        vw=draw(st.one_of(st.none(), st.floats(0.01, 1e5))),
                        n=draw(st.one_of(st.none(), st.integers(0, 2**31 - 1)))))
    for m in minutes[n_good:]:
        field = draw(st.sampled_from(("o", "h", "l", "c", "v", "vw", "n", "order")))
        if field == "n":
            value: Any = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31)))
        elif field == "order":
            bad.append(agg(m, h=draw(st.floats(1, 9.9))))  # high below open and close
            continue
        else:
            value = draw(st.one_of(st.integers(max_value=0), st.floats(max_value=0, allow_nan=False,
                                                                       allow_infinity=False)))
            if field in ("v", "vw"):  # a volume or vwap of 0 is a real (if quiet) minute
                assume(value < 0)
        bad.append(agg(m, **{field: value}))
    order = draw(st.permutations(range(len(good) + len(bad))))
    return good, bad, [([*good, *bad])[i] for i in order]


@HYPOTHESIS
@given(answer=rest_answers())
def test_every_bar_of_a_rest_answer_is_stored_or_quarantined(rest_db, polygon, answer):
    good, bad, served = answer
    empty(rest_db)
    polygon.inject("/v2/aggs", "malformed", body=page(served))
    result = fill()
    assert (result["rows"], result["quarantined"]) == (len(good), len(bad))
    assert stored_bars(rest_db) == {
        (RSYMBOL, minute_ts(RDAY, 0) + dt.timedelta(milliseconds=b["t"] - RDAY_MS)):
            (b["o"], b["h"], b["l"], b["c"], float(b["v"]), b["vw"], b["n"]) for b in good}
    assert coverage(rest_db) == {RSYMBOL: len(good)}
    records = quarantined(rest_db)
    assert sorted(json.loads(raw)["ts"] for _, _, raw, _ in records) == sorted(
        (minute_ts(RDAY, 0) + dt.timedelta(milliseconds=b["t"] - RDAY_MS)).isoformat().replace("+00:00", "Z")
        for b in bad)
    assert all(symbol == RSYMBOL and reason for symbol, _, _, reason in records)


# Reference data is replaced as a whole, so a bad answer must leave the old rows in place.
MALFORMED_REFERENCE: dict[str, tuple[str, dict[str, Any], str]] = {
    "currency longer than its column": ("/v3/reference/dividends", {"currency": "U" * 40}, "field 'currency'"),
    "currency as a number": ("/v3/reference/dividends", {"currency": 840}, "field 'currency' is 840"),
    "frequency beyond an integer column": ("/v3/reference/dividends", {"frequency": 10**12}, "field 'frequency'"),
    "id longer than its column": ("/v3/reference/dividends", {"id": "E" * 300}, "usable id"),
    "cash amount too large for a float": ("/v3/reference/dividends", {"cash_amount": 10**400},
                                          "field 'cash_amount'"),
    "impossible date": ("/v3/reference/dividends", {"ex_dividend_date": "2024-02-30"}, "not a date"),
    "zero split ratio": ("/v3/reference/splits", {"split_to": 0}, "field 'split_to' is 0, not a positive number"),
    "negative split ratio": ("/v3/reference/splits", {"split_from": -2}, "not a positive number"),
}


@pytest.mark.parametrize("kind", MALFORMED_REFERENCE)
def test_a_malformed_reference_answer_keeps_the_previous_rows(rest_db, polygon, kind):
    path, fields, detail = MALFORMED_REFERENCE[kind]
    polygon.add_dividends(RSYMBOL, [{"ex_dividend_date": "2023-11-10", "cash_amount": 0.24, "currency": "USD"}])
    polygon.add_splits(RSYMBOL, [{"execution_date": "2020-08-31", "split_from": 1, "split_to": 4}])
    assert load_corporate_actions(load_settings(), RSYMBOL)["dividends"] == 1
    before = query(rest_db, "SELECT * FROM dividends"), query(rest_db, "SELECT * FROM splits")
    record = ({"id": "E1", "ex_dividend_date": "2024-02-09", "cash_amount": 0.24, "currency": "USD",
               "frequency": 4, "dividend_type": "CD"} if "dividends" in path else
              {"id": "P1", "execution_date": "2024-06-10", "split_from": 1, "split_to": 10})
    polygon.inject(path, "malformed", body=json.dumps({"status": "OK", "results": [{**record, **fields}]}))
    error = assert_clear_polygon_error(lambda: load_corporate_actions(load_settings(), RSYMBOL),
                                       f"{'dividends' if 'dividends' in path else 'splits'} of {RSYMBOL}")
    assert detail in str(error)
    assert (query(rest_db, "SELECT * FROM dividends"), query(rest_db, "SELECT * FROM splits")) == before


UPDATED_NS = 1_709_580_000_123_456_789  # 2024-03-04 19:20 UTC


def snapshot_answer(*entries: dict[str, Any]) -> str:
    return json.dumps({"status": "OK", "count": len(entries), "tickers": list(entries)})


MALFORMED_SNAPSHOTS: dict[str, tuple[str, str, str | bytes, str]] = {
    "updated in milliseconds": ("snapshot", "/v2/snapshot", snapshot_answer(
        {"ticker": RSYMBOL, "updated": UPDATED_NS // 10**6, "lastTrade": {"p": 171.25}}),
        "field 'updated': 1709580000123 is not epoch nanoseconds"),
    "updated beyond any date": ("snapshot", "/v2/snapshot", snapshot_answer(
        {"ticker": RSYMBOL, "updated": 10**30, "lastTrade": {"p": 171.25}}), "is not epoch nanoseconds"),
    "entry without a ticker": ("snapshot", "/v2/snapshot", snapshot_answer({"lastTrade": {"p": 1}}), "has no ticker"),
    "day as a list": ("snapshot", "/v2/snapshot", snapshot_answer({"ticker": RSYMBOL, "day": [1, 2]}),
                      "day is not an object"),
    "negative last trade": ("rest", "/v2/last/trade", json.dumps(
        {"status": "OK", "results": {"p": -171.25, "s": 100, "t": UPDATED_NS}}), "field 'p' is -171.25"),
    "last trade in seconds": ("rest", "/v2/last/trade", json.dumps(
        {"status": "OK", "results": {"p": 171.25, "t": UPDATED_NS // 10**9}}), "is not epoch nanoseconds"),
}


@pytest.mark.parametrize("kind", MALFORMED_SNAPSHOTS)
def test_a_malformed_snapshot_answer_stores_nothing(rest_db, polygon, kind):
    method, path, body, detail = MALFORMED_SNAPSHOTS[kind]
    polygon.inject(path, "malformed", body=body)
    what = "snapshot of 1 ticker(s)" if method == "snapshot" else f"last trade of {RSYMBOL}"
    error = assert_clear_polygon_error(lambda: refresh(load_settings(), [RSYMBOL], method), what)
    assert detail in str(error)
    assert query(rest_db, "SELECT count(*) FROM snapshot_latest") == [(0,)]


@pytest.mark.parametrize("fields,detail", [
    ({"h": 1.0}, "below max(open, close)"),
    ({"t": RDAY_MS - 8 * 24 * 3_600_000}, "is outside the requested"),
    ({"n": 2**40}, "transactions must be between 0 and 2147483647"),
])
def test_a_malformed_latest_minute_is_a_clear_error(polygon, fields, detail):
    polygon.inject("/v2/aggs", "malformed", body=page([agg(600, **fields)]))
    rest = PolygonRest(load_settings())
    error = assert_clear_polygon_error(
        lambda: rest.last_minute_agg(RSYMBOL, now=dt.datetime(2024, 3, 4, 20, 0, tzinfo=UTC)),
        f"latest minute aggregate of {RSYMBOL}")
    assert detail in str(error)


def test_a_snapshot_of_a_ticker_nobody_asked_for_is_not_stored(rest_db, polygon):
    polygon.inject("/v2/snapshot", "malformed", body=snapshot_answer(
        {"ticker": RSYMBOL, "updated": UPDATED_NS, "lastTrade": {"p": 171.25}},
        {"ticker": "NOT-ASKED-FOR-AND-TOO-LONG", "updated": UPDATED_NS, "lastTrade": {"p": 5.0}}))
    outcome = refresh(load_settings(), [RSYMBOL], "snapshot")
    assert (outcome["stored"], outcome["missing"]) == (1, [])
    assert query(rest_db, "SELECT symbol, price FROM snapshot_latest") == [(RSYMBOL, 171.25)]


# == The Polygon websocket ========================================================================

M0 = 1_704_205_800_000  # 2024-01-02 14:30 UTC
WS_SYMBOLS = ("WSA", "WSB.X")


def am(symbol: str, start_ms: int, price: float = 100.0, **extra: Any) -> dict[str, Any]:
    return {"ev": "AM", "sym": symbol, "o": price, "h": price + 0.5, "l": price - 0.5, "c": price + 0.25,
            "v": 1200, "vw": price + 0.1, "s": start_ms, "e": start_ms + 60_000, **extra}


def am_bar(event: dict[str, Any]) -> tuple[tuple[str, dt.datetime], tuple]:
    ts = dt.datetime.fromtimestamp(event["s"] / 1000, UTC)
    return (event["sym"], ts), (event["o"], event["h"], event["l"], event["c"], float(event["v"]),
                                event["vw"], None)


# Each replaces one field of a valid event with something no bar can be made of.
HOSTILE_FIELDS: dict[str, list[Any]] = {
    "o": ["abc", None, [], {}, True, 10**400, -1, 0, float("nan"), float("inf"), ""],
    "v": [-5, "many", False, float("-inf")],
    "vw": [-1, "x", True, float("nan")],
    "s": [1_704_205_800, M0 * 10**6, M0 * 1000, -1, 0, "2024-01-02", 1.5e12, 10**30, True, None],
    "sym": ["wsa", "", "A" * 11, "../etc", "\x00", "\udcff", 5, None, "WS\u00c4"],
    "ev": ["T", "am", None],
}


@st.composite
def hostile_events(draw: st.DrawFn) -> Any:
    base = am("WSA", M0)
    kind = draw(st.sampled_from(("field", "missing", "not an object")))
    if kind == "field":
        name = draw(st.sampled_from(sorted(HOSTILE_FIELDS)))
        return {**base, name: draw(st.sampled_from(HOSTILE_FIELDS[name]))}
    if kind == "missing":
        name = draw(st.sampled_from(("o", "h", "l", "c", "v", "s", "sym", "ev")))
        return {k: v for k, v in base.items() if k != name}
    return draw(st.sampled_from((5, "AM", None, [], [base], True)))


# Whole frames the reader cannot take apart: each must become one quarantined record.
BAD_FRAMES = st.one_of(
    st.text(max_size=30).map(lambda t: "not json " + t),
    st.binary(max_size=30).map(lambda b: b'[{"ev":"AM","sym":"\xff\xfe' + b + b'"}]'),
    st.sampled_from((2_000, 100_000)).map(lambda depth: "[" * depth),
    st.sampled_from(('{"ev":"AM"}', "42", '"AM"', "null", "true")),
)


@st.composite
def stream_feeds(draw: st.DrawFn) -> tuple[list[str | bytes], int, int, dict]:
    """(frames, hostile items, bad frames, expected bars)"""
    slots = draw(st.lists(st.tuples(st.sampled_from(WS_SYMBOLS), st.integers(0, 600)), unique=True, max_size=25))
    valid = [am(s, M0 + m * 60_000, draw(st.floats(1, 1e5))) for s, m in slots]
    hostile = draw(st.lists(hostile_events(), max_size=15))
    statuses = [{"ev": "status", "status": "success", "message": "subscribed to: AM.WSA"}] * draw(st.integers(0, 2))
    items = draw(st.permutations([*valid, *hostile, *statuses]))
    frames: list[str | bytes] = []
    while items:
        size = draw(st.integers(1, 10))
        frame = json.dumps(items[:size])
        frames.append(frame.encode() if draw(st.booleans()) else frame)
        items = items[size:]
    bad_frames = draw(st.lists(BAD_FRAMES, max_size=4))
    for frame in bad_frames:
        frames.insert(draw(st.integers(0, len(frames))), frame)
    return frames, len(hostile), len(bad_frames), dict(am_bar(e) for e in valid)


def feed_stream(frames: Sequence[str | bytes]) -> dict[str, Any]:
    """The stream process's own path for frames from the socket: decoding, the backlog, the
    validating writer and its database writes; only the socket itself is left out."""
    process = StreamProcess(load_settings())
    process._writer.start()

    async def read() -> None:
        for frame in frames:
            await process._on_frame(frame)

    try:
        asyncio.run(read())
    finally:
        process._backlog.close()
        process._writer.join()
        if process._writer._engine is not get_engine(load_settings().database_url):
            process._writer._engine.dispose()
    return process.stats.as_dict()


@pytest.fixture
def stream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYGON_API_KEY", "ws-test-key")
    monkeypatch.setenv("CHRONOX_STREAM_BATCH", "7")  # several batches, so a bad one meets good ones


@HYPOTHESIS
@given(feed=stream_feeds())
def test_every_stream_event_is_stored_or_quarantined(db_url, stream_key, feed):
    frames, hostile, bad_frames, expected = feed
    empty(db_url)
    stats = feed_stream(frames)
    assert (stats["lost"], stats["write_errors"]) == (0, 0)
    assert (stats["received"], stats["written"], stats["quarantined"]) == \
        (len(expected) + hostile + bad_frames, len(expected), hostile + bad_frames)
    assert stored_bars(db_url) == expected
    records = quarantined(db_url)
    assert len(records) == hostile + bad_frames
    assert all(origin == "polygon-ws" and reason for _, origin, _, reason in records)


HOSTILE_FRAMES = {
    "nested a hundred thousand deep": ("[" * 100_000, "unreadable frame: frame is nested too deeply"),
    "not UTF-8": (b'[{"ev":"AM","sym":"\xff"}]', "unreadable frame: 'utf-8' codec can't decode"),
    "price too large for a float": (json.dumps([am("WSA", M0, o=10**400)]),
                                    "non-numeric field: int too large to convert to float"),
    "window start in seconds": (json.dumps([am("WSA", 1_704_205_800)]), "1704205800 is not epoch milliseconds"),
    "NaN vwap": (json.dumps([am("WSA", M0, vw=float("nan"))]), "vwap must be finite and >= 0, got nan"),
    "price true": (json.dumps([am("WSA", M0, o=True)]), "non-numeric field"),
    "NUL in the symbol": (json.dumps([am("WS\x00", M0)]), "invalid symbol 'WS\\x00'"),
    "symbol of 100,000 characters": (json.dumps([am("X" * 100_000, M0)]), "invalid symbol 'XXXX"),
}


@pytest.mark.parametrize("kind", HOSTILE_FRAMES)
def test_each_hostile_frame_gets_its_reason(sqlite_url, stream_key, kind):
    frame, reason = HOSTILE_FRAMES[kind]
    stats = feed_stream([frame, json.dumps([am("WSA", M0 + 60_000)])])
    assert (stats["written"], stats["quarantined"], stats["lost"]) == (1, 1, 0)
    [(symbol, origin, raw, got)] = quarantined(sqlite_url)
    assert got.startswith(reason) and len(got) < 400, got
    assert len(raw) <= 2000


def test_the_stream_process_survives_hostile_frames_and_keeps_the_good_bars(db_url, tmp_path):
    """`chronox stream` as a real process: the frames that used to end its reader or its
    writer thread arrive between valid bars, which must still be written."""
    engine = get_engine(db_url)
    registry.add_symbol(engine, "WSA", "stream")
    with FakePolygonStream() as server:
        env = {**os.environ, "POLYGON_API_KEY": server.api_key, "CHRONOX_POLYGON_WS_URL": server.url,
               "CHRONOX_STREAM_POLL_SECONDS": "0.3", "CHRONOX_STREAM_STAMP_SECONDS": "0.2"}
        err = open(tmp_path / "stream.err", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "chronox.cli", "stream"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=err)
        try:
            assert server.wait_for(lambda: server.subscriptions == {"AM.WSA"}, 20), \
                (tmp_path / "stream.err").read_text()
            server.send_am([am("WSA", M0)])
            for frame in ("[" * 100_000, b'[{"ev":"AM","sym":"\xff"}]',
                          json.dumps([am("WSA", M0 + 60_000, o=10**400)]), json.dumps([am("WS\x00", M0)]),
                          "not json at all"):
                server.send_raw(frame)
            server.send_am([am("WSA", M0 + 120_000)])
            assert server.wait_for(lambda: count(db_url, "SELECT count(*) FROM quarantine") == 5 and
                                   count(db_url, "SELECT count(*) FROM ohlcv_1m") == 2, 20), \
                (tmp_path / "stream.err").read_text()
            assert proc.poll() is None, (tmp_path / "stream.err").read_text()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()
    log = (tmp_path / "stream.err").read_text()
    assert proc.returncode == 0 and "Traceback" not in log, log
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert (stats["received"], stats["written"], stats["quarantined"], stats["lost"]) == (7, 2, 5, 0)
    assert sorted(ts for _, ts in stored_bars(db_url)) == [
        dt.datetime(2024, 1, 2, 14, 30, tzinfo=UTC), dt.datetime(2024, 1, 2, 14, 32, tzinfo=UTC)]


# == The command line ==========================================================================

CLI_HYPOTHESIS = settings(HYPOTHESIS, max_examples=25)
# Tests that plan runs take `flatfiles`: a plan looks day files up, on Polygon's S3 by default.
SYMBOL_SHAPE = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,9}")
PHASE_NAMES = ("flatpack", "api", "snapshot", "stream")
LEGACY = {"flatpack_api", "snapshot_stream", "flatpack_snapshot_stream", "flatpack_api_snapshot_stream"}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def assert_user_error(result: Any, *fragments: str) -> None:
    """Exit 1 (bad value) or 2 (usage), one `Error` line saying what is wrong, no traceback."""
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    if result.exit_code == 1 and fragments:
        assert any(f in errors[0] for f in fragments), (fragments, errors[0])


def valid_symbol(text_: str) -> bool:
    return text_.isascii() and bool(SYMBOL_SHAPE.fullmatch(text_.strip().upper()))


def strategy_phases(text_: str) -> tuple[str, ...] | None:
    key = text_.strip().lower()
    if key in LEGACY:
        return tuple(p for p in PHASE_NAMES if p in key.split("_"))
    parts = [p.strip() for p in key.split("+")]
    if not key or any(p not in PHASE_NAMES for p in parts) or len(set(parts)) != len(parts):
        return None
    return tuple(p for p in PHASE_NAMES if p in parts)


SYMBOL_TEXT = st.one_of(
    st.text(max_size=14),
    st.text(st.sampled_from("ABCXYZ019.-_ $/\\\x00ßﬁ\u0130\u212a\u00e9\n\t\udcff"), max_size=12),
    st.sampled_from(["", " ", "-", ".AAPL", "AAPL!", "BRK/B", "A" * 11, "ß", "straße", "\u3000AAPL",
                     "AAPL\n", "aapl", " msft ", "BRK.B"]),
)


@CLI_HYPOTHESIS
@given(symbol=SYMBOL_TEXT)
def test_symbols_are_registered_exactly_as_typed_or_refused_in_one_line(sqlite_url, symbol):
    result = invoke("symbols", "add", "--strategy=flatpack", "--", symbol)
    if not valid_symbol(symbol):
        assert_user_error(result, "invalid symbol")
        assert count(sqlite_url, "SELECT count(*) FROM symbol_registry") == 0
        return
    assert result.exit_code == 0, result.output
    assert query(sqlite_url, "SELECT symbol FROM symbol_registry") == [(symbol.strip().upper(),)]
    assert invoke("symbols", "remove", "--", symbol).exit_code == 0


STRATEGY_TEXT = st.one_of(
    st.text(max_size=20),
    st.lists(st.sampled_from([*PHASE_NAMES, "FLATPACK", " api ", "", "flatpak", "streams", "x", "api"]),
             max_size=5).map("+".join),
    st.sampled_from([*LEGACY, "FLATPACK_API", "flatpack__api", "flatpack-api", "flatpack+", "+", " "]),
)


@CLI_HYPOTHESIS
@given(strategy=STRATEGY_TEXT)
def test_strategies_are_canonical_or_refused_in_one_line(sqlite_url, strategy):
    result = invoke("symbols", "add", "AAPL", f"--strategy={strategy}")
    phases = strategy_phases(strategy)
    if phases is None:
        assert_user_error(result, "strategy")
        assert count(sqlite_url, "SELECT count(*) FROM symbol_registry") == 0
        return
    assert result.exit_code == 0, result.output
    assert query(sqlite_url, "SELECT strategy FROM symbol_registry") == [("+".join(phases),)]
    assert invoke("symbols", "remove", "AAPL").exit_code == 0


def parses_as_date(text_: str) -> bool:
    try:
        dt.date.fromisoformat(text_)
        return True
    except ValueError:
        return False


DATE_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(st.sampled_from("0123456789-/T: W"), max_size=12),
    st.sampled_from(["2024-02-30", "2024-13-01", "2023-02-29", "24-01-02", "2024/01/02", "02-01-2024",
                     "2024-1-2", "2024-01-02T10:00", "now", "yesterday", "2024-00-10", "99999-01-01", ""]),
)


@CLI_HYPOTHESIS
@given(start=DATE_TEXT, end=DATE_TEXT)
def test_bad_dates_are_refused_in_one_line(sqlite_url, flatfiles, start, end):
    assume(not (parses_as_date(start) and parses_as_date(end)))
    result = invoke("run", "--dry-run", f"--start={start}", f"--end={end}")
    assert result.exit_code == 1
    assert_user_error(result)
    name, bad = ("start", start) if not parses_as_date(start) else ("end", end)
    assert f"Error: {name} {bad!r} is not a date (YYYY-MM-DD)" in result.output


@CLI_HYPOTHESIS
@given(first=st.dates(dt.date(1990, 1, 1), dt.date(2100, 1, 1)), days=st.integers(1, 4000))
def test_an_inverted_range_is_refused(sqlite_url, flatfiles, first, days):
    later = first + dt.timedelta(days=days)
    result = invoke("run", "--dry-run", "--start", later.isoformat(), "--end", first.isoformat())
    assert_user_error(result, f"start {later} is after end {first}")


TIMEFRAME_TEXT = st.one_of(st.text(max_size=6), st.sampled_from(["1m", "1M", " 1m ", "5m", "15m", "1h", "1d",
                                                                 "60s", "1", "m1", "", "1m\x00"]))


@CLI_HYPOTHESIS
@given(timeframe=TIMEFRAME_TEXT)
def test_timeframes_are_the_supported_ones_or_refused_in_one_line(sqlite_url, flatfiles, timeframe):
    result = invoke("symbols", "add", "AAPL", "--strategy=flatpack", f"--timeframe={timeframe}")
    dry = invoke("run", "--dry-run", f"--timeframe={timeframe}")
    if timeframe.strip().lower() in {"1m", "5m", "15m", "1h", "1d"}:
        assert (result.exit_code, dry.exit_code) == (0, 0), (result.output, dry.output)
        assert invoke("symbols", "remove", "AAPL").exit_code == 0
        return
    assert_user_error(result, "timeframe")
    assert_user_error(dry, "timeframe")
    assert count(sqlite_url, "SELECT count(*) FROM symbol_registry") == 0


@CLI_HYPOTHESIS
@given(names=st.lists(SYMBOL_TEXT.filter(lambda s: s.strip() and not s.strip().startswith("-")),
                      min_size=1, max_size=3))
def test_run_names_only_valid_registered_symbols(sqlite_url, flatfiles, names):
    if not count(sqlite_url, "SELECT count(*) FROM symbol_registry"):
        registry.add_symbol(get_engine(sqlite_url), "AAPL", "flatpack")
    # As `chronox` itself reads argv: --symbols takes the words up to the next option
    result = invoke(*_expand_variadic(["run", "--dry-run", "--json", "--symbols", *names]))
    # --symbols splits on commas and whitespace, as the command documents
    words = [w for name in names for w in name.replace(",", " ").split()]
    if all(valid_symbol(w) for w in words) and {w.upper() for w in words} <= {"AAPL"}:
        assert result.exit_code == 0, result.output
        assert [s["symbol"] for s in json.loads(result.output)["symbols"]] == ["AAPL"]
    elif all(valid_symbol(w) for w in words):
        assert_user_error(result, "not registered")
    else:
        assert_user_error(result, "invalid symbol")
    assert registry.get_symbol(get_engine(sqlite_url), "AAPL").status == "idle"


def test_a_run_with_bad_input_touches_nothing(sqlite_url, flatfiles):
    """Not a dry run: validation happens before any status is set or file is read."""
    from tests.helpers import write_days

    write_days(flatfiles, [DAY], ["AAPL"])
    registry.add_symbol(get_engine(sqlite_url), "AAPL", "flatpack")
    for args, message in ((["--start", "2024-01-0x"], "is not a date"),
                          (["--strategy", "flatpack+nope"], "unknown phase"),
                          (["--timeframe", "2m"], "unsupported timeframe"),
                          (["--symbols", "AA PL!"], "invalid symbol"),
                          (["--symbols", "ZZZZ"], "not registered: ZZZZ")):
        assert_user_error(invoke("run", *args), message)
    assert registry.get_symbol(get_engine(sqlite_url), "AAPL").status == "idle"
    assert count(sqlite_url, "SELECT count(*) FROM ohlcv_1m") == 0


def test_an_end_before_the_default_start_is_refused(sqlite_url, flatfiles):
    registry.add_symbol(get_engine(sqlite_url), "AAPL", "flatpack")
    assert_user_error(invoke("run", "--dry-run", "--end", "2001-01-01"), "before", "after")


def test_an_absurd_throttle_is_refused(sqlite_url, flatfiles):
    assert_user_error(invoke("run", "--dry-run", "--throttle-ms", str(10**20)), "throttle")


def test_an_unreachable_flat_file_endpoint_is_one_line(sqlite_url, monkeypatch):
    registry.add_symbol(get_engine(sqlite_url), "AAPL", "flatpack")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("CHRONOX_FLATFILES_URL", "s3://flatfiles")
    monkeypatch.setenv("CHRONOX_S3_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    result = invoke("run", "--dry-run", "--start", "2024-03-04", "--end", "2024-03-05")
    assert_user_error(result, "flat files", f"127.0.0.1:{closed_port}")
