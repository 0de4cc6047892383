"""Small helpers shared by tests: synthetic files, table counts."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import text

from chronox.db import get_engine
from chronox.sample import day_rows, write_day_file


def write_days(root: Path, days: Sequence[dt.date], tickers: Sequence[str]) -> dict[tuple[str, dt.date], int]:
    """Write sample files; returns the expected rows per (ticker, day)."""
    expected: dict[tuple[str, dt.date], int] = {}
    for day in days:
        rows = day_rows(day, tickers)
        write_day_file(root, day, rows)
        for t in tickers:
            expected[(t, day)] = sum(1 for r in rows if r[0] == t)
    return expected


def count(url: str, sql: str, **params) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def rows_by_symbol_day(url: str) -> dict[tuple[str, str], int]:
    """Counts of ohlcv_1m rows per symbol and New York day, computed in Python for portability."""
    from chronox.calendar import NEW_YORK

    out: dict[tuple[str, str], int] = {}
    with get_engine(url).connect() as conn:
        for symbol, ts in conn.execute(text("SELECT symbol, ts FROM ohlcv_1m")):
            if isinstance(ts, str):
                ts = dt.datetime.fromisoformat(ts)
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=dt.UTC)
            key = (symbol, ts.astimezone(NEW_YORK).date().isoformat())
            out[key] = out.get(key, 0) + 1
    return out
