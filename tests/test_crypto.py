"""Crypto beside US stocks through the same registry, phases, tables, topics and commands:
Polygon's crypto day files and REST, Binance's archive, klines and stream, CoinGecko's
daily OHLC and prices; crypto days are UTC days, weekends included."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from chronox import registry
from chronox.cli import _expand_variadic, cli
from chronox.db import get_engine
from chronox.sample import crypto_day_rows, day_rows, write_day_file
from chronox.sources.flatfiles import GLOBAL_CRYPTO, relative_path
from chronox.strategy import InvalidInput
from chronox.testing.binance import FakeBinance, minute_rows
from chronox.testing.coingecko import FakeCoinGecko
from tests.helpers import count, rows_by_symbol_day

pytestmark = pytest.mark.timeout(180)

D = dt.date
UTC = dt.UTC
FRI, SAT, SUN, MON = D(2024, 1, 5), D(2024, 1, 6), D(2024, 1, 7), D(2024, 1, 8)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, _expand_variadic(list(args)))
    return result.exit_code, result.output


def utc_rows(url: str, symbol: str) -> dict[str, int]:
    """Bars per UTC day: a crypto day is a UTC day (rows_by_symbol_day counts New York days)."""
    out: dict[str, int] = {}
    with get_engine(url).connect() as conn:
        for (ts,) in conn.execute(text("SELECT ts FROM ohlcv_1m WHERE symbol = :s"), {"s": symbol}):
            ts = dt.datetime.fromisoformat(ts) if isinstance(ts, str) else ts
            day = (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)).date().isoformat()
            out[day] = out.get(day, 0) + 1
    return out


def run_solana_on_coingecko(engine: Any) -> tuple[int, str]:
    """Register SOL-USD as CoinGecko's daily "solana" (api+snapshot) and `chronox run` it over the weekend."""
    registry.add_symbol(engine, "SOL-USD", "api+snapshot", timeframe="1d", market="crypto",
                        provider="coingecko", provider_symbol="solana")
    return invoke("run", "--symbols", "SOL-USD", "--start", SAT.isoformat(), "--end", MON.isoformat(), "--json")


@pytest.fixture
def binance(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBinance]:
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    with FakeBinance() as fake:
        monkeypatch.setenv("CHRONOX_BINANCE_BASE_URL", fake.base_url)
        monkeypatch.setenv("CHRONOX_BINANCE_DATA_URL", fake.base_url)
        yield fake


# -- the registry ------------------------------------------------------------------------------


def test_crypto_symbols_are_canonical_and_a_phase_the_provider_cannot_serve_is_refused(sqlite_url):
    engine = get_engine(sqlite_url)
    btc = registry.add_symbol(engine, "btc/usd", "flatpack+api+snapshot+stream", market="crypto", provider="polygon")
    assert (btc.symbol, btc.market, btc.provider, btc.provider_symbol) == ("BTC-USD", "crypto", "polygon", None)
    assert registry.add_symbol(engine, "X:ETHUSD", "api", market="crypto").symbol == "ETH-USD"
    assert registry.get_symbol(engine, "X:BTCUSD").symbol == "BTC-USD"  # Polygon's spelling finds it
    assert registry.add_symbol(engine, "ETH-USDT", "flatpack+api+stream", market="crypto",
                               provider="binance").provider == "binance"
    refusals = [
        ({"symbol": "SOL-USD", "strategy": "flatpack+api", "provider": "coingecko", "provider_symbol": "solana"},
         "coingecko cannot serve the flatpack phase(s) for crypto"),
        ({"symbol": "SOL-USD", "strategy": "api", "provider": "coingecko", "timeframe": "1d"},
         "coingecko needs its coin id"),
        ({"symbol": "SOL-USD", "strategy": "api", "provider": "coingecko", "provider_symbol": "solana"},
         "coingecko's api phase fetches 1d, 1h bars, not 1m"),
        ({"symbol": "AAPL", "strategy": "api", "market": "stocks", "provider": "binance"},
         "provider binance does not serve the stocks market"),
        ({"symbol": "BTC+USD", "strategy": "api"}, "invalid symbol 'BTC+USD': a crypto symbol is BASE-QUOTE"),
    ]
    for kwargs, message in refusals:
        symbol, strategy = kwargs.pop("symbol"), kwargs.pop("strategy")
        with pytest.raises(InvalidInput, match=re.escape(message)):
            registry.add_symbol(engine, symbol, strategy, **{"market": "crypto", **kwargs})
    code, out = invoke("symbols", "add", "SOL-USD", "--market", "crypto", "--provider", "coingecko",
                       "--provider-symbol", "solana", "--strategy", "api+snapshot", "--timeframe", "1d")
    assert code == 0 and "SOL-USD (api+snapshot, 1d, crypto from coingecko)" in out, out
    code, out = invoke("symbols", "add", "DOGE-USD", "--market", "crypto", "--provider", "coingecko",
                       "--strategy", "flatpack")
    assert code != 0 and out.startswith("Error: coingecko cannot serve the flatpack phase") and "Traceback" not in out
    registry.add_symbol(engine, "AAPL", "flatpack")
    code, out = invoke("symbols", "list", "--market", "crypto", "--json")
    assert [(r["symbol"], r["provider"]) for r in json.loads(out)] == \
        [("BTC-USD", "polygon"), ("ETH-USD", "polygon"), ("ETH-USDT", "binance"), ("SOL-USD", "coingecko")]


