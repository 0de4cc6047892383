"""Celery orchestration cost: one registry execution run by two `celery worker` processes
versus the same domain functions called in a ProcessPoolExecutor(max_workers=2).

Setup: a fresh, migrated PostgreSQL database; synthetic Polygon-layout day files
(chronox.sample) for S000..S199 over 5 trading days, optionally with other tickers in the
files; those symbols registered with strategy `flatpack`. Kafka is off on both sides
(CHRONOX_KAFKA_BROKERS unset), and so is POLYGON_API_KEY: with no REST provider the
canvas leaves the REST steps of the flatpack phase out and begin puts the "skipped"
warning on the registry rows. Both sides follow the canvas's own functions
(chronox.tasks.backfill.prepare_chain, symbol_chain, rest_skipped), so they do the same work.

Celery side: `chronox.registry.execute` sent to 2 worker processes (`celery -A chronox
worker -c 1`, all queues, Redis broker and result backend on a private database number),
timed from send_task until every symbol's registry status is completed or error. The
workers are started, answer a ping and run a warm-up execution before anything is timed.

Baseline: the canvas's dependency order with plain futures, in a pool that has also run a
warm-up execution: plan_run + schedule, begin_run, then {load_day per day, the REST
prepare steps per symbol} in parallel, then finalize_symbol per symbol in parallel (the
canvas batches finalizes, 25 symbols to a task, because a Celery task costs milliseconds
of messaging; a pool job costs a fraction of one, so batching would not help the pool).

Before every measured execution the database is truncated and the registry re-created,
so both sides do first loads. Sides alternate (pool first in even rounds, Celery first in
odd ones); the medians are compared. After every execution the data are fingerprinted
(rows, volume and an md5 of every bar per symbol and day, coverage, registry rows) and must
equal the generated files and the other side's, or the script exits non-zero.
Last line: `orchestration ratio=<median Celery wall s / median pool wall s>`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PG_ADMIN_URL  # noqa: E402

from chronox.testing.services import temporary_database, truncate_all  # noqa: E402

START = dt.date(2024, 1, 2)
END = dt.date(2024, 1, 8)  # Jan 2, 3, 4, 5 and 8: five NYSE trading days
ALL_QUEUES = "chronox.control,chronox.flatfiles,chronox.rest,chronox.publish"
BROKER_URL = os.environ.get("CHRONOX_BENCH_ORCH_BROKER_URL", "redis://127.0.0.1:6379/7")
# Marks the Redis database as this benchmark's, so a rerun after a crash may flush it
# but a database someone else is using is never flushed.
SENTINEL = "chronox-bench-orchestration"
TASK_LINE = re.compile(rb"Task ([\w.]+)\[[0-9a-f-]{36}\] (succeeded in ([0-9.e-]+)s|retry|raised|failed)")


def symbols_of(count: int) -> list[str]:
    width = max(3, len(str(count - 1)))
    return [f"S{i:0{width}d}" for i in range(count)]


def generate(root: Path, symbols: list[str], extra: int) -> dict[tuple[str, str], int]:
    """Day files for symbols plus `extra` other tickers; rows per (symbol, day) of the symbols."""
    from chronox.calendar import trading_days
    from chronox.sample import NOTICE, day_rows, write_day_file

    root.mkdir(parents=True, exist_ok=True)
    (root / "SYNTHETIC_DATA_README.txt").write_text(NOTICE)
    wanted = set(symbols)
    expected: dict[tuple[str, str], int] = Counter()
    for day in trading_days(START, END):
        rows = day_rows(day, symbols + [f"X{i:04d}" for i in range(extra)])
        write_day_file(root, day, rows)
        for row in rows:
            if row[0] in wanted:
                expected[(row[0], day.isoformat())] += 1
    return dict(expected)


def reset(url: str, symbols: list[str]) -> None:
    """Every table empty and the symbols registered afresh, as before a first load."""
    from chronox.db import get_engine
    from chronox.models import SymbolRegistry

    truncate_all(url)
    now = dt.datetime.now(dt.UTC)
    with get_engine(url).begin() as conn:
        conn.execute(SymbolRegistry.__table__.insert(), [
            {"symbol": s, "strategy": "flatpack", "timeframe": "1m", "enabled": True, "status": "idle",
             "created_at": now, "updated_at": now} for s in symbols])


def fingerprint(url: str) -> dict[str, Any]:
    """What an execution left behind, in a form two executions can be compared by."""
    from sqlalchemy import text

    from chronox.db import get_engine

    with get_engine(url).connect() as conn:
        bars = {(s, d.isoformat()): (n, v, h) for s, d, n, v, h in conn.execute(text(
            "SELECT symbol, (ts AT TIME ZONE 'America/New_York')::date, count(*), sum(volume), "
            "md5(string_agg(concat_ws(',', ts, open, high, low, close, volume, vwap, transactions, source), "
            "';' ORDER BY ts)) FROM ohlcv_1m GROUP BY 1, 2"))}
        coverage = {(s, d.isoformat(), src): n for s, d, src, n in conn.execute(text(
            "SELECT symbol, trading_day, source, rows FROM coverage"))}
        registry = {s: (st, msg, str(lb)) for s, st, msg, lb in conn.execute(text(
            "SELECT symbol, status, error_message, last_backfill FROM symbol_registry"))}
        others = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("quarantine", "publish_outbox", "ticker_details", "dividends", "splits", "ohlcv_1d")}
    return {"bars": bars, "coverage": coverage, "registry": registry, "others": others}


def verify(found: dict[str, Any], expected: dict[tuple[str, str], int], reference: dict[str, Any] | None,
           label: str) -> None:
    """Fail loudly unless every bar of the files is stored, every symbol completed, and the
    result equals the reference execution's."""
    problems = []
    rows = {k: v[0] for k, v in found["bars"].items()}
    if rows != expected:
        diff = sorted(set(rows.items()) ^ set(expected.items()))[:5]
        problems.append(f"rows per symbol/day differ from the files, e.g. {diff}")
    covered = {(s, d): n for (s, d, _), n in found["coverage"].items()}
    if covered != expected:
        problems.append("coverage differs from the files")
    not_done = {s: v for s, v in found["registry"].items() if v[0] != "completed" or v[2] != END.isoformat()}
    if not_done:
        problems.append(f"{len(not_done)} symbol(s) not completed through {END}, e.g. {next(iter(not_done.items()))}")
    if reference is not None:
        for part in ("bars", "coverage", "registry", "others"):
            if found[part] != reference[part]:
                problems.append(f"{part} differ from the reference execution")
    if problems:
        raise SystemExit(f"{label}: " + "; ".join(problems))


