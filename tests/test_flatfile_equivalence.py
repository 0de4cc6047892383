"""The vectorized day-file reader against the per-row reader it replaced (tests/flatfile_oracle.py).

Same files in, exactly the same out: the rows kept (values, order), duplicates, other
tickers, rows read, and every quarantine record with its symbol, raw text and reason.
Files come from the hostile corpus and property strategies of tests/faults/test_bad_input.py
plus line-level oddities (empty lines, CR and CRLF ends, lines beyond the csv module's field
limit and beyond a block, duplicates across blocks, crypto aliases), read both with the
production block size and with tiny blocks so every boundary case meets a block edge.
"""
from __future__ import annotations

import datetime as dt
import gzip
import io
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chronox.sources import flatfiles
from chronox.sources.flatfiles import DayFileReader, DayFileRows, FlatFileError
from tests import flatfile_oracle
from tests.faults.test_bad_input import (
    BROKEN_FILES,
    DAY,
    HEADER_LINE,
    ODD_BUT_VALID,
    OTHER_TICKERS,
    SYMBOLS,
    _bad_rows,
    good_file_bytes,
    good_rows,
    hostile_rows,
    row,
)

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def outcome(reader_class: type, blob: bytes, wanted=SYMBOLS, aliases=None) -> dict:
    reader = reader_class(io.BytesIO(blob), DAY, wanted, "day.csv.gz", aliases=aliases)
    try:
        rows = list(reader)
        error = None
    except FlatFileError as exc:
        rows, error = None, str(exc)
    stats = reader.stats
    return {"rows": rows, "error": error, "read": stats.rows_read, "kept": dict(stats.rows_kept),
            "duplicates": stats.duplicates, "other": stats.other_tickers,
            "quarantined": [(q.origin, q.symbol, q.raw, q.reason) for q in stats.quarantined]}


def assert_same(blob: bytes, wanted=SYMBOLS, aliases=None) -> dict:
    expected = outcome(flatfile_oracle.DayFileReader, blob, wanted, aliases)
    got = outcome(DayFileReader, blob, wanted, aliases)
    assert got == expected
    return got


def gz(lines: list[str], header: str = HEADER_LINE, end: str = "\n") -> bytes:
    return gzip.compress((end.join([header, *lines]) + end).encode("utf-8", "surrogateescape"))


@pytest.fixture(params=["production blocks", "tiny blocks"])
def blocks(request, monkeypatch):
    if request.param == "tiny blocks":
        monkeypatch.setattr(flatfiles, "BLOCK_BYTES", 97)
    return request.param


def test_the_hostile_corpus_reads_the_same(blocks):
    bad = [",".join(fields) for _, fields, _, _ in _bad_rows()]
    good = [",".join(row("BRK.B", 500 + i, open_=spelling, close="10.0")) for i, (spelling, _) in
            enumerate(ODD_BUT_VALID.values())]
    good += [",".join(row("AAPL", m)) for m in range(400, 460)]
    other = [",".join(f) for f in (row("MSFT", 600), row("aapl", 601), row("AA\udcffPL", 602),
                                   row("ZZZZZZZZZZZZ", 603, open_="x"), row("\udcff\udcfe", 604)[:3],
                                   [*row("AAPL ", 605), "x"])]
    lines = [*good, *bad, *other]
    random.Random(3).shuffle(lines)
    result = assert_same(gz(lines))
    assert result["kept"] == {"AAPL": 60, "BRK.B": len(ODD_BUT_VALID)} and len(result["quarantined"]) == len(bad)


@pytest.mark.parametrize("kind", BROKEN_FILES)
def test_broken_files_fail_the_same_way(kind):
    make, message = BROKEN_FILES[kind]
    expected = outcome(flatfile_oracle.DayFileReader, make(good_file_bytes(DAY)))
    got = outcome(DayFileReader, make(good_file_bytes(DAY)))
    assert message in got["error"] and message in expected["error"]
    # How far a reader got before a gzip error depends on its read-ahead; the rest is the same.
    assert got["error"].split(" after ")[0] == expected["error"].split(" after ")[0]
    assert (got["rows"], got["quarantined"]) == (expected["rows"], expected["quarantined"]) == (None, [])


