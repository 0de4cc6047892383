"""Range presets (`chronox run --range`, the tasks' `range` kwarg) and the chart caches:
keys, lifetimes and JSON bodies in Redis after real runs, and `chronox prices` on its hit
and miss paths."""
import datetime as dt
import json

import pytest
import redis
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import text

from chronox import ranges, registry
from chronox.calendar import new_york_day, trading_days
from chronox.cli import cli
from chronox.db import get_engine
from chronox.strategy import InvalidInput
from chronox.tasks import workflow
from tests.helpers import polygon_daily_bar, write_days

pytestmark = pytest.mark.timeout(180)

D = dt.date
MAX_START = D(2003, 9, 10)


@pytest.mark.parametrize("name, today, start", [
    ("7D", D(2024, 3, 4), D(2024, 2, 26)),
    ("1M", D(2024, 3, 31), D(2024, 2, 29)),  # clamped to the shorter month (a leap year)
    ("3M", D(2023, 5, 31), D(2023, 2, 28)),
    ("6M", D(2024, 8, 15), D(2024, 2, 15)),
    ("ytd", D(2024, 8, 15), D(2024, 1, 1)),
    ("1Y", D(2024, 2, 29), D(2023, 2, 28)),
    ("3Y", D(2024, 1, 2), D(2021, 1, 2)),
    ("5y", D(2024, 1, 2), D(2019, 1, 2)),
    ("MAX", D(2024, 1, 2), MAX_START),
    ("1D", D(2024, 1, 2), D(2024, 1, 2)),
])
def test_range_start_days(name, today, start):
    assert ranges.start_date(name, today, MAX_START) == start


def test_range_names_and_conflicts_are_one_line_errors():
    with pytest.raises(InvalidInput, match="unknown range '2W'; use one of 1D, 7D, 1M, 3M, 6M, YTD, 1Y, 3Y, 5Y, MAX"):
        ranges.parse_range("2W")
    with pytest.raises(InvalidInput, match="give --range or --start, not both"):
        ranges.check_run_request("1Y", "2024-01-02")
    assert ranges.check_run_request("1y", None) == "1Y" and ranges.check_run_request(None, "2024-01-02") is None
    assert [(n, ranges.PRESETS[n].ttl) for n in ("1D", "7D", "1M", "MAX")] == \
        [("1D", 120), ("7D", 300), ("1M", 300), ("MAX", 3600)]


def plan_starts(args):
    result = CliRunner().invoke(cli, ["run", "--dry-run", "--json", *args])
    assert result.exit_code == 0, result.output
    return {s["symbol"]: s["start"] for s in json.loads(result.output[result.output.index("{"):])["symbols"]}


