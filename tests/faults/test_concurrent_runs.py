"""Two registry executions of the same symbols started at once, on real workers: they load
the same day files side by side, and the database must end as after one run."""
import time

import pytest

from tests.conftest import DAYS
from tests.faults.support import (
    assert_completion_events,
    assert_same_end_state_as_fault_free,
    prepare_run,
    report,
    start_execution,
    wait_for_run,
)

pytestmark = pytest.mark.timeout(150)


def test_two_executions_of_the_same_symbols_at_once_end_as_one(pg_url, flatfiles, kafka, start_worker, redis_url,
                                                               record_property):
    symbols = ["CRA", "CRB", "CRC", "CRD"]
    expected = prepare_run(pg_url, flatfiles, symbols, DAYS)
    # Enough processes for both executions, and both runs' loads of a day, to run at the same time.
    start_worker(concurrency=6)
    started = time.monotonic()
    runs = [start_execution(symbols, DAYS), start_execution(symbols, DAYS)]
    plans = [r.get(timeout=60) for r in runs]
    for plan in plans:
        assert plan["days"] == {d.isoformat(): symbols for d in DAYS}
        assert plan["dispatched"]
    assert plans[0]["dispatched"] != plans[1]["dispatched"]  # two canvases, not one run seen twice
    assert wait_for_run(pg_url, redis_url, symbols) == {s: "completed" for s in symbols}
    elapsed = time.monotonic() - started

    duplicates = assert_same_end_state_as_fault_free(pg_url, kafka, symbols, DAYS, expected)
    assert_completion_events(kafka, symbols, DAYS, expected, runs=2)
    # kafka-first: each run's load publishes every bar of the file before it commits, even
    # when the other run has stored the same rows already; so each bar is sent twice.
    bars = sum(expected.values())
    assert duplicates == bars
    report(record_property, duplicates=duplicates, bars=bars, seconds=round(elapsed, 1))
