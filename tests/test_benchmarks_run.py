"""Every benchmark in bench/ runs to its end on a small workload and ends with its figure.

The figures themselves are not asserted (they are measured on the full workloads and kept in
the README); what this keeps is that each script still works against the code as it is,
including the checks each makes of its own results (rows stored, gaps found, messages sent).
A benchmark that a refactoring broke (as lake_write once was) fails here, not on the next
person who runs it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)

# Arguments that keep each run to seconds; at least as large as a benchmark's own phases need
# (realtime_latency waits for 30 REST windows of its backfill before measuring).
SMALL = {
    "flatfile_ingest": ["--tickers", "50"],
    "gap_scan": ["--symbols", "50", "--rounds", "1"],
    "growth": ["--symbols", "20", "--days", "4", "--window", "2"],
    "kafka_publish": ["--bars", "500", "--symbols", "5", "--rounds", "1"],
    "lake_write": ["--symbols", "30", "--liquid", "5", "--liquid-bars", "20", "--tail-bars", "3", "--rounds", "1"],
    "orchestration": ["--symbols", "5", "--rounds", "1"],
    "realtime_latency": ["--active", "10", "--backfill", "40", "--runs", "2", "--interval", "1"],
    "snapshot_cycle": ["--symbols", "50", "--rounds", "1"],
    "stream_throughput": ["--symbols", "20", "--count", "200"],
    "topic_fanout": ["--symbols", "50", "--rounds", "1", "--probe-topics", "2"],
    "trades_ingest": ["--rows", "20000", "--tickers", "50"],
}


def test_every_benchmark_script_is_listed():
    assert sorted(p.stem for p in (REPO / "bench").glob("[!_]*.py")) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_benchmark_runs_and_ends_with_its_ratio(name: str, tmp_path: Path):
    args = [*SMALL[name], *(["--cache-dir", str(tmp_path)] if name == "trades_ingest" else [])]
    # The benchmarks choose their own databases, brokers and stand-ins; nothing of a test's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOX_") and k != "POLYGON_API_KEY"}
    result = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    lines = result.stdout.strip().splitlines()
    # realtime_latency adds the loaded p95 after its ratio (issue 13 asked for that line).
    ratio_line = lines[-2] if name == "realtime_latency" else lines[-1]
    assert re.fullmatch(rf"{name} ratio=\d+\.\d\d", ratio_line), lines[-3:]
    if name == "realtime_latency":
        assert re.fullmatch(r"realtime_latency p95=\d+\.\d\d", lines[-1]), lines[-3:]
