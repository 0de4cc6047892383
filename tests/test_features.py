"""The standard features and the Redis feature store: definitions checked against plain
loops, the sink on real PostgreSQL and Redis (newest days only, history before the day,
TTLs, readers), and the TTL sweep (SCAN, never KEYS)."""
import datetime as dt
import json
import math

import pyarrow as pa
import pytest
import redis
from click.testing import CliRunner

from chronox import features, registry
from chronox.calendar import NYSE
from chronox.cli import cli
from chronox.db import get_engine
from chronox.settings import load_settings
from chronox.sinks import frames
from tests.conftest import DAYS
from tests.helpers import count, write_days

pytestmark = pytest.mark.timeout(120)


def bars_table(closes, volumes=None, vwaps=None):
    n = len(closes)
    start = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)
    return pa.Table.from_pydict({
        "symbol": ["FX"] * n, "ts": [start + dt.timedelta(minutes=i) for i in range(n)],
        "open": closes, "high": [c * 1.01 for c in closes], "low": [c * 0.99 for c in closes], "close": closes,
        "volume": volumes or [100.0 + 7 * (i % 5) for i in range(n)], "vwap": vwaps or [c * 1.001 for c in closes],
        "transactions": [1] * n, "source": ["flatpack"] * n}, schema=frames.BAR_SCHEMA)


def reference(closes, volumes, highs, lows, vwaps, i):
    """The documented definitions, one bar at a time, from bars 0..i only."""
    ret = [math.nan] + [math.log(closes[k] / closes[k - 1]) for k in range(1, i + 1)]
    out = {"ret_1": ret[i], "range_pct": (highs[i] - lows[i]) / closes[i], "vwap_dev": closes[i] / vwaps[i] - 1}
    if i >= 19:
        window = volumes[i - 19:i + 1]
        mean = sum(window) / 20
        std = math.sqrt(sum((v - mean) ** 2 for v in window) / 20)
        out["vol_z_20"] = (volumes[i] - mean) / std if std else None
        rets = ret[i - 19:i + 1]
        out["rv_20"] = None if any(math.isnan(r) for r in rets) else math.sqrt(sum(r * r for r in rets))
    else:
        out["vol_z_20"] = out["rv_20"] = None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def test_features_follow_their_definitions():
    closes = [100 * math.exp(0.01 * math.sin(i)) for i in range(45)]
    table = bars_table(closes, vwaps=[None if i == 7 else c * 1.001 for i, c in enumerate(closes)])
    got = features.compute(table).to_pylist()
    volumes, highs = table.column("volume").to_pylist(), table.column("high").to_pylist()
    lows, vwaps = table.column("low").to_pylist(), [v if v is not None else math.nan
                                                    for v in table.column("vwap").to_pylist()]
    for i, row in enumerate(got):
        want = reference(closes, volumes, highs, lows, vwaps, i)
        for name in features.FEATURES:
            if want[name] is None:
                assert row[name] is None, (i, name)
            else:
                assert row[name] == pytest.approx(want[name], rel=1e-12), (i, name)
    assert got[0]["ret_1"] is None and got[18]["rv_20"] is None and got[19]["rv_20"] is None
    assert got[20]["rv_20"] is not None and got[19]["vol_z_20"] is not None
    assert got[7]["vwap_dev"] is None  # no vwap, no deviation from it
    flat = features.compute(bars_table([50.0] * 25, volumes=[10.0] * 25)).to_pylist()
    assert flat[24]["vol_z_20"] is None and flat[24]["rv_20"] == 0.0  # zero std: no z-score


@pytest.fixture
def store_env(pg_url, flatfiles, redis_url, monkeypatch):
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    monkeypatch.setenv("CHRONOX_FEATURE_STORE", "true")
    return redis.Redis.from_url(redis_url, decode_responses=True)