# -- Polygon: one run of stocks and crypto day files ---------------------------------------------


def test_stocks_and_crypto_in_one_run_with_exact_rows_per_symbol_day(pg_url, flatfiles, kafka):
    stock_days = [FRI, MON]
    crypto_days = [FRI, SAT, SUN, MON]
    expected_stock = {}
    for day in stock_days:
        rows = day_rows(day, ["XSTK", "OTHER"])
        write_day_file(flatfiles, day, rows)
        expected_stock[day.isoformat()] = sum(1 for r in rows if r[0] == "XSTK")
    expected_crypto = {}
    for day in crypto_days:
        rows = crypto_day_rows(day, ["XBT-USD", "ETH-USD"])
        if day == SAT:  # Polygon's files spell crypto tickers X:BTC-USD, REST X:BTCUSD: both are taken
            rows = [(r[0].replace("-", ""), *r[1:]) for r in rows]
        write_day_file(flatfiles, day, rows, GLOBAL_CRYPTO)
        expected_crypto[day.isoformat()] = sum(1 for r in rows if r[0] in ("X:XBT-USD", "X:XBTUSD"))
    # a bar of Monday's file that belongs to Tuesday (UTC) is no bar of Monday
    path = flatfiles / relative_path(MON, GLOBAL_CRYPTO)
    tuesday_ns = int(dt.datetime(2024, 1, 9, 0, 5, tzinfo=UTC).timestamp()) * 10**9
    body = gzip.decompress(path.read_bytes()).decode() + f"X:XBT-USD,1.5,100,101,102,99,{tuesday_ns},3\n"
    path.write_bytes(gzip.compress(body.encode()))
    engine = get_engine(pg_url)
    registry.add_symbol(engine, "XSTK", "flatpack")
    registry.add_symbol(engine, "XBT-USD", "flatpack", market="crypto", provider="polygon")

    code, out = invoke("run", "--start", FRI.isoformat(), "--end", MON.isoformat(), "--json")
    assert code == 0, out
    summary = json.loads(out[out.index("\n{") + 1:])
    assert summary["symbols"]["XSTK"]["rows_per_day"] == expected_stock
    assert summary["symbols"]["XBT-USD"]["rows_per_day"] == expected_crypto  # Saturday and Sunday too
    assert utc_rows(pg_url, "XBT-USD") == expected_crypto
    assert {k: v for k, v in rows_by_symbol_day(pg_url).items() if k[0] == "XSTK"} == \
        {("XSTK", d): n for d, n in expected_stock.items()}
    assert count(pg_url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = 'ETH-USD'") == 0  # not registered
    [reason] = [r for (r,) in (get_engine(pg_url).connect().execute(
        text("SELECT reason FROM quarantine WHERE symbol = 'XBT-USD'")))]
    assert "is not a minute of 2024-01-08" in reason
    envelopes = [e for e in kafka.json_messages("chronox.backfill.XBT-USD", timeout_ms=2000) if e["event"] == "bar"]
    assert len(envelopes) == sum(expected_crypto.values())
    assert {(e["market"], e["provider"], e["symbol"]) for e in envelopes} == {("crypto", "polygon", "XBT-USD")}
    [done] = [e for e in kafka.json_messages("chronox.backfill.XBT-USD", timeout_ms=500)
              if e["event"] == "backfill_completed"]
    assert (done["status"], done["market"], done["provider"], done["days"]) == ("completed", "crypto", "polygon", 4)
    stock_done = [e for e in kafka.json_messages("chronox.backfill.XSTK", timeout_ms=500)
                  if e["event"] == "backfill_completed"]
    assert [(e["market"], e["provider"], e["days"]) for e in stock_done] == [("stocks", "polygon", 2)]


# -- Binance: the archive, a weekend gap filled from klines ---------------------------------------


def binance_rows(day: dt.date, every: int = 7) -> list[list[Any]]:
    """A day's klines, one every `every` minutes (minutes without trades have none)."""
    return minute_rows(day, count=1440 // every, every=every)


def test_binance_archive_day_loads_and_a_weekend_gap_is_found_and_filled_from_klines(pg_url, binance, kafka):
    engine = get_engine(pg_url)
    registry.add_symbol(engine, "BTC-USDT", "flatpack+api", market="crypto", provider="binance")
    archived = {FRI: binance_rows(FRI), MON: binance_rows(MON)}
    for day, rows in archived.items():
        binance.add_archive_day("BTCUSDT", day, rows)
    weekend = {SAT: binance_rows(SAT, every=11), SUN: binance_rows(SUN, every=13)}
    for rows in weekend.values():
        binance.add_klines("BTCUSDT", rows)
    # The archive lacks the weekend: Saturday and Sunday are gaps of a crypto symbol.
    code, out = invoke("run", "--symbols", "BTC-USDT", "--strategy", "flatpack", "--start", FRI.isoformat(),
                       "--end", MON.isoformat(), "--json")
    assert code == 2, out  # the days without a file are not loaded: the symbol ends in error
    assert utc_rows(pg_url, "BTC-USDT") == {d.isoformat(): len(rows) for d, rows in archived.items()}
    code, out = invoke("gaps", "BTC-USDT", "--start", FRI.isoformat(), "--end", MON.isoformat(), "--json")
    assert code == 0, out
    [found] = json.loads(out)
    assert found["gaps"] == [SAT.isoformat(), SUN.isoformat()]
    code, out = invoke("run", "--symbols", "BTC-USDT", "--strategy", "api", "--start", FRI.isoformat(),
                       "--end", MON.isoformat(), "--json")
    assert code == 0, out
    expected = {d.isoformat(): len(rows) for d, rows in {**archived, **weekend}.items()}
    assert utc_rows(pg_url, "BTC-USDT") == expected
    with engine.connect() as conn:
        sources = dict(conn.execute(text("SELECT trading_day, source FROM coverage WHERE symbol = 'BTC-USDT'")).all())
    assert {str(d): s for d, s in sources.items()} == {FRI.isoformat(): "flatpack", SAT.isoformat(): "api",
                                                       SUN.isoformat(): "api", MON.isoformat(): "flatpack"}
    klines = [r for r in binance.requests_under("/api/v3/klines")]
    assert klines and all("symbol=BTCUSDT" in r.path or r.query.get("symbol") == "BTCUSDT" for r in klines)
    envelopes = [e for e in kafka.json_messages("chronox.backfill.BTC-USDT", timeout_ms=2000) if e["event"] == "bar"]
    assert {(e["market"], e["provider"]) for e in envelopes} == {("crypto", "binance")}
    assert {e["source"] for e in envelopes} == {"flatpack", "api"}


# -- CoinGecko: daily OHLC and prices ----------------------------------------------------------------


def test_coingecko_daily_bars_and_snapshots(pg_url, redis_url, kafka, monkeypatch):
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    with FakeCoinGecko(root="pro", keys={"cg-pro-test-key": "pro"}) as gecko:
        monkeypatch.setenv("CHRONOX_COINGECKO_BASE_URL", gecko.base_url)
        monkeypatch.setenv("CHRONOX_COINGECKO_PLAN", "pro")
        monkeypatch.setenv("COINGECKO_API_KEY", "cg-pro-test-key")
        day_ms = [int(dt.datetime.combine(d, dt.time(0), UTC).timestamp() * 1000) for d in (SAT, SUN, MON)]
        # CoinGecko stamps a daily candle at its close: 00:00 UTC of the next day
        gecko.add_ohlc("solana", "usd", "daily", [[ms + 86_400_000, 100.0 + i, 110.0 + i, 95.0 + i, 105.0 + i]
                                                  for i, ms in enumerate(day_ms)])
        gecko.set_price_record("solana", {"usd": 104.25, "usd_24h_vol": 123456.0,
                                          "last_updated_at": day_ms[-1] // 1000 + 3600})
        engine = get_engine(pg_url)
        code, out = run_solana_on_coingecko(engine)
        assert code == 0, out
    with engine.connect() as conn:
        daily = conn.execute(text("SELECT day, open, close, source FROM ohlcv_1d WHERE symbol = 'SOL-USD' "
                                  "ORDER BY day")).all()
        snap = conn.execute(text("SELECT price, method FROM snapshot_latest WHERE symbol = 'SOL-USD'")).one()
    assert [(str(d), o, c, s) for d, o, c, s in daily] == [
        (SAT.isoformat(), 100.0, 105.0, "api"), (SUN.isoformat(), 101.0, 106.0, "api"),
        (MON.isoformat(), 102.0, 107.0, "api")]
    assert tuple(snap) == (104.25, "snapshot")
    [event] = kafka.json_messages("chronox.snapshot.SOL-USD", timeout_ms=1500)
    assert (event["price"], event["market"], event["provider"]) == (104.25, "crypto", "coingecko")
    bars = [e for e in kafka.json_messages("chronox.backfill.SOL-USD", timeout_ms=1500) if e["event"] == "bar"]
    assert {e["tf"] for e in bars} == {"1d"} and len(bars) == 3


def test_a_snapshot_batch_takes_every_provider_it_can_and_warns_for_the_one_without_a_key(pg_url, redis_url, kafka,
                                                                                         monkeypatch):
    """The periodic refresh batches snapshot symbols alphabetically, whatever their provider:
    Polygon without POLYGON_API_KEY must not cost the CoinGecko symbols of the batch their prices."""
    from chronox import snapshot
    from chronox.settings import load_settings

    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    engine = get_engine(pg_url)
    registry.add_symbol(engine, "ADA-USD", "snapshot", market="crypto", provider="coingecko",
                        provider_symbol="cardano")
    registry.add_symbol(engine, "SNAPX", "snapshot")  # stocks on Polygon, and no Polygon key here
    with FakeCoinGecko(root="pro", keys={"cg-pro-test-key": "pro"}) as gecko:
        monkeypatch.setenv("CHRONOX_COINGECKO_BASE_URL", gecko.base_url)
        monkeypatch.setenv("CHRONOX_COINGECKO_PLAN", "pro")
        monkeypatch.setenv("COINGECKO_API_KEY", "cg-pro-test-key")
        gecko.set_price_record("cardano", {"usd": 151.5, "usd_24h_vol": 1000.0, "last_updated_at": 1_709_424_000})
        result = snapshot.refresh(load_settings(), ["SNAPX", "ADA-USD"])
    assert (result["provider"], result["stored"], result["missing"]) == ("coingecko", 1, ["SNAPX"])
    assert "POLYGON_API_KEY" in result["skipped"]
    with engine.connect() as conn:
        prices = conn.execute(text("SELECT symbol, price FROM snapshot_latest ORDER BY symbol")).all()
    assert [tuple(p) for p in prices] == [("ADA-USD", 151.5)]
    assert "POLYGON_API_KEY" in (registry.get_symbol(engine, "SNAPX").warning or "")
    assert registry.get_symbol(engine, "ADA-USD").warning is None
    [event] = kafka.json_messages("chronox.snapshot.ADA-USD", timeout_ms=1500)
    assert (event["price"], event["market"], event["provider"]) == (151.5, "crypto", "coingecko")


def test_coingecko_public_plan_ends_the_api_phase_with_a_warning_naming_the_plan(pg_url, redis_url, kafka,
                                                                              monkeypatch):
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    with FakeCoinGecko() as gecko:  # keyless: the OHLC range is for paid plans
        monkeypatch.setenv("CHRONOX_COINGECKO_BASE_URL", gecko.base_url)
        gecko.set_price_record("solana", {"usd": 99.5, "usd_24h_vol": 10.0,
                                          "last_updated_at": int(dt.datetime(2024, 1, 8, 1, tzinfo=UTC).timestamp())})
        engine = get_engine(pg_url)
        code, out = run_solana_on_coingecko(engine)
        assert code == 0, out
        ohlc_calls = [r for r in gecko.requests if r.path.endswith("/ohlc/range")]
    [row] = registry.list_symbols(engine)
    assert row.status.value != "error" and row.note_kind is not None and row.note_kind.value == "warning"
    assert "public (no key) plan does not include /coins/solana/ohlc/range" in (row.error_message or "")
    assert len(ohlc_calls) == 1  # refused once: no retries of an answer that will not change
    assert count(pg_url, "SELECT count(*) FROM ohlcv_1d") == 0
    with engine.connect() as conn:
        step = conn.execute(text("SELECT outcome, detail FROM run_steps WHERE symbol = 'SOL-USD' AND step = 'api'")
                            ).one()
        snap = conn.execute(text("SELECT price FROM snapshot_latest WHERE symbol = 'SOL-USD'")).scalar_one()
    assert step.outcome == "skipped" and "public (no key) plan" in step.detail
    assert snap == 99.5  # the snapshot phase still ran
