"""The dataset builder: one row per bar with features and next-bar labels, no look-ahead
(every feature at t from bars <= t, every label from bar t+1 only), the same from the
lake as from the database."""
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import update

from chronox import dataset, features, registry
from chronox.calendar import NYSE
from chronox.cli import cli
from chronox.db import get_engine
from chronox.settings import load_settings
from chronox.sinks import frames
from tests.conftest import DAYS
from tests.helpers import write_days

pytestmark = pytest.mark.timeout(120)
COLUMNS = [*frames.COLUMNS, *features.FEATURES, "label_ret_1", "label_direction"]


def load(url, flatfiles, symbol="DSA"):
    write_days(flatfiles, DAYS, [symbol])
    registry.add_symbol(get_engine(url), symbol, "flatpack")
    result = CliRunner().invoke(cli, ["run", "--symbols", symbol, "--start", DAYS[0].isoformat(),
                                      "--end", DAYS[-1].isoformat()])
    assert result.exit_code == 0, result.output


def all_bars(url, symbol="DSA"):
    with get_engine(url).connect() as conn:
        return frames.read_bars(conn, [symbol])


def test_every_feature_uses_bars_up_to_t_and_every_label_bar_t_plus_1(db_url, flatfiles):
    load(db_url, flatfiles)
    settings = load_settings()
    built = dataset.build(settings, "DSA", "1m", DAYS[1], DAYS[2])
    assert built.column_names == COLUMNS
    series = all_bars(db_url)
    first = NYSE.day_bounds(DAYS[1])[0]
    h = sum(1 for t in series.column("ts").to_pylist() if t < first)  # bars before the dataset's first day
    assert built.num_rows == series.num_rows - h
    assert built.column("ts").to_pylist() == series.column("ts")[h:].to_pylist()
    closes = series.column("close").to_pylist()
    rows = built.to_pylist()
    for t in [0, 1, 19, 20, 21, *range(37, len(rows) - 1, 97), len(rows) - 1]:
        # the features of row t computed from the bars up to t and nothing after
        only_past = features.compute(series.slice(0, h + t + 1)).to_pylist()[-1]
        assert {f: rows[t][f] for f in features.FEATURES} == {f: only_past[f] for f in features.FEATURES}, t
        if t + 1 < len(rows):
            assert rows[t]["label_ret_1"] == math.log(closes[h + t + 1] / closes[h + t])
            assert rows[t]["label_direction"] == ("up" if closes[h + t + 1] > closes[h + t] else
                                                  "down" if closes[h + t + 1] < closes[h + t] else "flat")
    assert rows[0]["rv_20"] is not None  # the first day's first bar has the day before as history
    assert rows[-1]["label_ret_1"] is None and rows[-1]["label_direction"] is None  # no bar after it

    # change every bar after t+1: rows up to t keep features and labels; row t+1 keeps its features
    t = len(rows) // 2
    cut = rows[t + 1]["ts"]
    bars = frames.OHLCV
    with get_engine(db_url).begin() as conn:  # Core, so SQLite compares ts in its stored format
        conn.execute(update(bars).where(bars.c.symbol == "DSA", bars.c.ts > cut).values(
            close=bars.c.close * 3, high=bars.c.high * 3, open=bars.c.open * 3, low=bars.c.low * 3,
            volume=bars.c.volume * 7))
    after = dataset.build(settings, "DSA", "1m", DAYS[1], DAYS[2]).to_pylist()
    assert after[:t + 1] == rows[:t + 1]
    assert {f: after[t + 1][f] for f in features.FEATURES} == {f: rows[t + 1][f] for f in features.FEATURES}
    assert after[t + 1]["label_ret_1"] != rows[t + 1]["label_ret_1"]
    # change bar t+1 alone: row t's label follows, its features do not
    with get_engine(db_url).begin() as conn:
        conn.execute(update(bars).where(bars.c.symbol == "DSA", bars.c.ts == cut).values(
            close=bars.c.close * 2, high=bars.c.high * 2))
    again = dataset.build(settings, "DSA", "1m", DAYS[1], DAYS[2]).to_pylist()
    assert again[:t] == rows[:t]
    assert {f: again[t][f] for f in features.FEATURES} == {f: rows[t][f] for f in features.FEATURES}
    assert again[t]["label_ret_1"] == pytest.approx(rows[t]["label_ret_1"] + math.log(2))
    assert again[t]["label_direction"] == "up"


def test_dataset_from_the_lake_equals_the_one_from_the_database(pg_url, flatfiles, tmp_path, monkeypatch):
    monkeypatch.setenv("CHRONOX_LAKE_URL", str(tmp_path / "lake"))
    load(pg_url, flatfiles, "DSL")
    outputs = {}
    for source in ("db", "lake"):
        out = tmp_path / f"{source}.parquet"
        result = CliRunner().invoke(cli, ["dataset", "build", "--symbol", "dsl", "--tf", "1m", "--start",
                                          DAYS[1].isoformat(), "--end", DAYS[1].isoformat(), "--out", str(out),
                                          "--from", source])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"{out}: ")
        assert f"DSL 1m from {DAYS[1]} to {DAYS[1]} ({source})" in result.output
        outputs[source] = pq.read_table(out)
    assert outputs["lake"].equals(outputs["db"])
    rows = outputs["db"].to_pylist()
    assert rows[0]["rv_20"] is not None  # history from the day before, in the lake too
    assert rows[-1]["label_ret_1"] is not None  # the label of the day's last bar is the next day's first
    assert outputs["db"].schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert outputs["db"].num_rows == sum(1 for t in all_bars(pg_url, "DSL").column("ts").to_pylist()
                                         if NYSE.day_bounds(DAYS[1])[0] <= t
                                         < NYSE.day_bounds(DAYS[1])[1])


def test_dataset_mistakes_are_one_line(sqlite_url, tmp_path):
    out = str(tmp_path / "x.parquet")
    for args, message in [
        (["--symbol", "NOPE", "--start", "2024-01-02", "--end", "2024-01-03"], "no 1m bars of NOPE from 2024-01-02"),
        (["--symbol", "NOPE", "--start", "2024-01-05", "--end", "2024-01-03"], "start 2024-01-05 is after end"),
        (["--symbol", "NOPE", "--start", "2024-01-02", "--end", "2024-01-03", "--from", "lake"],
         "no lake configured: set CHRONOX_LAKE_URL"),
        (["--symbol", "NOPE", "--tf", "5m", "--start", "2024-01-02", "--end", "2024-01-03"],
         "datasets are built from 1m bars"),
    ]:
        result = CliRunner().invoke(cli, ["dataset", "build", *args, "--out", out])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert result.output.count("\n") == 1, result.output
    assert not (tmp_path / "x.parquet").exists()
