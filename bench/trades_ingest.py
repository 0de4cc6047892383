"""Trades ingest: ChronoX loading a full-market trades day file for the 5 % of it the registry wants,
vs pyarrow reading and filtering the same file plus a COPY of the wanted rows.

The day file (`us_stocks_sip/trades_v1`, Polygon's columns and CSV format, synthetic values:
--rows trades over --tickers tickers, sorted by ticker then SIP time) is written once into
--cache-dir and reused by later runs. Then, on PostgreSQL:
  (a) ChronoX's trades day load (gzip + Arrow CSV parse + ticker filter + checks + dedup +
      COPY + coverage) of the wanted tickers into an empty `trades` table (partitioned per
      New York day), in a fresh process so its peak memory is its own; Kafka off;
  (b) pyarrow's streaming CSV reader over the same gzip file, keeping the wanted tickers'
      rows (pyarrow's own gzip input, binary columns, nothing checked), and
  (c) a plain COPY of those rows, rendered before timing, into an identical empty table.
Last line: `trades_ingest ratio=<(b + c) seconds / (a) seconds>` (target >= 0.8).
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PG_ADMIN_URL, in_fresh_process, peak_rss_mb  # noqa: E402

from chronox.testing.services import temporary_database  # noqa: E402

DAY = dt.date(2024, 3, 5)
CHUNK_TICKERS = 200  # tickers generated and compressed at a time


def ticker_names(count: int) -> list[str]:
    import itertools
    import string

    return ["".join(p) for n in (3, 4) for p in itertools.product(string.ascii_uppercase, repeat=n)][:count]


def day_file(cache: Path, rows: int, tickers: int) -> tuple[Path, Path]:
    """(flat-files root, the day file), written unless a complete one is cached."""
    import pyarrow as pa

    from chronox.sample_ticks import tick_file_path, trade_lines
    from chronox.ticks import TRADE_KIND

    root = cache / f"trades_{rows}_{tickers}"
    path = tick_file_path(root, "trades", DAY)
    done = path.with_suffix(".done")
    if done.exists():
        return root, path
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ticker_names(tickers)
    per_ticker = rows // tickers
    started = time.perf_counter()
    with pa.CompressedOutputStream(str(path), "gzip") as out:
        out.write((",".join(TRADE_KIND.header) + "\n").encode())
        for i in range(0, tickers, CHUNK_TICKERS):
            lines = trade_lines(DAY, names[i:i + CHUNK_TICKERS], per_ticker, seed=i)
            out.write(_joined(lines))
    done.write_text(f"{rows} rows, written in {time.perf_counter() - started:.0f} s\n")
    return root, path


def _joined(lines) -> bytes:  # type: ignore[no-untyped-def]
    """Lines of a binary array, each ended with a newline."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from chronox.sources.flatfiles import concatenated

    return concatenated(pc.binary_join_element_wise(lines, pa.scalar(b"\n", pa.binary()),
                                                    pa.scalar(b"", pa.binary())))


def chronox_load(url: str, root: str, symbols: list[str], queue) -> None:  # type: ignore[no-untyped-def]
    """Runs in a fresh process: the first load into an empty table, timed, with its peak memory."""
    os.environ["CHRONOX_DATABASE_URL"] = url
    os.environ["CHRONOX_FLATFILES_URL"] = root
    from chronox import ticks
    from chronox.settings import load_settings

    settings = load_settings()
    import pyarrow as pa

    pa.array([b"warm"], pa.binary())  # pyarrow imports pandas at its first array: once per process, not per load
    started = time.perf_counter()
    result = ticks.load_day(settings, "trades", DAY, symbols)
    seconds = time.perf_counter() - started
    queue.put({**result, "seconds": seconds, "peak_mb": peak_rss_mb()})


