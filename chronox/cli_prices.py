"""`chronox prices SYMBOL --range 1Y [--json]`: a chart's bars, read the way charts read them
(cache-aside on the chart caches of chronox.caches)."""
from __future__ import annotations

import datetime as dt
import json

import click

from chronox.cli_common import _engine, _settings, _user_errors
from chronox.ranges import NAMES


@click.command("prices")
@click.argument("symbol")
@click.option("--range", "range_name", default="1D", show_default=True, metavar="RANGE",
              help=f"One of {' '.join(NAMES)}.")
@click.option("--json", "as_json", is_flag=True, help="Print the chart document exactly as cached.")
@_user_errors
def prices(symbol: str, range_name: str, as_json: bool) -> None:
    """A chart's bars of SYMBOL over a range: from Redis, else from the database (refilling Redis)."""
    import redis

    from chronox import caches

    settings = _settings()
    _engine(settings)
    try:
        doc, outcome = caches.read(settings, symbol, range_name)
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis (CHRONOX_REDIS_URL): {exc}") from None
    if as_json:
        click.echo(json.dumps(doc))
        return
    where = {"hit": "cache hit", "miss": "cache miss, read from the database",
             "off": "database, no cache: CHRONOX_REDIS_URL unset"}[outcome]
    bars = doc["bars"]
    click.echo(f"{doc['symbol']} {doc['range']}: {len(bars)} {doc['timeframe']} bar(s) "
               f"{doc['first']}..{doc['last']} ({where})")
    if bars:
        click.echo(f"{'TIME (UTC)':<17} {'OPEN':>12} {'HIGH':>12} {'LOW':>12} {'CLOSE':>12} {'VOLUME':>14}")
    shown = "%Y-%m-%d" if doc["timeframe"] == "1d" else "%Y-%m-%d %H:%M"
    for bar in bars:
        time = dt.datetime.fromtimestamp(bar["time"], dt.UTC).strftime(shown)
        click.echo(f"{time:<17} {bar['open']:>12.4f} {bar['high']:>12.4f} {bar['low']:>12.4f} "
                   f"{bar['close']:>12.4f} {bar['volume']:>14.0f}")
