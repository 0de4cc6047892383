"""The `chronox` command: registry, migrations, runs and the offline demo."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine

from chronox import registry, tick_store
from chronox.cli_common import _engine, _require, _settings, _user_errors
from chronox.cli_data import dataset_group, features_group, lake_group
from chronox.cli_prices import prices
from chronox.settings import (
    MAX_PUBLISH_THROTTLE_MS,
    PUBLISH_MODES,
    SNAPSHOT_METHODS,
    Settings,
    hide_password,
)
from chronox.strategy import DayText, InvalidInput

# BRK.B has no flatpack phase: every day of its window is a gap the api phase fills.
DEMO_STRATEGIES = {"AAPL": "flatpack+api", "MSFT": "flatpack+snapshot", "BRK.B": "api+snapshot"}
DEMO_SYMBOLS = tuple(DEMO_STRATEGIES)
DEMO_OTHER_TICKERS = ("SPY", "TSLA", "NVDA")  # in the files, not registered: shows filtering
DEMO_START, DEMO_END = dt.date(2024, 11, 25), dt.date(2024, 12, 3)  # Thanksgiving + half day
# Crypto trades every UTC day: its files cover the weekend and Thanksgiving too.
DEMO_CRYPTO = {"BTC-USD": "flatpack+snapshot"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """ChronoX: keep a store of US-equity bars complete and publish every bar to Kafka."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@_user_errors
def db_upgrade() -> None:
    """Apply Alembic migrations to CHRONOX_DATABASE_URL."""
    from chronox.db import upgrade
    from chronox.reachability import DATABASE

    settings = _settings()
    _require(settings, DATABASE)
    upgrade(settings.database_url)
    click.echo("database is at the latest migration")


@cli.group()
def symbols() -> None:
    """The symbol registry."""


def _echo_rows(rows: Sequence[registry.RegistryRow], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=2))
        return
    if not rows:
        click.echo("no symbols registered")
        return
    click.echo(f"{'SYMBOL':<12} {'MARKET':<7} {'PROVIDER':<10} {'STRATEGY':<30} {'TF':<4} {'ON':<3} {'STATUS':<10} "
               "LAST_BACKFILL")
    for r in rows:
        click.echo(f"{r.symbol:<12} {r.market:<7} {r.provider:<10} {r.strategy:<30} {r.timeframe:<4} "
                   f"{'yes' if r.enabled else 'no':<3} {r.status:<10} {r.last_backfill or '-'}")


@symbols.command("add")
@click.argument("symbol")
@click.option("--strategy", required=True, help="Phases joined with '+': flatpack, api, snapshot, stream.")
@click.option("--timeframe", default="1m", show_default=True)
@click.option("--disabled", is_flag=True, help="Register without scheduling it.")
@click.option("--market", default="stocks", show_default=True, help="stocks or crypto.")
@click.option("--provider", default="polygon", show_default=True, help="polygon, binance or coingecko.")
@click.option("--provider-symbol", help="The provider's own name when it cannot be derived (a CoinGecko id).")
@_user_errors
def symbols_add(symbol: str, strategy: str, timeframe: str, disabled: bool, market: str, provider: str,
                provider_symbol: str | None) -> None:
    """Register SYMBOL (crypto as BASE-QUOTE: BTC-USD, BTC/USD and X:BTCUSD are accepted)."""
    row = registry.add_symbol(_engine(_settings()), symbol, strategy, timeframe, enabled=not disabled,
                              market=market, provider=provider, provider_symbol=provider_symbol)
    extra = "" if row.market == "stocks" and row.provider == "polygon" else f", {row.market} from {row.provider}"
    click.echo(f"registered {row.symbol} ({row.strategy}, {row.timeframe}{extra}"
               f"{', disabled' if disabled else ''})")


@symbols.command("list")
@click.option("--enabled-only", is_flag=True)
@click.option("--market", help="Only symbols of this market (stocks, crypto).")
@click.option("--json", "as_json", is_flag=True)
@_user_errors
def symbols_list(enabled_only: bool, market: str | None, as_json: bool) -> None:
    """List registered symbols."""
    _echo_rows(registry.list_symbols(_engine(_settings()), enabled_only=enabled_only, market=market), as_json)


