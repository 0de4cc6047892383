"""`chronox lake`, `chronox features` and `chronox dataset`: the data beyond the database."""
from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from chronox.cli_common import _engine, _settings, _user_errors
from chronox.strategy import InvalidInput, parse_day, validate_symbol, validate_timeframe

F = TypeVar("F", bound=Callable[..., Any])
CHECK_DAYS = 30  # `lake check` without --start looks this many days back


def _data_errors(func: F) -> F:
    """The lake's, Redis's and Parquet's failures as one line, on top of the usual user errors."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import pyarrow as pa
        import redis

        from chronox.sinks.lake import LakeError

        try:
            return func(*args, **kwargs)
        except LakeError as exc:
            raise click.ClickException(str(exc)) from None
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis (CHRONOX_REDIS_URL): {exc}") from None
        except (OSError, pa.ArrowException) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return _user_errors(wrapper)  # type: ignore[return-value]


def _window(start: str | None, end: str | None) -> tuple[dt.date, dt.date]:
    last = parse_day(end, "end") or dt.date.today()
    first = parse_day(start, "start") or last - dt.timedelta(days=CHECK_DAYS)
    if first > last:
        raise InvalidInput(f"start {first} is after end {last}")
    return first, last


# -- lake ------------------------------------------------------------------------------------

@click.group("lake")
def lake_group() -> None:
    """The Parquet lake (CHRONOX_LAKE_URL)."""


@lake_group.command("check")
@click.option("--symbols", "symbol_list", multiple=True, metavar="SYMBOL ...", help="Only these symbols.")
@click.option("--start", help=f"First day, YYYY-MM-DD (default: {CHECK_DAYS} days before --end).")
@click.option("--end", help="Last day, YYYY-MM-DD (default: today).")
@click.option("--json", "as_json", is_flag=True)
@_data_errors
def lake_check(symbol_list: tuple[str, ...], start: str | None, end: str | None, as_json: bool) -> None:
    """Compare lake and database row counts per symbol-day; exit 1 when they differ."""
    from chronox.sinks.lake import check

    settings = _settings()
    _engine(settings)
    first, last = _window(start, end)
    symbols = [validate_symbol(s) for s in symbol_list] or None
    report = check(settings, first, last, symbols)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"{report['lake']}: {report['symbol_days']} symbol-day(s) from {first} to {last}, "
                   f"{len(report['differences'])} difference(s)")
        for item in report["differences"]:
            lake_rows = "missing" if item["lake"] is None else item["lake"]
            click.echo(f"  {item['symbol']:<10} {item['day']}  database {item['database']}  lake {lake_rows}")
    if report["differences"]:
        raise SystemExit(1)


@lake_group.command("sync")
@click.option("--symbols", "symbol_list", multiple=True, metavar="SYMBOL ...", help="Default: every registered symbol.")
@click.option("--start", help=f"First day, YYYY-MM-DD (default: {CHECK_DAYS} days before --end).")
@click.option("--end", help="Last day, YYYY-MM-DD (default: today).")
@_data_errors
def lake_sync(symbol_list: tuple[str, ...], start: str | None, end: str | None) -> None:
    """Write the covered symbol-days of a window to the lake now, in this process (what the
    sink tasks do after each run); unchanged symbol-days are left as they are."""
    from chronox import registry
    from chronox.sinks.dispatch import run_days
    from chronox.sinks.lake import Lake, sync_bars

    settings = _settings()
    engine = _engine(settings)
    lake = Lake.from_settings(settings)
    first, last = _window(start, end)
    symbols = [validate_symbol(s) for s in symbol_list] or [r.symbol for r in registry.list_symbols(engine)]
    totals = {"written": 0, "unchanged": 0, "removed": 0, "rows": 0}
    for symbol, days in run_days(settings, symbols, first.isoformat(), last.isoformat()).items():
        result = sync_bars(settings, [symbol], days, engine, lake).as_dict()
        for key in totals:
            totals[key] += result[key]
    click.echo(f"{lake.url}: {totals['written']} file(s) written ({totals['rows']} rows), "
               f"{totals['unchanged']} unchanged, {totals['removed']} removed")


# -- features --------------------------------------------------------------------------------

@click.group("features")
def features_group() -> None:
    """The Redis feature store (CHRONOX_FEATURE_STORE, CHRONOX_REDIS_URL)."""


def _print_features(rows: list[dict[str, Any] | None], as_json: bool) -> None:
    from chronox.features import FEATURES

    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = ("ts", "close", "volume", *FEATURES)
    click.echo(" ".join(f"{c:>20}" if c != "ts" else f"{c:<20}" for c in columns))
    for row in rows:
        if row is None:
            click.echo("(none)")
            continue
        cells = [f"{row['ts']:<20}"] + [f"{'-' if row.get(c) is None else format(row[c], '.6g'):>20}"
                                        for c in columns[1:]]
        click.echo(" ".join(cells))


@features_group.command("get")
@click.argument("symbol")
@click.argument("more_times", nargs=-1, metavar="[T ...]")
@click.option("--tf", default="1m", show_default=True)
@click.option("--ts", "first_time", required=True, metavar="T", help="Bar time: epoch seconds or ISO-8601.")
@click.option("--json", "as_json", is_flag=True)
@_data_errors
def features_get(symbol: str, more_times: tuple[str, ...], tf: str, first_time: str, as_json: bool) -> None:
    """The stored bar and features of SYMBOL at each time (--ts T [T ...])."""
    from chronox import features

    rows = features.get(_settings(), validate_symbol(symbol), validate_timeframe(tf), [first_time, *more_times])
    _print_features(rows, as_json)


@features_group.command("range")
@click.argument("symbol")
@click.option("--tf", default="1m", show_default=True)
@click.option("--start", required=True, metavar="E", help="Epoch seconds or ISO-8601, inclusive.")
@click.option("--end", required=True, metavar="E", help="Epoch seconds or ISO-8601, inclusive.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many bars.")
@click.option("--json", "as_json", is_flag=True)
@_data_errors
def features_range(symbol: str, tf: str, start: str, end: str, limit: int | None, as_json: bool) -> None:
    """The stored bars and features of SYMBOL from --start to --end, oldest first."""
    from chronox import features

    rows = features.range_(_settings(), validate_symbol(symbol), validate_timeframe(tf), start, end, limit)
    _print_features(list(rows), as_json)


@features_group.command("sweep")
@click.option("--pattern", default="features:market:*", show_default=True)
@click.option("--ttl", "ttl_default", type=click.IntRange(min=0), help="TTL for keys without one "
              "(default CHRONOX_FEATURE_TTL_SECONDS; 0: set none, only prune).")
@click.option("--max-keys", type=click.IntRange(min=1))
@_data_errors
def features_sweep(pattern: str, ttl_default: int | None, max_keys: int | None) -> None:
    """Run the TTL sweep (chronox.features.ttl_sweep) in this process."""
    from chronox import features

    click.echo(json.dumps(features.ttl_sweep(_settings(), pattern, ttl_default, max_keys)))


# -- dataset ---------------------------------------------------------------------------------

@click.group("dataset")
def dataset_group() -> None:
    """Training datasets: bars, features and next-bar labels."""


@dataset_group.command("build")
@click.option("--symbol", required=True)
@click.option("--tf", default="1m", show_default=True)
@click.option("--start", required=True, help="First market day, YYYY-MM-DD.")
@click.option("--end", required=True, help="Last market day, YYYY-MM-DD.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The Parquet file to write.")
@click.option("--from", "source", type=click.Choice(("db", "lake")), default="db", show_default=True)
@click.option("--flat-threshold", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="|next-bar log return| up to this is direction 'flat'.")
@_data_errors
def dataset_build(symbol: str, tf: str, start: str, end: str, out: str, source: str, flat_threshold: float) -> None:
    """One row per bar of SYMBOL: the bar, ret_1, range_pct, vwap_dev, vol_z_20, rv_20,
    label_ret_1 and label_direction."""
    from chronox import dataset

    settings = _settings()
    _engine(settings)
    first, last = parse_day(start, "start"), parse_day(end, "end")
    assert first is not None and last is not None  # required options
    rows = dataset.build(settings, validate_symbol(symbol), validate_timeframe(tf), first, last, source,
                         flat_threshold)
    dataset.write(rows, out)
    click.echo(f"{out}: {rows.num_rows} row(s) of {symbol.upper()} {tf} from {first} to {last} ({source})")


COMMANDS = (lake_group, features_group, dataset_group)
