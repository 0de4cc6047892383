"""The command line: registry CRUD, JSON output, one-line errors, the demo."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from chronox.cli import _expand_variadic, cli


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_symbols_lifecycle(db_url):
    assert invoke("symbols", "add", "aapl", "--strategy", "FLATPACK_API")[0] == 0
    assert invoke("symbols", "add", "MSFT", "--strategy", "flatpack", "--disabled")[0] == 0
    code, out = invoke("symbols", "show", "AAPL", "--json")
    row = json.loads(out)
    assert code == 0
    assert set(row) == {"symbol", "strategy", "timeframe", "enabled", "last_backfill", "last_snapshot",
                        "last_stream", "status", "error_message", "created_at", "updated_at",
                        "market", "provider", "provider_symbol"}
    assert (row["symbol"], row["strategy"], row["timeframe"], row["enabled"], row["status"]) == \
        ("AAPL", "flatpack+api", "1m", True, "idle")
    assert (row["market"], row["provider"], row["provider_symbol"]) == ("stocks", "polygon", None)
    assert row["created_at"].endswith("Z") and row["last_backfill"] is None
    code, out = invoke("symbols", "list", "--enabled-only", "--json")
    assert [r["symbol"] for r in json.loads(out)] == ["AAPL"]
    code, out = invoke("symbols", "update", "MSFT", "--enable", "--strategy", "snapshot+stream")
    assert code == 0 and "snapshot+stream" in out
    code, out = invoke("symbols", "list", "--json")
    assert [(r["symbol"], r["enabled"]) for r in json.loads(out)] == [("AAPL", True), ("MSFT", True)]
    assert invoke("symbols", "remove", "AAPL")[0] == 0
    code, out = invoke("symbols", "list", "--json")
    assert [r["symbol"] for r in json.loads(out)] == ["MSFT"]


@pytest.mark.parametrize("args,message", [
    (("symbols", "add", "AA PL", "--strategy", "flatpack"), "invalid symbol"),
    (("symbols", "add", "AAPL", "--strategy", "flatpak"), "unknown phase 'flatpak'"),
    (("symbols", "add", "AAPL", "--strategy", "flatpack", "--timeframe", "7m"), "unsupported timeframe"),
    (("symbols", "show", "NOPE"), "NOPE is not registered"),
    (("symbols", "remove", "NOPE"), "NOPE is not registered"),
    (("symbols", "update", "NOPE", "--disable"), "NOPE is not registered"),
    (("run", "--start", "2024-13-01"), "is not a date"),
    (("run", "--start", "2024-01-05", "--end", "2024-01-02"), "is after end"),
    (("run", "--symbols", "ZZZ"), "not registered: ZZZ"),
    (("run", "--strategy", "bogus"), "unknown phase"),
])
def test_user_errors_are_one_line_and_nonzero(sqlite_url, args, message):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_duplicate_registration_is_a_clear_error(sqlite_url):
    invoke("symbols", "add", "AAPL", "--strategy", "flatpack")
    result = CliRunner().invoke(cli, ["symbols", "add", "AAPL", "--strategy", "api"])
    assert result.exit_code == 1 and "already registered" in result.output


def test_bad_environment_is_a_clear_error(sqlite_url, monkeypatch):
    monkeypatch.setenv("CHRONOX_PUBLISH_MODE", "sometimes")
    result = CliRunner().invoke(cli, ["symbols", "list"])
    assert result.exit_code == 1 and "CHRONOX_PUBLISH_MODE='sometimes'" in result.output


def test_postgres_without_migrations_says_what_to_do(pg_database, monkeypatch):
    from sqlalchemy import create_engine, text

    from tests.conftest import PG_ADMIN_URL

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS chronox_test_empty WITH (FORCE)"))
        conn.execute(text("CREATE DATABASE chronox_test_empty"))
    try:
        monkeypatch.setenv("CHRONOX_DATABASE_URL", PG_ADMIN_URL.rsplit("/", 1)[0] + "/chronox_test_empty")
        result = CliRunner().invoke(cli, ["symbols", "list"])
        assert result.exit_code == 1 and "run `chronox db upgrade` first" in result.output
        assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
        assert CliRunner().invoke(cli, ["symbols", "list"]).output.strip() == "no symbols registered"
    finally:
        from chronox.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS chronox_test_empty WITH (FORCE)"))


def test_symbols_option_takes_several_values():
    assert _expand_variadic(["run", "--symbols", "AAPL", "MSFT", "--wait"]) == \
        ["run", "--symbols", "AAPL", "--symbols", "MSFT", "--wait"]


def test_run_in_process_with_named_symbols(sqlite_url, flatfiles):
    import datetime as dt

    from tests.helpers import rows_by_symbol_day, write_days

    expected = write_days(flatfiles, [dt.date(2024, 1, 2), dt.date(2024, 1, 3)], ["AAPL", "MSFT", "IBM"])
    for s in ("AAPL", "MSFT", "IBM"):
        invoke("symbols", "add", s, "--strategy", "flatpack")
    proc = subprocess.run([sys.executable, "-m", "chronox.cli", "run", "--symbols", "AAPL", "MSFT",
                           "--start", "2024-01-02", "--end", "2024-01-03", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert set(summary["symbols"]) == {"AAPL", "MSFT"}
    assert summary["symbols"]["AAPL"]["rows_per_day"] == {
        "2024-01-02": expected[("AAPL", dt.date(2024, 1, 2))], "2024-01-03": expected[("AAPL", dt.date(2024, 1, 3))]}
    assert summary["kafka"].startswith("off")
    assert {k for k in rows_by_symbol_day(sqlite_url)} == {("AAPL", "2024-01-02"), ("AAPL", "2024-01-03"),
                                                          ("MSFT", "2024-01-02"), ("MSFT", "2024-01-03")}


def test_demo_runs_offline_and_is_repeatable(tmp_path):
    from tests.helpers import count

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CHRONOX_")}
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "chronox.cli", "demo"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "SYNTHETIC" in out and "kafka: off" in out and "quarantined rows: 0" in out
    assert "Thanksgiving" in out
    url = f"sqlite:///{tmp_path / 'chronox.db'}"
    assert count(url, "SELECT count(*) FROM symbol_registry WHERE status = 'completed'") == 4
    stocks = "symbol IN ('AAPL', 'MSFT', 'BRK.B')"
    assert count(url, f"SELECT count(DISTINCT trading_day) FROM coverage WHERE {stocks}") == 6  # 7 weekdays
    assert count(url, f"SELECT count(*) FROM coverage WHERE trading_day = '2024-11-28' AND {stocks}") == 0
    # the crypto symbol trades every UTC day: Thanksgiving and the weekend are days of its own
    assert count(url, "SELECT count(*) FROM coverage WHERE symbol = 'BTC-USD' AND source = 'flatpack'") == 9
    assert count(url, "SELECT count(*) FROM coverage WHERE symbol = 'BTC-USD' AND trading_day IN "
                      "('2024-11-28', '2024-11-30', '2024-12-01') AND rows > 1000") == 3
    assert count(url, "SELECT count(*) FROM symbol_registry WHERE symbol = 'BTC-USD' AND market = 'crypto'") == 1
    assert "BTC-USD: completed" in out and "weekend" in out
    total = count(url, "SELECT count(*) FROM ohlcv_1m")
    assert total == count(url, "SELECT sum(rows) FROM coverage") and total > 5000
    assert count(url, "SELECT count(*) FROM ohlcv_1m WHERE symbol IN ('SPY', 'TSLA', 'NVDA')") == 0
    # REST phases offline through the replay provider: BRK.B (api+snapshot) has no flat-file
    # phase, so its whole window is gaps the api phase fills from the day files
    assert "REPLAY provider (CHRONOX_PROVIDER=replay)" in out
    from chronox.calendar import trading_days
    from chronox.cli import DEMO_END, DEMO_START
    from chronox.sample import day_rows

    days = trading_days(DEMO_START, DEMO_END)
    assert count(url, "SELECT count(*) FROM coverage WHERE symbol = 'BRK.B' AND source = 'api'") == len(days)
    assert count(url, f"SELECT count(*) FROM coverage WHERE source = 'flatpack' AND {stocks}") == 2 * len(days)
    brk = sum(1 for d in days for r in day_rows(d, ["BRK.B"]))
    assert count(url, "SELECT count(*) FROM ohlcv_1m WHERE symbol = 'BRK.B' AND source = 'api'") == brk
    assert "api phase: BRK.B gap day(s) filled from REST minute aggregates: 6" in out
    assert count(url, "SELECT count(*) FROM ohlcv_1d WHERE symbol IN ('AAPL', 'MSFT')") == 2 * len(days)
    assert count(url, "SELECT count(*) FROM ohlcv_1d WHERE symbol = 'BTC-USD'") == 9
    assert count(url, "SELECT count(*) FROM ticker_details") == 3
    assert count(url, "SELECT count(*) FROM snapshot_latest WHERE symbol IN ('MSFT', 'BRK.B', 'BTC-USD')") == 3
    assert count(url, "SELECT count(*) FROM symbol_registry WHERE last_snapshot IS NOT NULL") == 3
    assert count(url, "SELECT count(*) FROM symbol_registry WHERE error_message IS NOT NULL") == 0


def test_run_dry_run_shows_the_graph_and_touches_nothing(sqlite_url, flatfiles):
    import datetime as dt

    from tests.helpers import count, write_days

    write_days(flatfiles, [dt.date(2024, 1, 2), dt.date(2024, 1, 3)], ["AAPL"])
    invoke("symbols", "add", "AAPL", "--strategy", "flatpack+api")
    code, out = invoke("run", "--dry-run", "--start", "2024-01-01", "--end", "2024-01-03")
    assert code == 0
    assert "chronox.phase.flatpack_day 2024-01-02: AAPL" in out and "chronox.phase.flatpack_day 2024-01-03: AAPL" in out
    assert "AAPL: phases flatpack+api, 2024-01-01..2024-01-03, 2 day file(s)" in out
    code, out = invoke("run", "--dry-run", "--json", "--start", "2024-01-02", "--end", "2024-01-03")
    assert json.loads(out)["days"] == {"2024-01-02": ["AAPL"], "2024-01-03": ["AAPL"]}
    assert count(sqlite_url, "SELECT count(*) FROM ohlcv_1m") == 0
    assert count(sqlite_url, "SELECT count(*) FROM coverage") == 0
    assert json.loads(invoke("symbols", "show", "AAPL", "--json")[1])["status"] == "idle"


def test_many_symbols_register_at_once_with_the_checks_of_one(db_url):
    from chronox import registry
    from chronox.db import get_engine
    from chronox.strategy import InvalidInput

    engine = get_engine(db_url)
    assert registry.add_symbols(engine, ["aapl", "BRK.B", "MSFT"], "FLATPACK+API") == 3
    rows = {r.symbol: r for r in registry.list_symbols(engine)}
    assert sorted(rows) == ["AAPL", "BRK.B", "MSFT"]
    assert {(r.strategy, r.timeframe, r.market.value, r.provider.value, r.status.value, r.enabled)
            for r in rows.values()} == {("flatpack+api", "1m", "stocks", "polygon", "idle", True)}
    with pytest.raises(InvalidInput, match="invalid symbol"):
        registry.add_symbols(engine, ["GOOD", "bad symbol!"], "api")
    with pytest.raises(InvalidInput, match="already registered"):
        registry.add_symbols(engine, ["NVDA", "AAPL"], "api")
    assert sorted(r.symbol for r in registry.list_symbols(engine)) == ["AAPL", "BRK.B", "MSFT"]  # all or nothing