# ---- baseline: the domain functions in a process pool -------------------------------------

def _pool_init(env: dict[str, str], log_path: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    # The domain functions log like they do in a worker (the skipped REST steps warn per
    # symbol); into a file, as the workers do, not to the terminal.
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
    import chronox.backfill  # noqa: F401  (imported before timing, as a worker child has)
    import chronox.completion  # noqa: F401
    import chronox.rest  # noqa: F401


def _timed(func: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = func(*args)
    return value, time.perf_counter() - started


def _job_plan(request: dict[str, Any]) -> tuple[Any, float]:
    from chronox import backfill
    from chronox.settings import load_settings

    def plan() -> backfill.RunPlan:
        settings = load_settings()
        found = backfill.plan_run(settings, **request)
        backfill.schedule(settings, found)
        return found

    return _timed(plan)


def _job_begin(symbols: list[str], rest_skipped: list[str]) -> tuple[Any, float]:
    from chronox import backfill
    from chronox.settings import load_settings

    return _timed(lambda: backfill.begin_run(load_settings(), symbols, rest_skipped=rest_skipped))


def _job_day(day: str, symbols: list[str]) -> tuple[Any, float]:
    from chronox import backfill
    from chronox.settings import load_settings

    return _timed(lambda: backfill.load_day(load_settings(), day, symbols))


def _job_prepare(steps: list[str], symbol: str, start: str, end: str) -> tuple[Any, float]:
    """One symbol's prepare chain: the domain function of each chained REST task, in order."""
    from chronox import rest
    from chronox.settings import load_settings

    calls = {"chronox.rest.reference": lambda s: rest.load_reference(s, symbol),
             "chronox.rest.corporate_actions": lambda s: rest.load_corporate_actions(s, symbol),
             "chronox.rest.daily_bars": lambda s: rest.load_daily_bars(s, symbol, start, end)}
    return _timed(lambda: [calls[step](load_settings()) for step in steps])


def _job_finalize(symbol: str, start: str, end: str, days: list[str]) -> tuple[Any, float]:
    from chronox import completion
    from chronox.settings import load_settings

    return _timed(lambda: completion.finalize_symbol(load_settings(), symbol, start, end, days))


PREPARE_FUNCTIONS = ("chronox.rest.reference", "chronox.rest.corporate_actions", "chronox.rest.daily_bars")


def pool_execution(pool: ProcessPoolExecutor, request: dict[str, Any]) -> dict[str, Any]:
    """The registry execution's canvas with futures: wall time, jobs, calls, seconds inside jobs."""
    from chronox.tasks.workflow import prepare_chain, rest_available, rest_skipped, symbol_chain

    kinds: dict[str, list[float]] = defaultdict(list)
    started = time.perf_counter()
    plan, spent = pool.submit(_job_plan, request).result()
    kinds["plan_run+schedule"].append(spent)
    with_rest = rest_available(plan.options)
    kinds["begin_run"].append(pool.submit(_job_begin, [s.symbol for s in plan.symbols],
                                          rest_skipped(plan, with_rest)).result()[1])
    days: list[Future] = [pool.submit(_job_day, day, symbols) for day, symbols in plan.days.items()]
    header = list(days)
    calls = len(header)
    for spec in plan.symbols:
        steps = [sig.task for sig in prepare_chain(spec.as_dict(), plan.options, with_rest)]
        unknown = set(steps) - set(PREPARE_FUNCTIONS)
        if unknown:
            raise SystemExit(f"baseline has no domain function for {sorted(unknown)}")
        if steps:
            header.append(pool.submit(_job_prepare, steps, spec.symbol, spec.start, spec.end))
            calls += len(steps)
    wait(header)
    for future in header:  # .result() re-raises a failed job
        kinds["load_day" if future in days else "prepare chain"].append(future.result()[1])
    tails: list[Future] = []
    for spec in plan.symbols:
        steps = [sig.task for sig in symbol_chain(spec.as_dict(), plan.options, with_rest)]
        if steps != ["chronox.phase.finalize"]:
            raise SystemExit(f"baseline only knows finalize after the day loads, not {steps}")
        tails.append(pool.submit(_job_finalize, spec.symbol, spec.start, spec.end, spec.days))
    wait(tails)
    kinds["finalize_symbol"].extend(f.result()[1] for f in tails)
    wall = time.perf_counter() - started
    return {"wall": wall, "jobs": 2 + len(header) + len(tails), "calls": 2 + calls + len(tails),
            "busy": sum(sum(v) for v in kinds.values()), "kinds": kinds}


# ---- Celery side: real workers ------------------------------------------------------------

def claim_redis_db(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    if client.dbsize() and not client.exists(SENTINEL):
        raise SystemExit(f"{url} holds someone else's keys; choose another database with "
                         "CHRONOX_BENCH_ORCH_BROKER_URL")
    client.flushdb()
    client.set(SENTINEL, "1")


def planned_tasks(plan: dict[str, Any]) -> Counter:
    """Tasks one execution runs, by name, derived from its plan as dispatch() builds it."""
    from chronox.tasks.workflow import compact_specs, flatten, prepare_chain, rest_available, tail_signatures

    options = plan.get("options") or {}
    with_rest = rest_available(options)
    count: Counter = Counter({"chronox.registry.execute": 1, "chronox.phase.begin": 1,
                              "chronox.phase.flatpack_day": len(plan["days"]), "chronox.phase.fanout": 1})
    for spec in plan["symbols"]:
        count.update(sig.task for sig in prepare_chain(spec, options, with_rest))
    for tail in tail_signatures(compact_specs(plan["symbols"]), options, with_rest):
        count.update(sig.task for sig in flatten(tail))
    return count


class WorkerLogs:
    """Task outcomes the workers logged since the last mark."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.offsets = [0] * len(paths)

    def mark(self) -> None:
        self.offsets = [p.stat().st_size for p in self.paths]

    def since_mark(self) -> tuple[Counter, Counter, dict[str, float]]:
        """(succeeded by task name, other outcomes, seconds inside tasks by name)"""
        done: Counter = Counter()
        other: Counter = Counter()
        inside: dict[str, float] = defaultdict(float)
        for path, offset in zip(self.paths, self.offsets, strict=True):
            with open(path, "rb") as log:
                log.seek(offset)
                for match in TASK_LINE.finditer(log.read()):
                    name = match.group(1).decode()
                    if match.group(3) is not None:
                        done[name] += 1
                        inside[name] += float(match.group(3))
                    else:
                        other[f"{name} {match.group(2).decode()}"] += 1
        return done, other, inside


def celery_execution(app, url: str, request: dict[str, Any],  # type: ignore[no-untyped-def]
                     logs: WorkerLogs, timeout: float) -> dict[str, Any]:
    from sqlalchemy import text

    from chronox.db import get_engine

    engine = get_engine(url)
    # One count per poll, every 20 ms: cheap enough not to slow the workers down, fine
    # enough (< 1 %) for executions of seconds.
    unfinished = text("SELECT count(*) FROM symbol_registry WHERE status NOT IN ('completed', 'error')")
    logs.mark()
    started = time.perf_counter()
    result = app.send_task("chronox.registry.execute", kwargs=request)
    while True:
        with engine.connect() as conn:
            left = conn.execute(unfinished).scalar_one()
        if left == 0:
            break
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"execution not finished in {timeout:.0f}s: {left} symbol(s) left")
        time.sleep(0.02)
    wall = time.perf_counter() - started
    # Polled rather than get(): get() would hold a result subscription open in the backend.
    while not result.ready():
        if time.perf_counter() - started > timeout:
            raise SystemExit("chronox.registry.execute has no result although every symbol finished")
        time.sleep(0.01)
    if not result.successful():
        raise SystemExit(f"chronox.registry.execute failed: {result.result!r}")
    expected = planned_tasks(result.result)
    deadline = time.monotonic() + 30
    while True:  # the last "succeeded" lines trail the last registry update by a moment
        done, other, inside = logs.since_mark()
        if sum(done.values()) >= sum(expected.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if other or done != expected:
        raise SystemExit(f"workers ran {dict(done)} (and {dict(other)}), the plan has {dict(expected)}")
    return {"wall": wall, "tasks": sum(done.values()), "by_name": done, "busy": sum(inside.values()),
            "inside": inside}


def start_workers(app, env: dict[str, str], count: int, log_dir: str) -> list:  # type: ignore[no-untyped-def]
    from chronox.testing.workers import WorkerProcess

    workers = []
    try:
        for i in range(count):
            workers.append(WorkerProcess({**env, "CHRONOX_TEST_LOG_DIR": log_dir}, concurrency=1,
                                         queues=ALL_QUEUES, name=f"orch{i}-{uuid.uuid4().hex[:6]}"))
        for worker in workers:
            worker.wait_ready(app)
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


# ---- the run ------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=200, help="registry symbols (strategy flatpack)")
    parser.add_argument("--extra-tickers", type=int, default=0,
                        help="other tickers in the day files, read and skipped by every day load")
    parser.add_argument("--rounds", type=int, default=4,
                        help="measured executions per side, alternating which side goes first; medians count")
    parser.add_argument("--processes", type=int, default=2, help="worker processes = pool size")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one Celery execution may take")
    args = parser.parse_args()

    symbols = symbols_of(args.symbols)
    request = {"symbols": None, "start": START.isoformat(), "end": END.isoformat(), "strategy": None}
    with tempfile.TemporaryDirectory(prefix="chronox-orch-") as tmp, \
            temporary_database("chronox_bench_orch", PG_ADMIN_URL) as url:
        root = Path(tmp) / "flatfiles"
        began = time.perf_counter()
        expected = generate(root, symbols, args.extra_tickers)
        days = sorted({d for _, d in expected})
        print(f"{len(symbols)} flatpack symbols x {len(days)} days ({days[0]}..{days[-1]}), "
              f"{sum(expected.values())} bars of theirs in day files with {args.extra_tickers} other tickers "
              f"(generated in {time.perf_counter() - began:.1f} s); PostgreSQL, Kafka off, no POLYGON_API_KEY "
              f"(REST steps left out, a warning on the rows, on both sides)")

        for name in list(os.environ):
            if name.startswith("CHRONOX_") or name == "POLYGON_API_KEY":
                del os.environ[name]
        os.environ.update({"CHRONOX_DATABASE_URL": url, "CHRONOX_FLATFILES_URL": str(root),
                           "CHRONOX_BROKER_URL": BROKER_URL})
        env = dict(os.environ)
        claim_redis_db(BROKER_URL)
        from chronox.celery_app import make_client
        from chronox.settings import load_settings

        app = make_client(load_settings())
        workers = start_workers(app, env, args.processes, tmp)
        logs = WorkerLogs([w.log_path for w in workers])
        pool = ProcessPoolExecutor(max_workers=args.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_pool_init, initargs=(env, str(Path(tmp) / "pool.log")))
        try:
            reference: dict[str, Any] | None = None
            results: dict[str, list[dict[str, Any]]] = {"pool": [], "celery": []}

            def run(side: str) -> dict[str, Any]:
                nonlocal reference
                reset(url, symbols)
                if side == "pool":
                    outcome = pool_execution(pool, request)
                else:
                    outcome = celery_execution(app, url, request, logs, args.timeout)
                found = fingerprint(url)
                verify(found, expected, reference, side)
                reference = reference or found
                return outcome

            # Warm-up: imports, database connections and worker pools ready on both sides.
            warm = {side: run(side)["wall"] for side in ("pool", "celery")}
            print(f"warm-up executions (not counted): pool {warm['pool']:.2f} s, celery {warm['celery']:.2f} s")
            for i in range(args.rounds):
                for side in (("pool", "celery") if i % 2 == 0 else ("celery", "pool")):
                    results[side].append(run(side))
        finally:
            pool.shutdown()
            for worker in workers:
                worker.stop()
            app.close()
            import redis

            redis.Redis.from_url(BROKER_URL).flushdb()

        pool_runs, celery_runs = results["pool"], results["celery"]
        pool_wall = statistics.median(r["wall"] for r in pool_runs)
        celery_wall = statistics.median(r["wall"] for r in celery_runs)
        bars = sum(expected.values())
        last = celery_runs[-1]
        by_name = ", ".join(f"{n} {c}" for n, c in sorted(last["by_name"].items()))
        print(f"data identical on both sides after every execution: {bars} bars, "
              f"{len(expected)} symbol-days, {len(symbols)} symbols completed")
        print(f"pool ({args.processes} processes): {pool_runs[-1]['jobs']} jobs, "
              f"{pool_runs[-1]['calls']} domain calls; wall "
              + ", ".join(f"{r['wall']:.2f}" for r in pool_runs) + f" s; median {pool_wall:.2f} s; "
              f"time inside jobs {statistics.median(r['busy'] for r in pool_runs):.2f} s")
        print(f"celery ({args.processes} workers x 1): {last['tasks']} tasks ({by_name}); wall "
              + ", ".join(f"{r['wall']:.2f}" for r in celery_runs) + f" s; median {celery_wall:.2f} s; "
              f"time inside tasks {statistics.median(r['busy'] for r in celery_runs):.2f} s")
        inside: dict[str, float] = defaultdict(float)
        for r in celery_runs:
            for name, seconds in r["inside"].items():
                inside[name] += seconds
        print("celery mean time per task as the workers log it (includes Celery's result stores and chain/"
              "chord publishing), ms: " + ", ".join(
                  f"{n.rsplit('.', 1)[1]} {inside[n] * 1000 / (c * len(celery_runs)):.1f}"
                  for n, c in sorted(last["by_name"].items(), key=lambda kv: kv[0])))
        kinds: dict[str, list[float]] = defaultdict(list)
        for r in pool_runs:
            for kind, seconds in r["kinds"].items():
                kinds[kind].extend(seconds)
        print("pool mean time per job, ms: " + ", ".join(
            f"{kind} {statistics.fmean(v) * 1000:.1f}" for kind, v in kinds.items()))
        overhead = (celery_wall - pool_wall) * args.processes / last["tasks"]
        print(f"celery extra wall time {celery_wall - pool_wall:.2f} s = {overhead * 1000:.1f} ms of "
              f"process time per task")
        print(f"orchestration ratio={celery_wall / pool_wall:.2f}")


if __name__ == "__main__":
    main()