def baseline_read(path: Path, symbols: list[str]) -> tuple[float, list]:  # type: ignore[type-arg]
    """pyarrow reading the file (its own gzip stream) and keeping the wanted tickers' rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    from chronox.ticks import TRADE_KIND

    wanted = pa.array([s.encode() for s in symbols], pa.binary())
    started = time.perf_counter()
    reader = pa_csv.open_csv(pa.input_stream(str(path), compression="gzip"),
                             read_options=pa_csv.ReadOptions(block_size=1 << 23),
                             convert_options=pa_csv.ConvertOptions(
                                 column_types={name: pa.binary() for name in TRADE_KIND.header}))
    kept = [batch.filter(pc.is_in(batch.column("ticker"), value_set=wanted)) for batch in reader]
    return time.perf_counter() - started, kept


def baseline_copy(url: str, batches: list) -> tuple[int, float]:  # type: ignore[type-arg]
    """A plain COPY of the kept rows, rendered before timing, into a table made like `trades`
    (the same columns, key and day partition)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from sqlalchemy import text

    from chronox.db import get_engine
    from chronox.tick_store import COLUMNS

    field_of = {"trade_id": "id"}
    pieces = []
    for batch in batches:
        sip = pc.cast(batch.column("sip_timestamp"), pa.int64())
        ts = pc.strftime(pc.cast(pc.divide(sip, 1000), pa.timestamp("us", tz="UTC")), "%Y-%m-%d %H:%M:%S+00")
        parts = [batch.column("ticker"), ts.cast(pa.binary())]
        parts += [batch.column(field_of.get(c, c)) for c in COLUMNS["trades"][2:-1]]
        lines = pc.binary_join_element_wise(*parts, pa.scalar(b"flatpack\n", pa.binary()),
                                            pa.scalar(b"\t", pa.binary()), null_handling="replace",
                                            null_replacement="\\N")
        pieces.append(b"".join(v.as_py() for v in lines))
    data = b"".join(pieces)
    engine = get_engine(url)
    start = dt.datetime.combine(DAY, dt.time(0), dt.timezone(dt.timedelta(hours=-5)))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE trades_baseline (LIKE trades INCLUDING ALL) PARTITION BY RANGE (ts)"))
        conn.execute(text("CREATE TABLE trades_baseline_day PARTITION OF trades_baseline FOR VALUES FROM "
                          f"('{start.isoformat()}') TO ('{(start + dt.timedelta(days=1)).isoformat()}')"))
        conn.execute(text("CREATE TABLE trades_baseline_default PARTITION OF trades_baseline DEFAULT"))
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            started = time.perf_counter()
            cursor.copy_expert(f"COPY trades_baseline ({', '.join(COLUMNS['trades'])}) FROM STDIN", io.BytesIO(data),
                               size=1 << 20)
            raw.commit()
            return data.count(b"\n"), time.perf_counter() - started
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="trades in the day file")
    parser.add_argument("--tickers", type=int, default=10_000)
    parser.add_argument("--wanted", type=float, default=0.05, help="share of the tickers (and rows) registered")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "chronox-bench")
    args = parser.parse_args()

    from chronox import registry
    from chronox.db import get_engine

    started = time.perf_counter()
    root, path = day_file(args.cache_dir, args.rows, args.tickers)
    names = ticker_names(args.tickers)
    step = round(1 / args.wanted)
    symbols = names[::step]
    print(f"day file: {path} ({path.stat().st_size / 1e6:.0f} MB gzip, {args.rows:,} trades of {args.tickers:,} "
          f"tickers; ready in {time.perf_counter() - started:.1f} s)")
    with temporary_database("chronox_bench", PG_ADMIN_URL) as url:
        registry.add_symbols(get_engine(url), symbols, "trades")  # the wanted tickers, with the trades phase
        result = in_fresh_process(chronox_load, url, str(root), symbols)
        read_s, batches = baseline_read(path, symbols)
        kept = sum(b.num_rows for b in batches)
        copied, copy_s = baseline_copy(url, batches)
        assert result["rows"] == kept == copied, (result, kept, copied)
        baseline = read_s + copy_s
        print(f"wanted: {len(symbols):,} tickers, {kept:,} trades ({kept / args.rows:.1%} of the file)")
        print(f"chronox load: {result['seconds']:.2f} s ({kept / result['seconds']:,.0f} wanted trades/s, "
              f"{args.rows / result['seconds']:,.0f} file rows/s), peak memory {result['peak_mb']:.0f} MB, "
              f"quarantined {result['quarantined']}, duplicates {result['duplicates']}")
        print(f"pyarrow read + filter: {read_s:.2f} s ({args.rows / read_s:,.0f} file rows/s)")
        print(f"plain COPY of the wanted rows (pre-rendered): {copy_s:.2f} s ({copied / copy_s:,.0f} rows/s)")
        print(f"baseline (read + filter, then COPY): {baseline:.2f} s")
        print(f"trades_ingest ratio={baseline / result['seconds']:.2f}")


if __name__ == "__main__":
    main()