@symbols.command("show")
@click.argument("symbol")
@click.option("--json", "as_json", is_flag=True)
@_user_errors
def symbols_show(symbol: str, as_json: bool) -> None:
    """Show one registry row."""
    row = registry.get_symbol(_engine(_settings()), symbol).as_json()
    if as_json:
        click.echo(json.dumps(row, indent=2))
    else:
        for key, value in row.items():
            click.echo(f"{key:<14} {value if value is not None else '-'}")


@symbols.command("update")
@click.argument("symbol")
@click.option("--strategy")
@click.option("--timeframe")
@click.option("--enable/--disable", "enabled", default=None)
@_user_errors
def symbols_update(symbol: str, strategy: str | None, timeframe: str | None, enabled: bool | None) -> None:
    """Change a registered symbol."""
    if strategy is None and timeframe is None and enabled is None:
        raise click.UsageError("nothing to change: give --strategy, --timeframe, --enable or --disable")
    row = registry.update_symbol(_engine(_settings()), symbol, strategy, timeframe, enabled)
    click.echo(f"updated {row.symbol} ({row.strategy}, {row.timeframe}, "
               f"{'enabled' if row.enabled else 'disabled'})")


@symbols.command("remove")
@click.argument("symbol")
@_user_errors
def symbols_remove(symbol: str) -> None:
    """Remove a symbol from the registry (its stored bars stay)."""
    registry.remove_symbol(_engine(_settings()), symbol)
    click.echo(f"removed {symbol.upper()}")


def _print_summary(summary: dict[str, Any]) -> None:
    click.echo("")
    for symbol, info in summary["symbols"].items():
        days = info["rows_per_day"]
        click.echo(f"{symbol}: {info['status']}, last_backfill {info['last_backfill'] or '-'}, "
                   f"{sum(days.values())} rows in {len(days)} day(s), {info['quarantined']} quarantined")
        for day, rows in days.items():
            click.echo(f"    {day}  {rows:>6} rows")
        if info["error"]:
            click.echo(f"    error: {info['error']}")
        if info.get("warning"):
            click.echo(f"    {info['warning']}")
    click.echo(f"quarantined rows: {summary['quarantined_total']}")
    click.echo(f"kafka: {summary['kafka']}")


def _run_inline(settings: Settings, request: dict[str, Any]) -> dict[str, Any]:
    """request: the kwargs of chronox.registry.execute, run here instead of on workers."""
    from tqdm import tqdm

    from chronox import runner
    from chronox.completion import run_summary

    _engine(settings)
    plan = runner.plan(request)
    click.echo(plan.describe())
    if not plan.symbols:
        click.echo("nothing to run: no enabled symbols matched")
        return run_summary(settings, [])
    steps = runner.inline_steps(plan)
    with tqdm(total=len(steps), unit="task", desc="chronox", disable=None) as bar:
        results = runner.run_inline(steps, on_step=lambda name: bar.update(1))
    for problem in runner.problems(results):
        click.echo(f"warning: {problem}", err=True)
    return run_summary(settings, [s.symbol for s in plan.symbols])


def _run_distributed(settings: Settings, request: dict[str, Any], wait: bool,
                     timeout: float) -> dict[str, Any] | None:
    from tqdm import tqdm

    from chronox import runner
    from chronox.completion import run_summary

    sent_at = dt.datetime.now(dt.UTC)
    result = runner.dispatch(request)
    click.echo(f"dispatched chronox.registry.execute as task {result.id}")
    if not wait:
        click.echo("follow it in Flower, or rerun with --wait")
        return None
    if settings.result_backend is None:
        raise click.ClickException("--wait needs a result backend: set CHRONOX_RESULT_BACKEND")
    plan = result.get(timeout=timeout, propagate=False)
    if result.failed():
        raise click.ClickException(f"registry execution failed: {plan}")
    names = [s["symbol"] for s in plan["symbols"]]
    adhoc = [s["symbol"] for s in plan["symbols"] if not s.get("registered", True)]
    click.echo(f"{len(names)} symbol(s), {len(plan['days'])} day file(s); "
               f"flat files available up to {plan['newest_file_day'] or '-'}")
    with tqdm(total=len(names), unit="symbol", desc="chronox", disable=None) as bar:
        try:
            runner.follow(settings, names, timeout, on_progress=lambda done: bar.update(done - bar.n),
                          adhoc=adhoc, since=sent_at)
        except runner.RunTimedOut as exc:
            raise click.ClickException(str(exc)) from None
    return run_summary(settings, names)


