"""Shared by the REST tests: the Polygon stand-in wired through the environment, bars in
Polygon's JSON shape made from the same synthetic data as the flat files, table cleanup."""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import text

from chronox.db import get_engine
from chronox.sample import day_rows
from tests.stubs.polygon_rest import FakePolygonRest

KEY = "pk-TEST-5ecret-9f8e7d6c5b4a"  # distinctive, so a leak shows up in any log or message
REST_TABLES = ("ticker_details", "dividends", "splits", "ohlcv_1d", "snapshot_latest")


@pytest.fixture
def polygon(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePolygonRest]:
    """The Polygon REST stand-in, selected through the environment like a real deployment."""
    with FakePolygonRest(api_key=KEY) as fake:
        monkeypatch.setenv("POLYGON_API_KEY", KEY)
        monkeypatch.setenv("CHRONOX_POLYGON_BASE_URL", fake.base_url)
        monkeypatch.setenv("CHRONOX_POLYGON_TIMEOUT", "5")
        yield fake


def clean_rest_tables(url: str) -> None:
    with get_engine(url).begin() as conn:
        for table in REST_TABLES:
            conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def rest_db(db_url: str) -> str:
    """db_url (SQLite and PostgreSQL) with the REST tables emptied too."""
    clean_rest_tables(db_url)
    return db_url


@pytest.fixture
def rest_pg(pg_url: str) -> str:
    clean_rest_tables(pg_url)
    return pg_url


def polygon_minute_bars(day: dt.date, symbol: str, shift: float = 0.0) -> list[dict[str, Any]]:
    """The sample data of a symbol-day as Polygon aggregates (epoch ms), prices shifted by `shift`."""
    return [{"t": ns // 1_000_000, "o": o + shift, "h": h + shift, "l": low + shift, "c": c + shift,
             "v": v, "vw": round((h + low) / 2 + shift, 4), "n": n}
            for _, v, o, c, h, low, ns, n in day_rows(day, [symbol])]


def polygon_daily_bar(day: dt.date, symbol: str) -> dict[str, Any]:
    """A daily aggregate of the sample data, stamped at New York midnight as Polygon does."""
    from chronox.calendar import day_bounds_utc

    rows = day_rows(day, [symbol])
    return {"t": int(day_bounds_utc(day)[0].timestamp() * 1000), "o": rows[0][2], "c": rows[-1][3],
            "h": max(r[4] for r in rows), "l": min(r[5] for r in rows), "v": sum(r[1] for r in rows),
            "vw": rows[-1][3], "n": sum(r[7] for r in rows)}


def serve_days(fake: FakePolygonRest, symbol: str, days: Sequence[dt.date], shift: float = 0.0) -> int:
    """Put the sample minute bars of `days` on the stand-in; returns how many."""
    total = 0
    for day in days:
        bars = polygon_minute_bars(day, symbol, shift)
        fake.add_minute_bars(symbol, bars)
        total += len(bars)
    return total
