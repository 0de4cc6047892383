"""Every writer keeps ohlcv_5m, ohlcv_15m and ohlcv_1h equal to a rollup computed from
scratch, and symbols registered at 5m get 5-minute bars: fetched at 5m by the api phase,
published with tf 5m."""
from __future__ import annotations

import datetime as dt
import gzip

import pytest
from sqlalchemy import bindparam, text

from chronox import registry
from chronox.backfill import load_day
from chronox.db import get_engine
from chronox.gaps import fill_window
from chronox.runner import inline_steps, run_inline
from chronox.runner import plan as plan_request
from chronox.settings import load_settings
from chronox.sources.flatfiles import relative_path
from tests.helpers import count, serve_days, write_days
from tests.test_rollups import VIEWS, reference_rollup, view_rows

pytestmark = pytest.mark.timeout(180)

D = dt.date
UTC = dt.UTC
DAYS = [D(2024, 3, 8), D(2024, 3, 11), D(2024, 3, 12)]  # around the spring-forward Sunday
MINUTES = {"ohlcv_5m": 5, "ohlcv_15m": 15, "ohlcv_1h": 60}


def minute_rows(url: str, symbols: tuple[str, ...]) -> list[dict]:
    query = text("SELECT symbol, ts, open, high, low, close, volume FROM ohlcv_1m "
                 "WHERE symbol IN :s ORDER BY symbol, ts").bindparams(bindparam("s", expanding=True))
    with get_engine(url).connect() as conn:
        rows = conn.execute(query, {"s": list(symbols)}).all()
    out = []
    for symbol, ts, o, h, low, c, v in rows:
        ts = dt.datetime.fromisoformat(ts) if isinstance(ts, str) else ts
        out.append({"symbol": symbol, "ts": ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC),
                    "open": o, "high": h, "low": low, "close": c, "volume": v})
    return out


def assert_rollups_from_scratch(url: str, symbols: tuple[str, ...]) -> None:
    minutes = minute_rows(url, symbols)
    assert minutes, "no minute bars to compare"
    for view in VIEWS:
        assert view_rows(url, view, symbols) == reference_rollup(minutes, MINUTES[view]), view


def test_day_loads_reloads_and_rest_fills_keep_rollups_exact(db_url, flatfiles, polygon):
    symbols = ("RWA", "RWB")
    write_days(flatfiles, DAYS[:2], list(symbols))
    settings = load_settings()
    for day in DAYS[:2]:
        load_day(settings, day.isoformat(), list(symbols))
    assert_rollups_from_scratch(db_url, symbols)
    first = view_rows(db_url, "ohlcv_1h", symbols)

    # a reload of an unchanged file leaves them as they were
    load_day(settings, DAYS[1].isoformat(), list(symbols))
    assert view_rows(db_url, "ohlcv_1h", symbols) == first

    # a reload whose file changed one price and lost one bar
    path = flatfiles / relative_path(DAYS[1])
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    header, body = lines[0], lines[1:]
    target = next(i for i, line in enumerate(body) if line.startswith("RWA,"))
    fields = body[target].split(",")
    fields[4] = str(float(fields[4]) * 3)  # high
    body[target] = ",".join(fields)
    del body[target + 5]
    path.write_bytes(gzip.compress(("\n".join([header, *body]) + "\n").encode()))
    load_day(settings, DAYS[1].isoformat(), list(symbols))
    assert_rollups_from_scratch(db_url, symbols)
    assert view_rows(db_url, "ohlcv_1h", symbols) != first

    # a gap day filled from REST minute aggregates, then its flat file replacing the REST bars
    serve_days(polygon, "RWA", [DAYS[2]], shift=5.0)
    result = fill_window(settings, "RWA", DAYS[2].isoformat(), DAYS[2].isoformat())
    assert result["days"] == 1 and result["rows"] > 0
    assert_rollups_from_scratch(db_url, symbols)
    rest_hours = [r for r in view_rows(db_url, "ohlcv_1h", ("RWA",)) if r[1].date() == DAYS[2]]
    write_days(flatfiles, [DAYS[2]], list(symbols))
    load_day(settings, DAYS[2].isoformat(), ["RWA"])
    assert count(db_url, "SELECT count(*) FROM ohlcv_1m WHERE source = 'api'") == 0
    assert_rollups_from_scratch(db_url, symbols)
    flat_hours = [r for r in view_rows(db_url, "ohlcv_1h", ("RWA",)) if r[1].date() == DAYS[2]]
    assert flat_hours != rest_hours  # the file's prices, not the shifted REST ones


