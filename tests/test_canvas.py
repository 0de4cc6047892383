"""The shape of a registry execution's canvas: what runs when there is no REST provider,
how finalizes are batched, and how the fan-out's arguments stay small."""
import json

from chronox import registry
from chronox.backfill import plan_run
from chronox.db import get_engine
from chronox.rest import SKIP_WARNING
from chronox.runner import inline_steps, run_inline
from chronox.settings import load_settings
from chronox.tasks.workflow import FINALIZE_BATCH, compact_specs, expand_specs
from tests.conftest import DAYS
from tests.helpers import rows_by_symbol_day, write_days

FLAT = [f"CV{i:02d}" for i in range(FINALIZE_BATCH + 5)]


def register(url: str) -> None:
    engine = get_engine(url)
    for symbol in FLAT:
        registry.add_symbol(engine, symbol, "flatpack")
    registry.add_symbol(engine, "CVAPI", "flatpack+api")


def planned():  # type: ignore[no-untyped-def]
    return plan_run(load_settings(), start=DAYS[0].isoformat(), end=DAYS[1].isoformat())


def test_without_a_provider_rest_steps_are_left_out_and_finalizes_are_batched(sqlite_url, flatfiles):
    expected = write_days(flatfiles, DAYS[:2], [*FLAT, "CVAPI"])
    register(sqlite_url)
    steps = inline_steps(planned())
    names = [s.task for s in steps]
    assert names == ["chronox.phase.begin", "chronox.phase.flatpack_day", "chronox.phase.flatpack_day",
                     "chronox.phase.finalize_batch", "chronox.phase.finalize_batch", "chronox.phase.finalize"]
    assert [s.kwargs["symbols"] for s in steps[3:5]] == [FLAT[:FINALIZE_BATCH], FLAT[FINALIZE_BATCH:]]
    assert steps[5].kwargs["symbol"] == "CVAPI"  # its api phase needs a provider: finalize alone

    results = run_inline(steps)
    assert results[0]["skipped"] == SKIP_WARNING and results[0]["symbols"] == sorted([*FLAT, "CVAPI"])
    assert results[3] == {"symbols": FINALIZE_BATCH, "status": {"completed": FINALIZE_BATCH},
                          "rows": sum(expected[(s, d)] for s in FLAT[:FINALIZE_BATCH] for d in DAYS[:2])}
    assert rows_by_symbol_day(sqlite_url) == {(s, d.isoformat()): n for (s, d), n in expected.items()}
    engine = get_engine(sqlite_url)
    for symbol in [*FLAT, "CVAPI"]:
        row = registry.get_symbol(engine, symbol)
        assert (row.status, row.last_backfill, row.error_message) == \
            ("completed", DAYS[1], SKIP_WARNING), row


def test_with_a_provider_every_symbol_gets_its_rest_steps(sqlite_url, flatfiles, monkeypatch):
    monkeypatch.setenv("CHRONOX_PROVIDER", "replay")
    write_days(flatfiles, DAYS[:2], [*FLAT, "CVAPI"])
    register(sqlite_url)
    names = [s.task for s in inline_steps(planned())]
    for task in ("chronox.rest.reference", "chronox.rest.corporate_actions", "chronox.rest.daily_bars"):
        assert names.count(task) == len(FLAT) + 1
    assert names.count("chronox.phase.finalize_batch") == 2
    # the api symbol keeps its own chain: gap fill, then its finalize
    assert names[-2:] == ["chronox.rest.api_gaps", "chronox.phase.finalize"]


def test_the_fan_out_arguments_hold_each_window_once(sqlite_url, flatfiles):
    write_days(flatfiles, DAYS[:2], [*FLAT, "CVAPI"])
    register(sqlite_url)
    specs = [s.as_dict() for s in planned().symbols]
    groups = compact_specs(specs)
    assert sorted(g["phases"][-1] for g in groups) == ["api", "flatpack"]
    assert sorted(expand_specs(groups), key=lambda s: s["symbol"]) == sorted(specs, key=lambda s: s["symbol"])
    assert len(json.dumps(groups)) * 4 < len(json.dumps(specs))
