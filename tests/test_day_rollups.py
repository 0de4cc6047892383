"""A PostgreSQL day load makes its rollups from the rows as they stream (chronox.day_rollups):
they must equal what chronox.rollups.refresh computes in SQL from the minutes it stored,
whatever the file's order, block edges, odd spellings and duplicates."""
from __future__ import annotations

import datetime as dt
import gzip
import random

import pytest
from sqlalchemy import text

from chronox import rollups
from chronox.backfill import load_day
from chronox.calendar import day_bounds_utc
from chronox.db import get_engine
from chronox.sample import day_rows
from chronox.settings import load_settings
from chronox.sources import flatfiles as flatfiles_module
from chronox.sources.flatfiles import HEADER, relative_path

DAY = dt.date(2024, 3, 12)
SYMBOLS = ["DRA", "DRB", "DRC"]
TABLES = ("ohlcv_5m", "ohlcv_15m", "ohlcv_1h")


def rollup_rows(url: str) -> dict[str, list[tuple]]:
    with get_engine(url).connect() as conn:
        return {table: [tuple(r) for r in conn.execute(text(
            f"SELECT symbol, bucket, open, high, low, close, volume, bars FROM {table} ORDER BY symbol, bucket"))]
            for table in TABLES}


def refreshed_in_sql(url: str) -> dict[str, list[tuple]]:
    """The rollups chronox.rollups.refresh makes from the stored minutes (rolled back after)."""
    with get_engine(url).connect() as conn:
        transaction = conn.begin()
        rollups.refresh(conn, SYMBOLS, *day_bounds_utc(DAY))
        rows = {table: [tuple(r) for r in conn.execute(text(
            f"SELECT symbol, bucket, open, high, low, close, volume, bars FROM {table} ORDER BY symbol, bucket"))]
            for table in TABLES}
        transaction.rollback()
    return rows


def write(path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("\n".join([",".join(HEADER), *lines]) + "\n").encode()))


@pytest.mark.parametrize("shape", ["as Polygon writes it", "in order, tiny blocks",
                                   "shuffled, tiny blocks, odd spellings"])
def test_rollups_made_while_loading_equal_the_sql_refresh(pg_url, flatfiles, monkeypatch, shape):
    rows = day_rows(DAY, SYMBOLS)
    lines = [",".join(str(v) for v in r) for r in rows]
    if "tiny blocks" in shape:
        monkeypatch.setattr(flatfiles_module, "BLOCK_BYTES", 500)  # hours and buckets cut by batches
    if shape.startswith("shuffled"):
        r = random.Random(5)
        # Fractional volumes, a few spellings only the per-row rules read, and duplicates
        # whose first copy must win.
        lines = [",".join([t, f"{float(v) + r.random():.6f}", *map(str, rest)]) for t, v, *rest in rows]
        for i in r.sample(range(len(lines)), 40):
            fields = lines[i].split(",")
            fields[2] = f" {fields[2]} "
            lines[i] = ",".join(fields)
        lines += [",".join([t, "1", "1", "1", "1", "1", str(ws), "1"]) for t, _, _, _, _, _, ws, _ in rows[::50]]
        r.shuffle(lines[:len(rows)])
    write(flatfiles / relative_path(DAY), lines)
    result = load_day(load_settings(), DAY.isoformat(), SYMBOLS)
    assert result["rows"] == len(rows) and "error" not in result
    loaded = rollup_rows(pg_url)
    expected = refreshed_in_sql(pg_url)
    assert [len(loaded[t]) for t in TABLES] == [len(expected[t]) for t in TABLES] and loaded["ohlcv_1h"]
    for table in TABLES:
        for got, want in zip(loaded[table], expected[table], strict=True):
            # Volume sums may be added up in another order than PostgreSQL's.
            assert got[:6] == want[:6] and got[7] == want[7] and got[6] == pytest.approx(want[6], rel=1e-12), table


def test_a_reload_rewrites_only_the_changed_symbols_rollups(pg_url, flatfiles):
    rows = day_rows(DAY, SYMBOLS)
    write(flatfiles / relative_path(DAY), [",".join(str(v) for v in r) for r in rows])
    load_day(load_settings(), DAY.isoformat(), SYMBOLS)
    versions_of = text("SELECT symbol, max(xmin::text::bigint) FROM ohlcv_5m GROUP BY symbol")
    with get_engine(pg_url).connect() as conn:
        versions = dict(conn.execute(versions_of).all())
    changed = [(t, v * 2 if t == "DRB" else v, *rest) for t, v, *rest in rows]
    write(flatfiles / relative_path(DAY), [",".join(str(v) for v in r) for r in changed])
    load_day(load_settings(), DAY.isoformat(), SYMBOLS)
    with get_engine(pg_url).connect() as conn:
        after = dict(conn.execute(versions_of).all())
    assert after["DRA"] == versions["DRA"] and after["DRC"] == versions["DRC"] and after["DRB"] != versions["DRB"]
    assert rollup_rows(pg_url) == refreshed_in_sql(pg_url)