def test_line_ends_empty_lines_and_huge_lines_read_the_same(blocks):
    lines = [",".join(row("AAPL", m)) for m in range(10)]
    lines[2] = ""  # an empty line: a row of no columns
    lines[4] = ",".join(row("AAPL", 4, volume="1" * 140_000))  # beyond the csv module's field limit
    # The same for another ticker: the csv module refuses it before its ticker is seen.
    lines[5] = ",".join(row("ZZZ", 5, volume="2" * 140_000))
    lines[6] = ",".join(row("AAPL", 6, open_="0" * 100_000 + "10.0", close="10.0", high="11.0"))  # long but valid
    lines[7] = ",".join(["AAPL"] + ["9" * 100_000] * 20)  # wider than a block, of another width
    body = "\n".join(lines[:3]) + "\r\n" + "\r".join(lines[3:6]) + "\r\n\r\n" + "\n".join(lines[6:]) + "\r"
    result = assert_same(gzip.compress((HEADER_LINE + "\r\n" + body).encode()))
    assert result["kept"] == {"AAPL": 6}


def test_a_reordered_header_with_a_column_more_reads_the_same(blocks):
    header = "window_start,ticker,exchange,open,high,low,close,volume,transactions"
    lines = []
    for i, fields in enumerate([row("AAPL", m) for m in range(50)] + [row("BRK.B", 7, open_="x")]):
        by_name = dict(zip(HEADER_LINE.split(","), fields, strict=True))
        lines.append(",".join([by_name["window_start"], by_name["ticker"], f"X{i % 3}",
                               *(by_name[n] for n in ("open", "high", "low", "close", "volume", "transactions"))]))
    lines.append(",".join(row("AAPL", 60)))  # eight columns under a header of nine: its "ticker" is a volume
    result = assert_same(gz(lines, header=header))
    assert (result["kept"], len(result["quarantined"]), result["other"]) == ({"AAPL": 50}, 1, 1)
    assert assert_same(gz(lines, header=header), wanted=())["other"] == len(lines)


def test_duplicates_across_blocks_keep_the_first_bar(blocks):
    first = [",".join(row("AAPL", m, open_="10.0", close="10.0")) for m in range(300)]
    again = [",".join(row("AAPL", m, open_="10.25", close="10.25")) for m in range(0, 300, 7)]
    odd_first = [",".join(row("BRK.B", 3, open_=" 10.0 ", close="10.0")), ",".join(row("BRK.B", 3))]
    result = assert_same(gz([*first, *odd_first, *again]))
    assert result["duplicates"] == len(again) + 1
    assert all(r.open == 10.0 for r in result["rows"])


def test_crypto_aliases_read_the_same(blocks):
    from chronox.sample import crypto_day_rows

    rows = crypto_day_rows(DAY, ["BTC-USD", "ETH-USD"])
    lines = [",".join(str(v) for v in r) for r in rows]
    lines += ["X:BTCUSD,1,2,3,4,5,6", f"X:BTCUSD,1,10,10,10,10,{rows[0][6]},1"]  # wrong width; a duplicate
    aliases = {"X:BTC-USD": "BTC-USD", "X:BTCUSD": "BTC-USD", "X:ETH-USD": "ETH-USD"}
    start = dt.datetime.combine(DAY, dt.time(0), dt.UTC)
    bounds = (start, start + dt.timedelta(days=1))

    def read(reader_class):
        reader = reader_class(io.BytesIO(gz(lines)), DAY, list(aliases), "x", bounds=bounds, aliases=aliases)
        return list(reader), reader.stats.duplicates, [(q.symbol, q.reason) for q in reader.stats.quarantined]

    got = read(DayFileReader)
    assert got == read(flatfile_oracle.DayFileReader)
    assert {r.symbol for r in got[0]} == {"BTC-USD", "ETH-USD"} and got[1] == 1
    assert got[2] == [("BTC-USD", "expected 8 columns, got 7")]


