"""Growth: does the cost of a day's load grow with the history already stored?

Writes 120 consecutive trading days of minute bars for 2,000 symbols (chronox.sample's
synthetic day files), then loads them one day after another into ohlcv_1m on PostgreSQL
through ChronoX's day load (the same call a `chronox.phase.flatpack_day` task makes: parse,
validate, COPY, rollups, coverage), timing each day. With ohlcv_1m partitioned by month a
day's load writes into one month's partition, whatever lies in the others.

To keep the run near five minutes the symbols trade thinly (liquidity 0.25 in chronox.sample:
about 130 bars per symbol-day rather than the 500-odd of a liquid name, about 260,000 rows a
day, 31 M in all), and every day's file holds the first day's synthetic bars moved to that day.

Last line: `growth ratio=<mean of the last 10 days' loads / mean of the first 10 days'>`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PG_ADMIN_URL  # noqa: E402

from chronox.testing.services import temporary_database  # noqa: E402

FIRST_DAY = dt.date(2024, 1, 2)
LIQUIDITY = 0.25


def tickers(count: int) -> list[str]:
    return ["".join(p) for p in itertools.product(string.ascii_uppercase, repeat=3)][:count]


def write_files(root: Path, days: list[dt.date], names: list[str]) -> int:
    """One file per day: the first day's sample rows, their window starts moved to each day."""
    from chronox.calendar import day_bounds_utc
    from chronox.sample import day_rows, write_day_file

    template = day_rows(days[0], names, {name: LIQUIDITY for name in names})
    start_ns = int(day_bounds_utc(days[0])[0].timestamp()) * 10**9
    for day in days:
        shift = int(day_bounds_utc(day)[0].timestamp()) * 10**9 - start_ns
        write_day_file(root, day, [(t, v, o, c, h, low, ws + shift, n) for t, v, o, c, h, low, ws, n in template])
    return len(template)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--window", type=int, default=10, help="days averaged at each end")
    args = parser.parse_args()
    from chronox.calendar import trading_days

    days = trading_days(FIRST_DAY, FIRST_DAY + dt.timedelta(days=2 * args.days))[:args.days]
    names = tickers(args.symbols)
    with tempfile.TemporaryDirectory() as tmp, temporary_database("chronox_bench_growth", PG_ADMIN_URL) as url:
        started = time.perf_counter()
        rows = write_files(Path(tmp), days, names)
        print(f"{len(days)} day files ({days[0]} to {days[-1]}): {args.symbols} symbols, {rows:,} rows each "
              f"(generated in {time.perf_counter() - started:.0f} s)")
        os.environ["CHRONOX_DATABASE_URL"] = url
        os.environ["CHRONOX_FLATFILES_URL"] = tmp
        from chronox.backfill import load_day
        from chronox.settings import load_settings

        settings = load_settings()
        seconds = []
        for number, day in enumerate(days, 1):
            started = time.perf_counter()
            result = load_day(settings, day.isoformat(), names)
            seconds.append(time.perf_counter() - started)
            assert "error" not in result and result["rows"] == rows, result
            print(f"day {number:3d} {day}: {seconds[-1]:.2f} s ({rows * number:,} rows stored)", flush=True)
        first, last = statistics.mean(seconds[:args.window]), statistics.mean(seconds[-args.window:])
        from sqlalchemy import text

        from chronox.db import get_engine

        with get_engine(url).connect() as conn:
            months = conn.execute(text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'ohlcv_1m'::regclass"))
            print(f"ohlcv_1m: {rows * len(days):,} rows in {months.scalar()} partitions (months and the default)")
        print(f"first {args.window} days: mean {first:.2f} s, {rows / first:,.0f} rows/s")
        print(f"last {args.window} days: mean {last:.2f} s, {rows / last:,.0f} rows/s")
        print(f"growth ratio={last / first:.2f}")


if __name__ == "__main__":
    main()