def test_a_symbol_registered_at_5m_gets_5_minute_bars(db_url, flatfiles, polygon, kafka):
    symbol = "FIVE" + db_url[:1].upper()
    served = serve_days(polygon, symbol, DAYS[:1])
    registry.add_symbol(get_engine(db_url), symbol, "api", timeframe="5m")
    plan = plan_request({"symbols": [symbol], "start": DAYS[0].isoformat(), "end": DAYS[0].isoformat()})
    assert [(s.symbol, s.timeframe) for s in plan.symbols] == [(symbol, "5m")]
    results = run_inline(inline_steps(plan))
    assert not [r for r in results if isinstance(r, dict) and r.get("error")], results
    aggs = [r for r in polygon.requests if r.path.startswith(f"/v2/aggs/ticker/{symbol}/range/")]
    assert [r.path.split("/")[6:8] for r in aggs] == [["5", "minute"]]
    assert count(db_url, "SELECT count(*) FROM ohlcv_1m") == 0  # no minutes fetched
    fives = view_rows(db_url, "ohlcv_5m", (symbol,))
    assert fives and all(r[-1] is None for r in fives)  # a provider's aggregates: minutes unseen
    assert count(db_url, "SELECT count(*) FROM coverage WHERE source = 'api'") == 1
    # 15m and 1h are rolled up from the REST 5-minute bars
    as_rows = [{"symbol": s, "ts": b, "open": o, "high": h, "low": low, "close": c, "volume": v}
               for s, b, o, h, low, c, v, _ in fives]
    for view in ("ohlcv_15m", "ohlcv_1h"):
        assert [r[:-1] for r in view_rows(db_url, view, (symbol,))] == \
            [r[:-1] for r in reference_rollup(as_rows, MINUTES[view])], view
    envelopes = [e for e in kafka.json_messages(f"chronox.backfill.{symbol}", timeout_ms=1500) if e["event"] == "bar"]
    assert {e["tf"] for e in envelopes} == {"5m"} and len(envelopes) == len(fives)
    assert envelopes[0]["dedup_key"].startswith(f"{symbol}|5m|")
    assert served > 0


@pytest.mark.parametrize("mode", ["kafka-first", "db-first"])
def test_day_loads_publish_at_each_symbols_timeframe(pg_url, flatfiles, kafka, monkeypatch, mode):
    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", mode)
    minute, five, daily = (f"{p}{mode[:1].upper()}" for p in ("MTF", "FTF", "DTF"))
    write_days(flatfiles, DAYS[:1], [minute, five, daily])
    for symbol, tf in ((minute, "1m"), (five, "5m"), (daily, "1d")):
        registry.add_symbol(get_engine(pg_url), symbol, "flatpack", timeframe=tf)
    plan = plan_request({"symbols": [minute, five, daily], "start": DAYS[0].isoformat(),
                         "end": DAYS[0].isoformat()})
    results = run_inline(inline_steps(plan))
    assert not [r for r in results if isinstance(r, dict) and r.get("error")], results

    def bars(symbol: str) -> list[dict]:
        return [e for e in kafka.json_messages(f"chronox.backfill.{symbol}", timeout_ms=1500) if e["event"] == "bar"]

    assert {e["tf"] for e in bars(minute)} == {"1m"}
    assert len(bars(minute)) == count(pg_url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = :s", s=minute)
    fives = bars(five)
    assert {e["tf"] for e in fives} == {"5m"}
    assert len(fives) == count(pg_url, "SELECT count(*) FROM ohlcv_5m WHERE symbol = :s", s=five)
    stored = {(r[1], r[2], r[5]) for r in view_rows(pg_url, "ohlcv_5m", (five,))}
    assert {(dt.datetime.fromisoformat(e["ts"].replace("Z", "+00:00")), e["ohlcv"]["open"], e["ohlcv"]["close"])
            for e in fives} == stored
    assert bars(daily) == []  # its daily bars come from the flatpack phase's daily-bars step
    assert count(pg_url, "SELECT count(*) FROM publish_outbox") == 0
