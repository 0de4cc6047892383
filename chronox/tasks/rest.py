"""Thin Celery tasks of the REST phases; their retry rules are RestTask's (chronox.tasks.base).

A symbol other than a US stock from Polygon names its market, provider and (CoinGecko)
provider_symbol in the kwargs, so an ad-hoc run's steps know it without a registry row.
"""
from __future__ import annotations

from typing import Any

from celery import group

from chronox import gaps, rest, snapshot
from chronox.celery_app import app
from chronox.markets import Instrument
from chronox.settings import load_settings
from chronox.tasks.base import ChronoxTask, RestTask

# flatpack: before the minute bars, beside the shared day loads (the run's chord header)

@app.task(name="chronox.rest.reference", base=RestTask, bind=True, soft_fail=True)
def reference(self: RestTask, symbol: str, start: str | None = None, end: str | None = None,
              options: dict[str, Any] | None = None, market: str | None = None, provider: str | None = None,
              provider_symbol: str | None = None) -> dict[str, Any]:
    return self.run_rest(rest.load_reference, Instrument.of(symbol, market, provider, provider_symbol),
                         options=options)


@app.task(name="chronox.rest.corporate_actions", base=RestTask, bind=True, soft_fail=True)
def corporate_actions(self: RestTask, symbol: str, start: str | None = None, end: str | None = None,
                      options: dict[str, Any] | None = None, market: str | None = None,
                      provider: str | None = None, provider_symbol: str | None = None) -> dict[str, Any]:
    return self.run_rest(rest.load_corporate_actions, Instrument.of(symbol, market, provider, provider_symbol),
                         options=options)


@app.task(name="chronox.rest.daily_bars", base=RestTask, bind=True, soft_fail=True)
def daily_bars(self: RestTask, symbol: str, start: str, end: str, options: dict[str, Any] | None = None,
               market: str | None = None, provider: str | None = None,
               provider_symbol: str | None = None) -> dict[str, Any]:
    return self.run_rest(rest.load_daily_bars, Instrument.of(symbol, market, provider, provider_symbol), start, end,
                         options=options)


# api: in the symbol's chain, after the day loads

@app.task(name="chronox.rest.api_gaps", base=RestTask, bind=True)
def api_gaps(self: RestTask, symbol: str, start: str, end: str, timeframe: str = "1m",
             options: dict[str, Any] | None = None, market: str | None = None, provider: str | None = None,
             provider_symbol: str | None = None) -> Any:
    instrument = Instrument.of(symbol, market, provider, provider_symbol)
    found = self.run_rest(gaps.plan_fill, instrument, start, end, options=options)
    windows = found.get("windows") or []
    if not windows:
        return found
    # One task per window; the rest of the symbol's chain waits for all of them.
    extra = {**({"options": options} if options else {}), **({"timeframe": timeframe} if timeframe != "1m" else {}),
             **instrument.as_kwargs()}
    return self.replace(group(api_window.si(symbol=symbol, start=a, end=b, **extra) for a, b in windows))


@app.task(name="chronox.rest.api_window", base=RestTask, bind=True)
def api_window(self: RestTask, symbol: str, start: str, end: str, timeframe: str = "1m",
               options: dict[str, Any] | None = None, market: str | None = None, provider: str | None = None,
               provider_symbol: str | None = None) -> dict[str, Any]:
    return self.run_rest(gaps.fill_window, Instrument.of(symbol, market, provider, provider_symbol), start, end,
                         timeframe, options=options)


# snapshot

@app.task(name="chronox.rest.snapshot", base=RestTask, bind=True)
def snapshot_phase(self: RestTask, symbol: str, start: str | None = None, end: str | None = None,
                   method: str | None = None, strategy: str | None = None,
                   options: dict[str, Any] | None = None, market: str | None = None, provider: str | None = None,
                   provider_symbol: str | None = None) -> dict[str, Any]:
    instrument = Instrument.of(symbol, market, provider, provider_symbol)
    return self.run_rest(snapshot.refresh, [instrument.symbol], method, {symbol: strategy} if strategy else None,
                         [instrument], options=options)


@app.task(name="chronox.snapshot.refresh", base=ChronoxTask, bind=True)
def snapshot_refresh(self: ChronoxTask, method: str | None = None) -> Any:
    """The periodic refresh of every enabled snapshot symbol: one task per batch of tickers."""
    method, chunks = snapshot.refresh_batches(load_settings(), method)
    if not chunks:
        return {"method": method, "symbols": 0}
    return self.replace(group(snapshot_batch.si(symbols=c, method=method) for c in chunks))


@app.task(name="chronox.snapshot.batch", base=RestTask, bind=True)
def snapshot_batch(self: RestTask, symbols: list[str], method: str | None = None) -> dict[str, Any]:
    return self.run_rest(snapshot.refresh, symbols, method)