def _show_plan(settings: Settings, request: dict[str, Any], as_json: bool) -> None:
    from chronox import runner

    plan = runner.plan(request)
    if as_json:
        click.echo(json.dumps(plan.as_dict(), indent=2))
        return
    click.echo(f"dry run: {plan.describe()}")
    for day, symbols_of_day in plan.days.items():
        click.echo(f"  chronox.phase.flatpack_day {day}: {', '.join(symbols_of_day)}")
    for spec in plan.symbols:
        click.echo(f"  {spec.symbol}: phases {'+'.join(spec.phases)}, {spec.start}..{spec.end}, "
                   f"{len(spec.days)} day file(s)")


@cli.command("run")
@click.option("--symbols", "symbol_list", multiple=True, metavar="SYMBOL ...",
              help="Symbols to run (default: every enabled symbol).")
@click.option("--start", help="First day, YYYY-MM-DD (default: day after last_backfill).")
@click.option("--end", help="Last day, YYYY-MM-DD (default: today, clipped to the newest file).")
@click.option("--strategy", help="Phases for this run, instead of the registry's; with it, symbols that are "
                                 "not registered run once without a registry row.")
@click.option("--wait", is_flag=True, help="With a broker: follow progress until done.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait follows a run.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--snapshot-method", type=click.Choice(SNAPSHOT_METHODS),
              help="How the snapshot phase reads prices (default CHRONOX_SNAPSHOT_METHOD or snapshot).")
@click.option("--publish-mode", type=click.Choice(PUBLISH_MODES),
              help="kafka-first: a bar counts once Kafka has it; db-first: commit, then publish from "
                   "the outbox (default CHRONOX_PUBLISH_MODE or kafka-first).")
@click.option("--no-stream", is_flag=True, help="Leave out the stream phase (symbols only streaming are skipped).")
@click.option("--timeframe", help="Only symbols registered at this timeframe (1m, 5m, 15m, 1h, 1d); for "
                                  "symbols not registered, the timeframe they run at.")
@click.option("--market", help="Only symbols of this market (stocks, crypto); for symbols not registered, "
                               "their market.")
@click.option("--provider", help="For symbols not registered: their provider (polygon, binance, coingecko).")
@click.option("--provider-symbol", help="For a symbol not registered: the provider's own name (a CoinGecko id).")
@click.option("--throttle-ms", type=click.IntRange(min=0, max=MAX_PUBLISH_THROTTLE_MS),
              help="Pause after each Kafka message, in milliseconds (default CHRONOX_PUBLISH_THROTTLE_MS or 0).")
@click.option("--dry-run", is_flag=True,
              help="Show the task graph that would run (symbols, phases, days); touch nothing.")
@click.option("--range", "range_name", metavar="RANGE",
              help="Start at the day a preset implies: 1D 7D 1M 3M 6M YTD 1Y 3Y 5Y MAX (not with --start).")