def test_run_range_means_the_start_it_implies(sqlite_url, monkeypatch):
    registry.add_symbol(get_engine(sqlite_url), "RNGA", "api")
    today = new_york_day(dt.datetime.now(dt.UTC))
    assert plan_starts(["--range", "1Y"]) == {"RNGA": ranges.months_back(today, 12).isoformat()}
    assert plan_starts(["--range", "ytd", "--end", today.isoformat()]) == {"RNGA": f"{today.year}-01-01"}
    assert plan_starts(["--range", "MAX"]) == {"RNGA": "2003-09-10"}
    monkeypatch.setenv("CHRONOX_MAX_HISTORY_START", "2010-01-04")
    assert plan_starts(["--range", "MAX"]) == {"RNGA": "2010-01-04"}
    both = CliRunner().invoke(cli, ["run", "--range", "1Y", "--start", "2024-01-02"])
    assert both.exit_code == 1
    assert both.output.strip() == "Error: give --range or --start, not both: the range sets the start day"
    bad = CliRunner().invoke(cli, ["run", "--range", "2W", "--dry-run"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "unknown range '2W'" in bad.output
    # the tasks' kwarg: chronox.registry.execute and chronox.backfill plan through workflow.planned
    plan = workflow.planned(symbols=["RNGA"], range="3M", end=today.isoformat())
    assert plan.symbols[0].start == ranges.months_back(today, 3).isoformat()
    with pytest.raises(InvalidInput, match="not both"):
        workflow.planned(symbols=["RNGA"], range="3M", start="2024-01-02")


@pytest.fixture
def recent_run(pg_url, flatfiles, polygon, redis_url, monkeypatch):
    """A real flatpack run of CHX over the last three trading days (day files, REST daily bars)."""
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    today = new_york_day(dt.datetime.now(dt.UTC))
    days = trading_days(today - dt.timedelta(days=10), today - dt.timedelta(days=1))[-3:]
    write_days(flatfiles, days, ["CHX"])
    polygon.set_ticker_details("CHX", {})
    polygon.add_daily_bars("CHX", [polygon_daily_bar(d, "CHX") for d in days])
    registry.add_symbol(get_engine(pg_url), "CHX", "flatpack")
    result = CliRunner().invoke(cli, ["run", "--symbols", "CHX", "--start", days[0].isoformat(),
                                      "--end", days[-1].isoformat()])
    assert result.exit_code == 0, result.output
    return pg_url, redis.Redis.from_url(redis_url), days


def db_bars(url, timeframe):
    with get_engine(url).connect() as conn:
        if timeframe == "1d":
            rows = conn.execute(text("SELECT day, open, high, low, close, volume FROM ohlcv_1d "
                                     "WHERE symbol = 'CHX' ORDER BY day")).all()
            return [{"time": int(dt.datetime.combine(r[0], dt.time(0), dt.UTC).timestamp()), "open": r[1],
                     "high": r[2], "low": r[3], "close": r[4], "volume": r[5]} for r in rows]
        rows = conn.execute(text("SELECT bucket, open, high, low, close, volume FROM ohlcv_1h "
                                 "WHERE symbol = 'CHX' ORDER BY bucket")).all()
        return [{"time": int(r[0].timestamp()), "open": r[1], "high": r[2], "low": r[3], "close": r[4],
                 "volume": r[5]} for r in rows]


def test_a_run_writes_every_chart_document_after_its_commit(recent_run):
    url, client, days = recent_run
    daily, hourly = db_bars(url, "1d"), db_bars(url, "1h")
    assert len(daily) == 3 and len(hourly) >= 3 * 16  # 04:00-20:00 New York, per day
    today = new_york_day(dt.datetime.now(dt.UTC))
    for name in ranges.NAMES:
        key = "hourly_data:CHX:1D" if name == "1D" else f"asset_data:CHX:{name}"
        doc = json.loads(client.get(key))
        ttl = client.ttl(key)
        assert {"1D": 0 < ttl <= 120, "MAX": 300 < ttl <= 3600}.get(name, 120 < ttl <= 300), (name, ttl)
        assert (doc["symbol"], doc["range"], doc["timeframe"]) == ("CHX", name, ranges.PRESETS[name].timeframe)
        assert doc["last"] == (doc["first"] if name == "1D" else today.isoformat())
        if name == "1D":  # the latest session: the run's last day only if that is today's session
            assert doc["bars"] == [b for b in hourly if new_york_day(
                dt.datetime.fromtimestamp(b["time"], dt.UTC)).isoformat() == doc["first"]]
        elif name == "7D":
            assert doc["bars"] == [b for b in hourly if new_york_day(
                dt.datetime.fromtimestamp(b["time"], dt.UTC)).isoformat() >= doc["first"]]
        else:
            assert doc["bars"] == daily, name
    assert daily[0]["close"] == polygon_daily_bar(days[0], "CHX")["c"]


def cache_counts(cache):
    return tuple(REGISTRY.get_sample_value("market_data_cache_requests_total", {"cache": cache, "result": r}) or 0
                 for r in ("hit", "miss"))


def test_prices_reads_the_cache_and_refills_it_from_the_database_on_a_miss(recent_run):
    url, client, days = recent_run
    client.delete("asset_data:CHX:1Y")
    hits, misses = cache_counts("asset_data")
    miss = CliRunner().invoke(cli, ["prices", "CHX", "--range", "1y", "--json"])
    assert miss.exit_code == 0, miss.output
    doc = json.loads(miss.output)
    assert (doc["range"], doc["timeframe"], doc["bars"]) == ("1Y", "1d", db_bars(url, "1d"))
    assert json.loads(client.get("asset_data:CHX:1Y")) == doc and 295 < client.ttl("asset_data:CHX:1Y") <= 300
    assert cache_counts("asset_data") == (hits, misses + 1)
    # a hit is served from Redis as it is there, without touching the database
    client.set("asset_data:CHX:1Y", json.dumps({**doc, "bars": doc["bars"][:1]}), ex=300)
    hit = CliRunner().invoke(cli, ["prices", "CHX", "--range", "1Y", "--json"])
    assert json.loads(hit.output)["bars"] == doc["bars"][:1]
    assert cache_counts("asset_data") == (hits + 1, misses + 1)
    text_out = CliRunner().invoke(cli, ["prices", "CHX", "--range", "1Y"]).output
    assert text_out.splitlines()[0] == f"CHX 1Y: 1 1d bar(s) {doc['first']}..{doc['last']} (cache hit)"
    assert text_out.splitlines()[2].startswith(days[0].isoformat())
    client.delete("hourly_data:CHX:1D")
    hourly_hits, hourly_misses = cache_counts("hourly_data")
    CliRunner().invoke(cli, ["prices", "CHX"])  # 1D by default: its own key and lifetime
    assert 0 < client.ttl("hourly_data:CHX:1D") <= 120
    assert cache_counts("hourly_data") == (hourly_hits, hourly_misses + 1)


def test_prices_without_redis_reads_the_database(sqlite_url):
    out = CliRunner().invoke(cli, ["prices", "NONE", "--range", "MAX"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("NONE MAX: 0 1d bar(s) 2003-09-10..")
    assert "(database, no cache: CHRONOX_REDIS_URL unset)" in out.output
    bad = CliRunner().invoke(cli, ["prices", "NONE", "--range", "1W"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: unknown range '1W'")
