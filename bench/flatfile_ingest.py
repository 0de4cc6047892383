"""Flat-file ingest: ChronoX loading a full-market day file vs a plain COPY of the same rows.

Generates a synthetic day file (>= 10,000 tickers, >= 1.5 M rows; a few thousand liquid
names trade most minutes, the long tail rarely), then on PostgreSQL measures:
  (a) ChronoX's day load (gzip + CSV parse + validation + COPY + coverage) into an
      empty ohlcv_1m, in a fresh process so its peak memory is its own;
  (a') the same load again with every row already present (the idempotent reload);
  (b) a plain COPY of the same rows, pre-rendered in memory as text, into an identical empty
      table (partitioned as ohlcv_1m is); and, for comparison, a binary COPY of them (the
      format ChronoX's load sends).
  (b') a plain COPY of the rollup rows the first load wrote (ohlcv_5m, 15m, 1h), the same way.
Last line: `flatfile_ingest ratio=<chronox rows/s / COPY rows/s>` (the minute rows' text COPY (b)).
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PG_ADMIN_URL, in_fresh_process, peak_rss_mb  # noqa: E402

from chronox import store  # noqa: E402
from chronox.testing.services import temporary_database  # noqa: E402

DAY = dt.date(2024, 3, 5)


def tickers_and_liquidity(count: int) -> tuple[list[str], dict[str, float]]:
    import itertools
    import string

    names = ["".join(p) for n in (3, 4) for p in itertools.product(string.ascii_uppercase, repeat=n)][:count]
    liquidity = {}
    for i, name in enumerate(names):
        # About 2,300 names trade nearly every minute; the tail is thin, as in real data.
        liquidity[name] = 1.0 if i < 2300 else 0.03 + 0.12 * ((i * 7919) % 100) / 100
    return names, liquidity


def generate(root: Path, count: int) -> tuple[int, list[str]]:
    from chronox.sample import day_rows, write_day_file

    names, liquidity = tickers_and_liquidity(count)
    rows = day_rows(DAY, names, liquidity)
    write_day_file(root, DAY, rows)
    return len(rows), names


def chronox_load(url: str, root: str, symbols: list[str], queue) -> None:  # type: ignore[no-untyped-def]
    """Runs in a fresh process: two loads (first, reload), timing and peak memory."""
    os.environ["CHRONOX_DATABASE_URL"] = url
    os.environ["CHRONOX_FLATFILES_URL"] = root
    from chronox import rollups
    from chronox.backfill import load_day
    from chronox.day_rollups import DayRollups
    from chronox.settings import load_settings

    # What keeping ohlcv_5m/15m/1h current costs inside the loads: writing the rollups a day
    # load made from its rows (or the SQL refresh, where a load uses that), timed where it runs.
    in_refresh: list[float] = []

    def timed(function):  # type: ignore[no-untyped-def]
        def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            function(*args, **kwargs)
            in_refresh.append(time.perf_counter() - started)
        return run

    rollups.refresh = timed(rollups.refresh)
    DayRollups.write = timed(DayRollups.write)
    settings = load_settings()
    started = time.perf_counter()
    first = load_day(settings, DAY.isoformat(), symbols)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = load_day(settings, DAY.isoformat(), symbols)
    reload_s = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    queue.put({"rows": first["rows"], "reload_rows": again["rows"], "first_s": first_s,
               "reload_s": reload_s, "peak_mb": peak_mb, "quarantined": first["quarantined"],
               "rollup_s": in_refresh[0]})


ROLLUP_TABLES = ("ohlcv_5m", "ohlcv_15m", "ohlcv_1h")
MINUTE_COLUMNS, ROLLUP_COLUMNS = (", ".join(columns) for columns in (store.COPY_COLUMNS, store.ROLLUP_COLUMNS))
FORMATS = {"text": "", "binary": " WITH (FORMAT binary)"}


def _timed_copy(engine, table: str, data: bytes, columns: str, form: str) -> float:  # type: ignore[no-untyped-def]
    raw_conn = engine.raw_connection()
    try:
        with raw_conn.cursor() as cursor:
            started = time.perf_counter()
            cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN{FORMATS[form]}", io.BytesIO(data), size=1 << 20)
            raw_conn.commit()
            return time.perf_counter() - started
    finally:
        raw_conn.close()


def plain_copy(url: str) -> dict[str, float | int]:
    """Baselines: the rows the first load stored, dumped before timing, COPYed into a table
    made like ohlcv_1m: the same columns, key and partitioning (the day's month partition and a
    default); the rollup rows it wrote, COPYed the same way into tables like theirs. Each in
    text (PostgreSQL's own rendering: shortest exact numbers) and in binary COPY, into tables
    of their own. Row counts and seconds by name."""
    from sqlalchemy import text

    from chronox.db import get_engine

    month, next_month = DAY.replace(day=1), (DAY.replace(day=1) + dt.timedelta(days=31)).replace(day=1)
    engine = get_engine(url)
    dumps: dict[tuple[str, str], bytes] = {}
    raw_conn = engine.raw_connection()
    try:
        with raw_conn.cursor() as cursor:
            for form, option in FORMATS.items():
                for table, columns in (("ohlcv_1m", MINUTE_COLUMNS), *((t, ROLLUP_COLUMNS) for t in ROLLUP_TABLES)):
                    out = io.BytesIO()
                    # In the file's order (ticker, then time), as a load of the file would send them.
                    cursor.copy_expert(f"COPY (SELECT {columns} FROM {table} ORDER BY 1, 2) TO STDOUT{option}", out)
                    dumps[table, form] = out.getvalue()
    finally:
        raw_conn.close()
    with engine.begin() as conn:
        for form in FORMATS:
            base = f"ohlcv_1m_{form}"
            conn.execute(text(f"CREATE TABLE {base} (LIKE ohlcv_1m INCLUDING ALL) PARTITION BY RANGE (ts)"))
            conn.execute(text(f"CREATE TABLE {base}_month PARTITION OF {base} FOR VALUES "
                              f"FROM ('{month} 00:00+00') TO ('{next_month} 00:00+00')"))
            conn.execute(text(f"CREATE TABLE {base}_default PARTITION OF {base} DEFAULT"))
            for table in ROLLUP_TABLES:
                conn.execute(text(f"CREATE TABLE {table}_{form} (LIKE {table} INCLUDING ALL)"))
    out: dict[str, float | int] = {
        "minute_rows": dumps["ohlcv_1m", "text"].count(b"\n"),
        "rollup_rows": sum(dumps[t, "text"].count(b"\n") for t in ROLLUP_TABLES)}
    for form in FORMATS:
        out[f"minutes_{form}_s"] = _timed_copy(engine, f"ohlcv_1m_{form}", dumps["ohlcv_1m", form], MINUTE_COLUMNS,
                                               form)
        out[f"rollups_{form}_s"] = sum(_timed_copy(engine, f"{table}_{form}", dumps[table, form], ROLLUP_COLUMNS,
                                                   form) for table in ROLLUP_TABLES)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=10_000)
    args = parser.parse_args()

    from chronox import registry
    from chronox.db import get_engine

    with tempfile.TemporaryDirectory() as tmp, temporary_database("chronox_bench", PG_ADMIN_URL) as url:
        root = Path(tmp)
        started = time.perf_counter()
        rows, symbols = generate(root, args.tickers)
        size_mb = sum(p.stat().st_size for p in root.rglob("*.gz")) / 1e6
        print(f"day file: {args.tickers} tickers, {rows} rows, {size_mb:.1f} MB gzip "
              f"(generated in {time.perf_counter() - started:.1f} s)")
        engine = get_engine(url)
        registry.add_symbols(engine, symbols, "flatpack")  # every ticker, as a full-market deployment has
        result = in_fresh_process(chronox_load, url, str(root), symbols)
        assert result["rows"] == rows == result["reload_rows"], result
        base = plain_copy(url)
        assert base["minute_rows"] == rows
        copy_s, rollup_rows = base["minutes_text_s"], base["rollup_rows"]
        chronox_rate = rows / result["first_s"]
        copy_rate = rows / copy_s
        print(f"chronox first load: {result['first_s']:.2f} s, {chronox_rate:,.0f} rows/s")
        print(f"chronox reload (all rows present): {result['reload_s']:.2f} s, "
              f"{result['reload_s'] / result['first_s']:.2f}x first load")
        print(f"chronox peak memory: {result['peak_mb']:.0f} MB")
        without = result["first_s"] - result["rollup_s"]
        print(f"rollups (ohlcv_5m, ohlcv_15m, ohlcv_1h) written inside the first load: {result['rollup_s']:.2f} s, "
              f"{result['rollup_s'] / without:.0%} more than the load without them (target <= 15%)")
        print(f"plain COPY (pre-rendered text): {copy_s:.2f} s, {copy_rate:,.0f} rows/s; binary COPY of the same "
              f"rows: {base['minutes_binary_s']:.2f} s")
        print(f"chronox first load without writing its rollups: {without:.2f} s, {rows / without:,.0f} rows/s, "
              f"{copy_s / without:.2f} of the plain COPY, {base['minutes_binary_s'] / without:.2f} of the binary COPY")
        every_text = copy_s + base["rollups_text_s"]
        every_binary = base["minutes_binary_s"] + base["rollups_binary_s"]
        print(f"plain COPY of every row the first load writes ({rows:,} minutes and {rollup_rows:,} rollup rows of "
              f"ohlcv_5m/15m/1h, pre-rendered): text {every_text:.2f} s, {every_text / result['first_s']:.2f} of "
              f"ChronoX's first load; binary {every_binary:.2f} s, {every_binary / result['first_s']:.2f}")
        print(f"chronox first load vs a binary COPY of its minute rows: "
              f"{base['minutes_binary_s'] / result['first_s']:.2f}")
        print(f"flatfile_ingest ratio={chronox_rate / copy_rate:.2f}")


if __name__ == "__main__":
    main()