@_user_errors
def run(symbol_list: tuple[str, ...], start: str | None, end: str | None, strategy: str | None,
        wait: bool, timeout: float, as_json: bool, snapshot_method: str | None, publish_mode: str | None,
        no_stream: bool, timeframe: str | None, throttle_ms: int | None, dry_run: bool,
        range_name: str | None, market: str | None, provider: str | None, provider_symbol: str | None) -> None:
    """Execute the registry: all enabled symbols, or those named.

    The options override settings for this run only and travel with its tasks, so
    workers apply them too.
    """
    settings = _settings()
    names = [s for item in symbol_list for s in item.replace(",", " ").split()] or None
    options = {"snapshot_method": snapshot_method, "publish_mode": publish_mode,
               "publish_throttle_ms": throttle_ms}
    request = {"symbols": names, "start": start, "end": end, "strategy": strategy, "no_stream": no_stream,
               "timeframe": timeframe, "options": {k: v for k, v in options.items() if v is not None},
               **{k: v for k, v in (("market", market), ("provider", provider),
                                    ("provider_symbol", provider_symbol)) if v is not None}}
    if range_name is not None:  # checked here: a worker's refusal would never reach this terminal
        from chronox.ranges import check_run_request

        request["range"] = check_run_request(range_name, start)
    from chronox.reachability import DATABASE, needs_for_tasks

    _require(settings, *((DATABASE,) if dry_run else needs_for_tasks(settings, publish_mode)))
    if dry_run:
        _show_plan(settings, request, as_json)
        return
    summary = _run_inline(settings, request) if settings.in_process else \
        _run_distributed(settings, request, wait, timeout)
    if summary is None:
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    if any(info["status"] == "error" for info in summary["symbols"].values()):
        sys.exit(2)


@cli.command("demo")
@click.option("--data-dir", default="chronox-demo-flatfiles", show_default=True,
              help="Where the synthetic day files are written.")
@_user_errors
def demo(data_dir: str) -> None:
    """Offline demo: synthetic flat files, three symbols, the full task graph in-process."""
    from chronox.sample import write_crypto_sample_files, write_sample_files

    os.environ.pop("CHRONOX_BROKER_URL", None)  # the demo always runs in-process
    os.environ["CHRONOX_PROVIDER"] = "replay"  # and offline, whatever key the shell has
    root = Path(data_dir).resolve()
    os.environ["CHRONOX_FLATFILES_URL"] = str(root)
    settings = _settings()
    from chronox.reachability import publishing

    _require(settings, *publishing(settings))
    click.echo(f"database: {hide_password(settings.database_url)}")
    click.echo(f"writing SYNTHETIC sample day files (not real prices) to {root}")
    written = write_sample_files(root, DEMO_START, DEMO_END, DEMO_SYMBOLS + DEMO_OTHER_TICKERS)
    click.echo(f"  {len(written)} trading days {DEMO_START}..{DEMO_END} "
               f"(Thanksgiving 2024-11-28 closed, 2024-11-29 early close), "
               f"{sum(written.values())} rows for {len(DEMO_SYMBOLS + DEMO_OTHER_TICKERS)} tickers")
    crypto_days = write_crypto_sample_files(root, DEMO_START, DEMO_END, list(DEMO_CRYPTO))
    click.echo(f"  and {len(crypto_days)} crypto days {DEMO_START}..{DEMO_END} (every UTC day, the weekend "
               f"included) for {', '.join(DEMO_CRYPTO)}")
    click.echo("REST phases use the REPLAY provider (CHRONOX_PROVIDER=replay): Polygon's REST calls "
               "are answered from these local day files; no POLYGON_API_KEY, nothing leaves this machine")
    engine = _engine(settings)
    for symbol, strategy in DEMO_STRATEGIES.items():
        try:
            registry.add_symbol(engine, symbol, strategy)
        except InvalidInput:
            registry.update_symbol(engine, symbol, strategy=strategy, enabled=True)
        click.echo(f"registered {symbol} with strategy {strategy}")
    for symbol, strategy in DEMO_CRYPTO.items():
        try:
            registry.add_symbol(engine, symbol, strategy, market="crypto", provider="polygon")
        except InvalidInput:
            registry.update_symbol(engine, symbol, strategy=strategy, enabled=True)
        click.echo(f"registered {symbol} (crypto, Polygon) with strategy {strategy}")
    summary = _run_inline(settings, {"symbols": [*DEMO_SYMBOLS, *DEMO_CRYPTO], "start": DEMO_START.isoformat(),
                                     "end": DEMO_END.isoformat(), "strategy": None})
    _print_summary(summary)
    _print_rest_extras(engine)
    click.echo("(prices above are synthetic sample data)")


