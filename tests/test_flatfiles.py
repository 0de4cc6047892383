"""The day-file reader: Polygon's format, units, bad rows, duplicates, broken gzip."""
import datetime as dt
import gzip
import io

import pytest

from chronox.calendar import day_bounds_utc
from chronox.sources.flatfiles import DayFileReader, FlatFileError

DAY = dt.date(2024, 1, 2)
DAY_START_NS = int(day_bounds_utc(DAY)[0].timestamp()) * 10**9
HEADER = "ticker,volume,open,close,high,low,window_start,transactions"


def ns(minute: int) -> int:
    return DAY_START_NS + minute * 60 * 10**9


def gz(text: str) -> io.BytesIO:
    return io.BytesIO(gzip.compress(text.encode()))


def read(text: str, wanted=("AAPL", "MSFT")):
    reader = DayFileReader(gz(text), DAY, wanted, "test.csv.gz")
    return list(reader), reader


def test_reads_polygon_rows_and_converts_nanoseconds_to_the_window_start():
    rows, reader = read(f"{HEADER}\nAAPL,4930,200.29,200.5,200.63,200.29,{ns(570)},129\n")
    assert len(rows) == 1
    row = rows[0]
    assert (row.symbol, row.open, row.high, row.low, row.close, row.volume, row.transactions) == \
        ("AAPL", 200.29, 200.63, 200.29, 200.5, 4930.0, 129)
    # 09:30 New York on 2024-01-02 is 14:30 UTC
    assert reader.minute_times[row.minute] == dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)
    assert reader.minute_iso[row.minute] == "2024-01-02T14:30:00Z"


def test_other_tickers_are_skipped_not_quarantined():
    rows, reader = read(f"{HEADER}\nZZZ,1,1,1,1,1,{ns(600)},1\nAAPL,1,1,1,1,1,{ns(600)},1\n")
    assert [r.symbol for r in rows] == ["AAPL"]
    assert reader.stats.other_tickers == 1 and reader.stats.quarantined == []


def test_fractional_volume_parses():
    rows, _ = read(f"{HEADER}\nAAPL,1234.5678,10,10,10,10,{ns(600)},3\n")
    assert rows[0].volume == pytest.approx(1234.5678)


@pytest.mark.parametrize("line,reason", [
    ("AAPL,100,10,10,9,9,{ts},1", "high 9.0 below"),
    ("AAPL,100,10,10,11,10.5,{ts},1", "low 10.5 above"),
    ("AAPL,100,0,10,10,10,{ts},1", "open must be a positive"),
    ("AAPL,100,-1,10,10,-2,{ts},1", "positive"),
    ("AAPL,-5,10,10,10,10,{ts},1", "volume must be finite and >= 0"),
    ("AAPL,100,abc,10,10,10,{ts},1", "unparseable field"),
    ("AAPL,100,nan,10,10,10,{ts},1", "positive finite"),
    ("AAPL,100,10,10,inf,10,{ts},1", ""),
    ("AAPL,100,10,10,10,10,{ms},1", "epoch nanoseconds expected"),
    ("AAPL,100,10,10,10,10,{off},1", "not a minute"),
    ("AAPL,100,10,10,10", "expected 8 columns"),
    ("AAPL,100,10,10,10,10,{ts},-3", "transactions must be >= 0"),
])
def test_bad_rows_are_quarantined_with_a_reason(line, reason):
    bad = line.format(ts=ns(600), ms=ns(600) // 10**6, off=ns(600) + 17)
    rows, reader = read(f"{HEADER}\n{bad}\nAAPL,1,10,10,10,10,{ns(601)},1\n")
    assert len(rows) == 1 and rows[0].minute == 601
    [q] = reader.stats.quarantined
    assert reason in q.reason
    assert q.raw.startswith("AAPL") and q.origin == "test.csv.gz"


def test_duplicate_window_start_keeps_one_bar():
    text = (f"{HEADER}\nAAPL,1,10,10,10,10,{ns(600)},1\nAAPL,2,11,11,11,11,{ns(600)},1\n"
            f"MSFT,1,10,10,10,10,{ns(600)},1\n")
    rows, reader = read(text)
    assert [(r.symbol, r.volume) for r in rows] == [("AAPL", 1.0), ("MSFT", 1.0)]
    assert reader.stats.duplicates == 1
    assert reader.stats.rows_kept == {"AAPL": 1, "MSFT": 1}


def test_header_columns_may_be_reordered_but_not_missing():
    rows, _ = read(f"window_start,ticker,open,high,low,close,volume,transactions\n{ns(600)},AAPL,1,2,0.5,1.5,7,1\n")
    assert (rows[0].open, rows[0].high, rows[0].low, rows[0].close, rows[0].volume) == (1, 2, 0.5, 1.5, 7)
    with pytest.raises(FlatFileError, match="header lacks transactions"):
        read(f"ticker,volume,open,close,high,low,window_start\nAAPL,1,1,1,1,1,{ns(600)}\n")


def test_truncated_gzip_is_a_clear_error_after_the_rows_read_so_far():
    body = HEADER + "\n" + "".join(f"AAPL,1,10,10,10,10,{ns(m)},1\n" for m in range(240, 1200))
    blob = gzip.compress(body.encode())
    reader = DayFileReader(io.BytesIO(blob[: len(blob) // 2]), DAY, ["AAPL"], "cut.csv.gz")
    with pytest.raises(FlatFileError, match="cut.csv.gz: corrupt or truncated gzip after"):
        list(reader)


def test_not_gzip_is_a_clear_error():
    with pytest.raises(FlatFileError, match="not.gz"):
        list(DayFileReader(io.BytesIO(b"ticker,volume\nAAPL,1\n"), DAY, ["AAPL"], "not.gz"))


def test_empty_file_is_a_clear_error():
    with pytest.raises(FlatFileError, match="empty file"):
        list(DayFileReader(gz(""), DAY, ["AAPL"], "empty.gz"))


def test_sample_files_follow_the_calendar(tmp_path):
    from chronox.calendar import session
    from chronox.sample import day_rows, write_sample_files

    written = write_sample_files(tmp_path, dt.date(2024, 11, 27), dt.date(2024, 11, 29), ["AAPL"])
    assert sorted(written) == [dt.date(2024, 11, 27), dt.date(2024, 11, 29)]  # Thanksgiving: no file
    assert not (tmp_path / "us_stocks_sip/minute_aggs_v1/2024/11/2024-11-28.csv.gz").exists()
    half_day = session(dt.date(2024, 11, 29))
    assert half_day.early_close
    rows = day_rows(dt.date(2024, 11, 29), ["AAPL"])
    last = max(r[6] for r in rows) // 10**9
    assert last < half_day.extended_close.timestamp()  # after-hours ends at 17:00 on a half day
    assert last >= half_day.regular_close.timestamp()  # after-hours trades past the 13:00 close
    full_day_minutes = 16 * 60
    assert len(day_rows(dt.date(2024, 11, 27), ["AAPL"])) < full_day_minutes  # minutes without trades left out