@PROPERTY
@given(data=st.data())
def test_every_drawn_file_reads_the_same(blocks, data):
    slots = data.draw(st.lists(st.tuples(st.sampled_from(SYMBOLS), st.integers(0, 24 * 60 - 1)), max_size=40),
                      label="symbol-minutes (repeats are duplicates)")
    n_good = data.draw(st.integers(0, len(slots)))
    fields = [data.draw(good_rows(s, m))[0] for s, m in slots[:n_good]]
    fields += [data.draw(hostile_rows(s, m))[0] for s, m in slots[n_good:]]
    fields += [row(data.draw(OTHER_TICKERS), data.draw(st.integers(0, 1439)))
               for _ in range(data.draw(st.integers(0, 5)))]
    lines = data.draw(st.permutations([",".join(f) for f in fields]))
    lines += data.draw(st.lists(st.sampled_from(["", ",,,,,,,", "AAPL", "AAPL,,,,,,,"]), max_size=3))
    end = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
    assert_same(gz(data.draw(st.permutations(lines)), end=end))


def text_values(text: str) -> list[tuple]:
    """The old reader's COPY text lines as values."""
    out = []
    for line in text.splitlines():
        symbol, ts, *numbers, vwap, n, source = line.split("\t")
        out.append((symbol, dt.datetime.fromisoformat(ts), *map(float, numbers), None if vwap == "\\N" else vwap,
                    None if n == "\\N" else int(n), source))
    return out


POSTGRES_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def binary_values(blob: bytes) -> list[tuple]:
    """A binary COPY stream of ohlcv_1m rows read as PostgreSQL's documentation describes the
    format: signature, flags, header extension; per row a field count and per field a length
    (-1: NULL) and the value in network byte order."""
    assert blob[:11] == b"PGCOPY\n\xff\r\n\x00" and blob[-2:] == b"\xff\xff"
    flags, extension = struct.unpack_from(">ii", blob, 11)
    assert (flags, extension) == (0, 0)
    pos, out = 19, []
    while pos < len(blob) - 2:
        (count,) = struct.unpack_from(">h", blob, pos)
        pos += 2
        fields = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", blob, pos)
            pos += 4
            fields.append(None if length < 0 else blob[pos:pos + length])
            pos += max(length, 0)
        symbol, ts, *numbers, vwap, n, source = fields
        out.append((symbol.decode(), POSTGRES_EPOCH + dt.timedelta(microseconds=struct.unpack(">q", ts)[0]),
                    *(struct.unpack(">d", x)[0] for x in numbers), vwap,
                    None if n is None else struct.unpack(">i", n)[0], source.decode()))
    assert pos == len(blob) - 2
    return out


@PROPERTY
@given(data=st.data())
def test_copy_rows_hold_the_same_values(data):
    """What COPY receives: the vectorized reader sends the doubles it read (binary COPY);
    PostgreSQL stores exactly the values it read from the old reader's text lines."""
    slots = data.draw(st.lists(st.tuples(st.sampled_from(SYMBOLS), st.integers(0, 24 * 60 - 1)), unique=True,
                               max_size=30))
    lines = [",".join(data.draw(good_rows(s, m))[0]) for s, m in slots]
    blob = gz(lines)
    old = "".join(flatfile_oracle.DayFileReader(io.BytesIO(blob), DAY, SYMBOLS, "x").copy_lines("flatpack"))
    new = b"".join(DayFileRows(DayFileReader(io.BytesIO(blob), DAY, SYMBOLS, "x"), "flatpack").copy_lines())
    assert sorted(binary_values(new)) == sorted(text_values(old))
    assert len(binary_values(new)) == len(slots)