def _print_rest_extras(engine: Engine) -> None:
    from chronox.completion import rest_extras

    extras = rest_extras(engine)
    for symbol, days in extras["api_days"].items():
        click.echo(f"api phase: {symbol} gap day(s) filled from REST minute aggregates: {days}")
    for symbol, days in extras["daily_bars"].items():
        click.echo(f"daily bars (ohlcv_1d): {symbol} {days} day(s)")
    for snap in extras["snapshots"]:
        click.echo(f"snapshot: {snap['symbol']} {snap['price']} at {snap['ts']} ({snap['method']})")


@cli.command("gaps")
@click.argument("symbol_args", nargs=-1, metavar="[SYMBOL]...")
@click.option("--start", help="First day, YYYY-MM-DD (default: day after last_backfill).")
@click.option("--end", help="Last day, YYYY-MM-DD (default: today; only complete sessions count).")
@click.option("--market", help="Only symbols of this market (stocks, crypto).")
@click.option("--dataset", type=click.Choice(tick_store.COVERAGE_DATASETS), default=tick_store.BARS,
              show_default=True,
              help="Whose coverage: the bars (flatpack, api), or the trades or quotes phase's ticks.")
@click.option("--json", "as_json", is_flag=True)
@_user_errors
def gaps_command(symbol_args: tuple[str, ...], start: str | None, end: str | None, market: str | None,
                 dataset: str, as_json: bool) -> None:
    """List trading days without coverage, on each symbol's market calendar (NYSE for stocks,
    every UTC day for crypto); default: every enabled symbol that backfills (with --dataset
    trades or quotes: that has the phase)."""
    from chronox.gaps import find_gaps

    settings = _settings()
    _engine(settings)
    found = find_gaps(settings, list(symbol_args) or None, start, end, market=market, dataset=dataset)
    if as_json:
        click.echo(json.dumps([g.as_dict() for g in found], indent=2))
        return
    if not found:
        click.echo("no enabled symbol with a flatpack or api phase" if dataset == tick_store.BARS
                   else f"no enabled symbol with a {dataset} phase")
    lines = []  # one write: thousands of symbols print tens of thousands of lines
    # A market's lines name the same few hundred days again and again, and formatting a
    # date costs more than looking its text up.
    day = DayText()
    for g in found:
        lines.append(f"{g.symbol}: {len(g.gaps) or 'no'} gap day(s) in {day[g.since]}..{day[g.until]}")
        for first, last in g.windows:
            if first == last:  # most windows of a scan that runs nightly
                lines.append(f"    window {day[first]}..{day[first]}: {day[first]}")
                continue
            days = [day[d] for d in g.gaps if first <= d <= last]
            lines.append(f"    window {day[first]}..{day[last]}: {', '.join(days)}")
    if lines:
        click.echo("\n".join(lines))


@cli.command("snapshot")
@click.argument("symbol_args", nargs=-1, metavar="[SYMBOL]...")
@click.option("--snapshot-method", type=click.Choice(SNAPSHOT_METHODS),
              help="snapshot (batched all-tickers snapshot), agg (latest minute) or rest (last trade).")
@click.option("--json", "as_json", is_flag=True)
@_user_errors
def snapshot_command(symbol_args: tuple[str, ...], snapshot_method: str | None, as_json: bool) -> None:
    """Refresh snapshots now (default: every enabled symbol with the snapshot phase)."""
    from chronox import snapshot
    from chronox.reachability import needs_for_tasks
    from chronox.strategy import validate_symbol

    settings = _settings()
    names = [validate_symbol(s) for s in symbol_args]
    _require(settings, *needs_for_tasks(settings))
    if not settings.in_process:
        from chronox.celery_app import app

        name, kwargs = (("chronox.snapshot.batch", {"symbols": names, "method": snapshot_method}) if names
                        else ("chronox.snapshot.refresh", {"method": snapshot_method}))
        click.echo(f"dispatched {name} as task {app.send_task(name, kwargs=kwargs).id}")
        return
    _engine(settings)
    names = names or snapshot.snapshot_symbols(settings)
    outcome = snapshot.refresh(settings, names, snapshot_method)
    if as_json:
        click.echo(json.dumps(outcome, indent=2))
        return
    if outcome.get("skipped"):
        click.echo(outcome["skipped"])
        return
    click.echo(f"{outcome['stored']} of {outcome['symbols']} snapshot(s) stored ({outcome['method']}, "
               f"{outcome.get('provider', '-')})")
    if outcome["missing"]:
        click.echo(f"no price for: {', '.join(outcome['missing'])}")


