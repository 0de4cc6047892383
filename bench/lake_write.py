"""Lake write: a full-market day into the Parquet lake through ChronoX's sink vs pyarrow.

Loads a synthetic full-market day (10,000 symbols, about 1.5 M minute bars: a few thousand
liquid names trade most minutes, the long tail rarely) into ohlcv_1m on PostgreSQL, then:
  (a) ChronoX's lake sink for every symbol of the day: reads the committed rows, writes one
      Parquet file per symbol-day atomically under bars/market=/tf=/symbol=/date=, records
      sink_state (digests, so a rerun writes nothing);
  (a') the same again, nothing changed (every symbol-day found unchanged);
  (b) the baseline: the same rows read the same way, then pyarrow.dataset.write_dataset
      writing that table with the same Hive partitioning and compression, one file per
      partition.
Rounds alternate (a) and (b) into fresh directories; medians are reported.
Last line: `lake_write ratio=<baseline seconds / ChronoX seconds>` (>= 0.7 is the target).
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PG_ADMIN_URL  # noqa: E402

from chronox.testing.services import temporary_database  # noqa: E402

DAY = dt.date(2024, 3, 5)


def market_day_csv(symbols: int, liquid: int, liquid_bars: int, tail_bars: int) -> tuple[str, int]:
    """COPY text of the day's bars (columns of ohlcv_1m) and how many rows."""
    import numpy as np

    from chronox.calendar import session

    opens = session(DAY).extended_open
    rng = np.random.default_rng(7)
    out = io.StringIO()
    rows = 0
    for i in range(symbols):
        name = f"S{i:05d}"
        n = liquid_bars if i < liquid else tail_bars
        minutes = np.sort(rng.choice(960, size=n, replace=False))
        close = 20 + 300 * rng.random() + np.cumsum(rng.normal(0, 0.05, n))
        spread = np.abs(rng.normal(0, 0.04, n))
        for m, c, s, v, k in zip(minutes, close, spread, rng.integers(100, 50_000, n), rng.integers(1, 400, n),
                                 strict=True):
            ts = opens + dt.timedelta(minutes=int(m))
            out.write(f"{name}\t{ts.isoformat()}\t{c - s / 2:.4f}\t{c + s:.4f}\t{c - s:.4f}\t{c:.4f}\t{v}\t"
                      f"{c:.4f}\t{k}\tflatpack\n")
        rows += n
    return out.getvalue(), rows


def load(url: str, text: str) -> None:
    from chronox.db import get_engine

    engine = get_engine(url)
    with engine.begin() as conn:
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cursor:  # type: ignore[union-attr]
            cursor.copy_expert("COPY ohlcv_1m (symbol, ts, open, high, low, close, volume, vwap, transactions, "
                               "source) FROM STDIN", io.StringIO(text))
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE ohlcv_1m")


def chronox_write(url: str, root: str, symbols: list[str]) -> tuple[float, dict]:
    from chronox.db import get_engine
    from chronox.settings import load_settings
    from chronox.sinks.lake import sync_bars

    os.environ["CHRONOX_LAKE_URL"] = root
    settings = load_settings()
    started = time.perf_counter()
    result = sync_bars(settings, symbols, [DAY], get_engine(url))
    return time.perf_counter() - started, result.as_dict()


def baseline_write(url: str, root: str, symbols: list[str]) -> tuple[float, float]:
    """(seconds to read the day the way the sink does, seconds for pyarrow to write it)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from chronox.calendar import calendar_for
    from chronox.db import get_engine
    from chronox.sinks import frames
    from chronox.sinks.lake import COMPRESSION

    started = time.perf_counter()
    with get_engine(url).connect() as conn:
        table = frames.read_bars(conn, symbols, *calendar_for("stocks").day_bounds(DAY))  # as the sink reads a day
    read = time.perf_counter() - started
    n = table.num_rows
    table = (table.append_column("market", pa.array(["stocks"] * n)).append_column("tf", pa.array(["1m"] * n))
             .append_column("date", pa.array([DAY.isoformat()] * n)))
    partitioning = ds.partitioning(pa.schema([("market", pa.string()), ("tf", pa.string()),
                                              ("symbol", pa.string()), ("date", pa.string())]), flavor="hive")
    started = time.perf_counter()
    ds.write_dataset(table, f"{root}/bars", format="parquet", partitioning=partitioning,
                     basename_template="part-{i}.parquet", max_partitions=len(symbols) + 1,
                     max_open_files=len(symbols) + 1, existing_data_behavior="overwrite_or_ignore",
                     file_options=ds.ParquetFileFormat().make_write_options(compression=COMPRESSION))
    return read, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10_000)
    parser.add_argument("--liquid", type=int, default=2_300)
    parser.add_argument("--liquid-bars", type=int, default=600)
    parser.add_argument("--tail-bars", type=int, default=17)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    text, rows = market_day_csv(args.symbols, args.liquid, args.liquid_bars, args.tail_bars)
    symbols = [f"S{i:05d}" for i in range(args.symbols)]
    print(f"market day {DAY}: {args.symbols:,} symbols, {rows:,} bars")
    with temporary_database("chronox_bench_lake", PG_ADMIN_URL) as url, tempfile.TemporaryDirectory() as tmp:
        os.environ["CHRONOX_DATABASE_URL"] = url
        load(url, text)
        ours, base_read, base_write, rerun = [], [], [], []
        for i in range(args.rounds):
            from sqlalchemy import text as sql

            from chronox.db import get_engine

            with get_engine(url).begin() as conn:
                conn.execute(sql("DELETE FROM sink_state"))  # a first write each round
            seconds, result = chronox_write(url, f"{tmp}/chronox{i}", symbols)
            assert result["written"] == args.symbols and result["rows"] == rows, result
            ours.append(seconds)
            again, result = chronox_write(url, f"{tmp}/chronox{i}", symbols)
            assert result["written"] == 0 and result["unchanged"] == args.symbols, result
            rerun.append(again)
            read, write = baseline_write(url, f"{tmp}/pyarrow{i}", symbols)
            base_read.append(read)
            base_write.append(write)
            files = sum(1 for _ in Path(f"{tmp}/pyarrow{i}/bars").rglob("*.parquet"))
            assert files == args.symbols, files
            print(f"round {i + 1}: ChronoX {seconds:.2f} s (rerun {again:.2f} s); "
                  f"pyarrow read {read:.2f} s + write {write:.2f} s")
        chronox_s = statistics.median(ours)
        baseline_s = statistics.median(r + w for r, w in zip(base_read, base_write, strict=True))
        write_only = statistics.median(base_write)
        print(f"ChronoX sink: {chronox_s:.2f} s, {rows / chronox_s:,.0f} bars/s, {args.symbols / chronox_s:,.0f} "
              f"files/s; unchanged rerun {statistics.median(rerun):.2f} s")
        print(f"pyarrow: read {statistics.median(base_read):.2f} s + write_dataset {write_only:.2f} s = "
              f"{baseline_s:.2f} s ({rows / baseline_s:,.0f} bars/s)")
        print(f"write-only ratio (pyarrow write / ChronoX sink without its read): "
              f"{write_only / max(chronox_s - statistics.median(base_read), 1e-9):.2f}")
    print(f"lake_write ratio={baseline_s / chronox_s:.2f}")


if __name__ == "__main__":
    main()