def run_cli(*args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_feature_store_keeps_the_newest_days_with_their_history(store_env, pg_url, flatfiles):
    client = store_env
    write_days(flatfiles, DAYS, ["FSA"])
    registry.add_symbol(get_engine(pg_url), "FSA", "flatpack")
    run_cli("run", "--symbols", "FSA", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat())

    with get_engine(pg_url).connect() as conn:
        all_bars = frames.read_bars(conn, ["FSA"])
    series = features.compute(all_bars).to_pylist()
    kept_from = NYSE.day_bounds(DAYS[1])[0]
    kept = [r for r in series if r["ts"] >= kept_from]
    index = client.zrange("features:market:FSA:1m:_idx", 0, -1, withscores=True)
    assert [int(score) for _, score in index] == [int(r["ts"].timestamp()) for r in kept]  # days 2 and 3 only
    assert len(client.keys("features:market:FSA:1m:*")) == len(kept) + 1  # hashes and the index (test-side KEYS)
    first = kept[0]  # the first bar of day 2: its features come from day 1's bars
    stored = client.hgetall(f"features:market:FSA:1m:{int(first['ts'].timestamp())}")
    assert stored["symbol"] == "FSA" and stored["tf"] == "1m" and stored["source"] == "flatpack"
    assert stored["ts"] == first["ts"].isoformat().replace("+00:00", "Z")
    for name in ("open", "high", "low", "close", "volume", "vwap", *features.FEATURES):
        if first[name] is None:  # day files have no vwap, so no vwap_dev either
            assert name not in stored, name
        else:
            assert float(stored[name]) == first[name], name
    assert first["vwap"] is None and first["close"] is not None
    assert first["rv_20"] is not None and first["vol_z_20"] is not None
    assert 3500 < client.ttl(f"features:market:FSA:1m:{int(first['ts'].timestamp())}") <= 3600
    assert 3500 < client.ttl("features:market:FSA:1m:_idx") <= 3600
    assert count(pg_url, "SELECT count(*) FROM sink_state WHERE sink = 'features'") == 2

    # readers: Python functions and the command line
    settings = load_settings()
    t0, t1 = int(kept[0]["ts"].timestamp()), int(kept[1]["ts"].timestamp())
    got = features.get(settings, "FSA", "1m", [t0, kept[1]["ts"].isoformat(), 1])
    assert [g["ts_epoch"] if g else None for g in got] == [t0, t1, None]
    assert got[0]["ret_1"] == first["ret_1"] and got[0]["transactions"] == first["transactions"]
    window = features.range_(settings, "FSA", "1m", t0, t0 + 600, limit=5)
    assert [w["ts_epoch"] for w in window] == [int(r["ts"].timestamp()) for r in kept[:5]]
    printed = json.loads(run_cli("features", "range", "FSA", "--tf", "1m", "--start", str(t0), "--end",
                                 str(t0 + 600), "--limit", "5", "--json"))
    assert printed == window
    shown = run_cli("features", "get", "FSA", "--tf", "1m", "--ts", str(t0), str(t1))
    assert shown.count("\n") == 3 and first["ts"].isoformat().replace("+00:00", "Z") in shown

    # rerun: unchanged days are not rewritten
    client.hset(f"features:market:FSA:1m:{t0}", "marker", "kept")
    run_cli("run", "--symbols", "FSA", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat())
    assert client.hget(f"features:market:FSA:1m:{t0}", "marker") == "kept"
    # a day whose keys expired is written again
    client.delete(f"features:market:FSA:1m:{t0}")
    run_cli("run", "--symbols", "FSA", "--start", DAYS[1].isoformat(), "--end", DAYS[1].isoformat())
    assert client.hget(f"features:market:FSA:1m:{t0}", "close") == repr(first["close"])


def test_ttl_sweep_sets_missing_ttls_and_prunes_expired_members_with_scan(redis_url, monkeypatch):
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for t in (100, 160, 220):
        client.hset(f"features:market:SWP:1m:{t}", mapping={"close": "1.0"})
    client.expire("features:market:SWP:1m:220", 50)
    client.zadd("features:market:SWP:1m:_idx", {"100": 100, "160": 160, "220": 220, "280": 280, "340": 340})
    client.set("unrelated", "x")  # outside the pattern: untouched

    def calls(command):
        return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))

    keys_before, scans_before = calls("keys"), calls("scan")
    result = features.ttl_sweep(load_settings(), ttl_default=900)
    assert result == {"pattern": "features:market:*", "scanned": 4, "ttl_set": 3, "pruned": 2}
    assert calls("keys") == keys_before and calls("scan") > scans_before
    assert 890 < client.ttl("features:market:SWP:1m:100") <= 900
    assert client.ttl("features:market:SWP:1m:220") <= 50  # a TTL it had is kept
    assert client.zrange("features:market:SWP:1m:_idx", 0, -1) == ["100", "160", "220"]
    assert client.ttl("unrelated") == -1
    assert features.ttl_sweep(load_settings(), ttl_default=900)["ttl_set"] == 0
    with pytest.raises(ValueError, match="must start with features:market:"):
        features.ttl_sweep(load_settings(), pattern="*")


def test_feature_store_needs_redis_and_its_beat_job_runs_every_15_minutes(monkeypatch, redis_url):
    import importlib

    import celeryconfig
    from chronox.settings import ConfigError

    monkeypatch.setenv("CHRONOX_FEATURE_STORE", "true")
    with pytest.raises(ConfigError, match="CHRONOX_REDIS_URL"):
        load_settings()
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    schedule = importlib.reload(celeryconfig).beat_schedule
    assert schedule["feature_ttl_sweep"]["task"] == "chronox.features.ttl_sweep"
    assert schedule["feature_ttl_sweep"]["schedule"] == 900
    assert schedule["feature_ttl_sweep"]["options"]["queue"] == "chronox.sinks"
    monkeypatch.delenv("CHRONOX_FEATURE_STORE")
    importlib.reload(celeryconfig)