@cli.command("stream")
@_user_errors
def stream_command() -> None:
    """Run the Polygon websocket stream until SIGTERM/SIGINT (one process per deployment)."""
    from chronox.reachability import BROKER, DATABASE, publishing
    from chronox.sources.websocket import AuthFailed
    from chronox.stream.process import GapFillSender, run_stream

    settings = _settings()
    _require(settings, DATABASE, BROKER, *publishing(settings))  # writes, sends gap fills, publishes
    _engine(settings)
    logging.getLogger("chronox").setLevel(logging.INFO)  # a service: reconnects and stats belong in its log
    gap_fill: GapFillSender | None = None
    if not settings.in_process:
        from chronox.tasks.stream import send_gap_fill

        gap_fill = send_gap_fill
    try:
        code, stats = run_stream(settings, gap_fill)
    except AuthFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"event": "stream_stopped", **stats}))
    sys.exit(code)


@cli.command("status")
@click.option("--market", help="Only symbols of this market (stocks, crypto).")
@click.option("--json", "as_json", is_flag=True)
@_user_errors
def status(market: str | None, as_json: bool) -> None:
    """Registry counts by status, symbols in error, stale streams, last stamps per symbol,
    and each provider's circuit breaker."""
    from chronox.breaker import breaker_states
    from chronox.figures import describe, top_row

    report = registry.status_report(_engine(_settings()), market=market)
    report["providers"] = breaker_states(_settings())
    report["dashboard"] = top_row(_settings())  # the figures of Grafana's top row
    from chronox.sinks.state import sink_report

    report["sinks"] = sink_report(_settings())  # {} without a lake or feature store
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{report['total']} symbol(s): " + ", ".join(f"{n} {s}" for s, n in report["by_status"].items()))
    click.echo(describe(report["dashboard"]))
    for provider, state in report["providers"].items():
        if state.get("state") != "closed" or state.get("hold"):
            why = state.get("hold") or state.get("last_error") or ""
            click.echo(f"provider {provider}: circuit {state.get('state')}, "
                       f"next call in {state.get('retry_in') or 0:.0f}s{f': {why}' if why else ''}")
    for item in report["errors"]:
        click.echo(f"error  {item['symbol']}: {item['error_message']}")
    for item in report["stale_streams"]:
        click.echo(f"stale  {item['symbol']}: {item['error_message']}")
    for sink, lag in report["sinks"].items():
        if lag["lagging"]:
            click.echo(f"sink   {sink} lags the database on {lag['lagging']} of {lag['checked']} symbol-day(s) "
                       f"since {lag['since']}: {', '.join(lag['examples'])}")
    if report["symbols"]:
        click.echo(f"{'SYMBOL':<12} {'MARKET':<7} {'STATUS':<10} {'LAST_BACKFILL':<13} {'LAST_SNAPSHOT':<21} "
                   "LAST_STREAM")
    for r in report["symbols"]:
        click.echo(f"{r['symbol']:<12} {r['market']:<7} {r['status']:<10} {r['last_backfill'] or '-':<13} "
                   f"{r['last_snapshot'] or '-':<21} {r['last_stream'] or '-'}")


def _beat_entries() -> dict[str, Any]:
    from chronox.tasks.config import celery_config

    # A bad schedule variable is a one-line error, not a traceback.
    schedule: dict[str, Any] = celery_config(_settings())["beat_schedule"]
    return schedule


