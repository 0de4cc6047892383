"""Gap scan at scale: `chronox gaps` over 10,000 registered stock symbols with a year of
coverage on PostgreSQL (one coverage row per symbol and NYSE trading day of 2024, about
2.5 M rows, 1 % of the symbol-days missing at random) versus a `count(*)` of the same
coverage rows, both in this process on the same database.

The command runs in-process (click's test runner: argument parsing, planning, the scan,
the text output), so neither side pays for starting Python. Every run's gaps are checked
against the planted missing days.
Last line: `gap_scan ratio=<chronox seconds / count(*) seconds>`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PG_ADMIN_URL  # noqa: E402

from chronox.testing.services import temporary_database  # noqa: E402

YEAR_START, YEAR_END = dt.date(2024, 1, 1), dt.date(2024, 12, 31)


def populate(url: str, symbols: int, missing_percent: int) -> tuple[int, int]:
    """Registry rows and coverage rows; (coverage rows, planted missing symbol-days)."""
    from sqlalchemy import text

    from chronox.calendar import NYSE
    from chronox.db import get_engine

    days = NYSE.trading_days(YEAR_START, YEAR_END)
    with get_engine(url).begin() as conn:
        conn.execute(text(
            "INSERT INTO symbol_registry "
            "  (symbol, strategy, timeframe, market, provider, enabled, last_backfill, status) "
            "SELECT 'G' || lpad(i::text, 5, '0'), 'flatpack+api', '1m', 'stocks', 'polygon', true, "
            "       :before, 'completed' FROM generate_series(0, :n - 1) AS i"),
            {"n": symbols, "before": YEAR_START - dt.timedelta(days=1)})
        # A deterministic pseudo-random 1 %: the same days are missing in every run.
        conn.execute(text(
            "INSERT INTO coverage (symbol, trading_day, source, rows) "
            "SELECT r.symbol, d, 'flatpack', 390 FROM symbol_registry r, unnest(CAST(:days AS date[])) AS d "
            "WHERE abs(hashtext(r.symbol || d::text)) % 100 >= :pct"), {"days": days, "pct": missing_percent})
        covered = int(conn.execute(text("SELECT count(*) FROM coverage")).scalar_one())
    with get_engine(url).connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return covered, symbols * len(days) - covered


def run_chronox(expected_gaps: int, symbols: int) -> float:
    from click.testing import CliRunner

    from chronox.cli import cli

    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["gaps", "--start", YEAR_START.isoformat(), "--end", YEAR_END.isoformat()])
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(f"chronox gaps failed: {result.output[-2000:]}")
    lines = result.output.splitlines()
    reported = [line for line in lines if not line.startswith(" ") and "gap day(s)" in line]
    gaps = sum(int(line.split(": ", 1)[1].split(" ", 1)[0]) for line in reported
               if not line.split(": ", 1)[1].startswith("no "))
    if len(reported) != symbols or gaps != expected_gaps:
        raise SystemExit(f"chronox gaps reported {gaps} gap day(s) over {len(reported)} symbol(s); "
                         f"planted {expected_gaps} over {symbols}")
    return elapsed


def run_count(url: str) -> float:
    from sqlalchemy import text

    from chronox.db import get_engine

    started = time.perf_counter()
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT count(*) FROM coverage WHERE trading_day BETWEEN :a AND :b"),
                     {"a": YEAR_START, "b": YEAR_END}).scalar_one()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10_000)
    parser.add_argument("--missing-percent", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best of each side counts")
    args = parser.parse_args()
    with temporary_database("chronox_bench_gaps", PG_ADMIN_URL) as url:
        os.environ["CHRONOX_DATABASE_URL"] = url
        began = time.perf_counter()
        covered, missing = populate(url, args.symbols, args.missing_percent)
        print(f"{args.symbols} symbols, {covered:,} coverage rows, {missing:,} missing symbol-days planted "
              f"({time.perf_counter() - began:.1f} s to load)")
        run_count(url)  # connections and the table's pages warm, for both
        chronox_runs, count_runs = [], []
        for _ in range(args.rounds):
            count_runs.append(run_count(url))
            chronox_runs.append(run_chronox(missing, args.symbols))
    chronox_best, count_best = min(chronox_runs), min(count_runs)
    print("count(*) of the coverage rows: " + ", ".join(f"{t:.3f}" for t in count_runs)
          + f" s; best {count_best:.3f} s")
    print("chronox gaps (all symbols, every gap day checked): " + ", ".join(f"{t:.3f}" for t in chronox_runs)
          + f" s; best {chronox_best:.3f} s")
    print(f"gap_scan ratio={chronox_best / count_best:.2f}")


if __name__ == "__main__":
    main()