@cli.group("schedule", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_user_errors
def schedule(ctx: click.Context, as_json: bool) -> None:
    """Print Celery beat's effective schedule with the next run times."""
    if ctx.invoked_subcommand is not None:
        return
    from chronox.tasks.config import job_aliases

    now = dt.datetime.now(dt.UTC)
    entries = []
    for name, entry in _beat_entries().items():
        every = entry["schedule"]
        if isinstance(every, (int, float)):
            when, next_run = f"every {every:g}s", (now + dt.timedelta(seconds=every))
        else:
            when, next_run = f"cron {every._orig_minute} {every._orig_hour} {every._orig_day_of_month} " \
                f"{every._orig_month_of_year} {every._orig_day_of_week} {getattr(every, 'zone', 'UTC')}", \
                (now + every.remaining_estimate(now) + dt.timedelta(seconds=1)).replace(second=0, microsecond=0)
        entries.append({"job": name, "aliases": job_aliases(name), "task": entry["task"], "schedule": when,
                        "queue": entry["options"]["queue"], "expires_s": entry["options"]["expires"],
                        "next_run": next_run.isoformat(timespec="seconds")})
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("scheduler disabled (CHRONOX_ENABLE_SCHEDULER=false)")
    names = {e["job"]: e["job"] + (f" (alias {', '.join(e['aliases'])})" if e["aliases"] else "") for e in entries}
    width = max(map(len, names.values()), default=0)
    for e in entries:
        approx = "~" if e["schedule"].startswith("every") else ""
        click.echo(f"{names[e['job']]:<{width}} {e['task']:<34} {e['schedule']:<26} next {approx}{e['next_run']}")


@schedule.command("trigger")
@click.argument("job")
@_user_errors
def schedule_trigger(job: str) -> None:
    """Run one scheduled JOB now (replaces POST /api/v1/scheduler/trigger/{job_id})."""
    from chronox.tasks.config import job_aliases, job_name

    entries = _beat_entries()
    if job_name(job) not in entries:
        known = [f"{name} (alias {', '.join(job_aliases(name))})" if job_aliases(name) else name for name in entries]
        raise click.ClickException(f"unknown job {job!r}; jobs: {', '.join(known) or 'none (scheduler disabled)'}")
    job = job_name(job)  # the registry service's id runs the job it became
    from chronox.celery_app import app

    app.loader.import_default_modules()
    entry = entries[job]
    settings = _settings()
    from chronox.reachability import needs_for_tasks

    _require(settings, *needs_for_tasks(settings))
    if settings.in_process and entry["task"] == "chronox.schedule.nightly_gap_scan":
        # No broker to send the backfills to: run each one here.
        from chronox.scheduling import gap_scan

        _engine(settings)
        found = gap_scan(settings)
        click.echo(f"{found['with_gaps']} symbol(s) with gaps; backfilling {len(found['dispatch'])}")
        for item in found["dispatch"]:
            _print_summary(_run_inline(settings, {"symbols": [item["symbol"]], "start": item["start"],
                                                  "end": item["end"], "strategy": None}))
        return
    if settings.in_process:
        _engine(settings)
        outcome = app.tasks[entry["task"]].apply()
        if outcome.failed():
            raise click.ClickException(f"{job} failed: {outcome.result}")
        click.echo(json.dumps(outcome.result, indent=2, default=str))
        return
    result = app.send_task(entry["task"], queue=entry["options"]["queue"])
    click.echo(f"dispatched {entry['task']} as task {result.id}")



cli.add_command(lake_group)
cli.add_command(features_group)
cli.add_command(dataset_group)

cli.add_command(prices)


def _expand_variadic(argv: list[str], option: str = "--symbols") -> list[str]:
    """Let `--symbols A B C` mean `--symbols A --symbols B --symbols C` (click has no nargs=-1 options)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == option:
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                out.extend([option, argv[i]])
                i += 1
            continue
        out.append(token)
        i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    cli.main(args=_expand_variadic(list(sys.argv[1:] if argv is None else argv)), prog_name="chronox")


if __name__ == "__main__":
    main()
