"""Bench-only plumbing: this checkout on sys.path (so the scripts run from a checkout without
an install) and the PostgreSQL server the benchmarks create their databases on. Everything
else they share (mock Kafka, throwaway databases, worker processes, the Polygon stand-ins)
is chronox.testing's."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PG_ADMIN_URL = os.environ.get("CHRONOX_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def peak_rss_mb() -> float:
    """This process's own high-water mark of resident memory (ru_maxrss would include the
    parent's at fork)."""
    import resource

    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(target: Callable[..., None], *args: Any) -> Any:
    """What `target(*args, queue)` puts on its queue, run in a new (spawned) interpreter, so
    its time and peak memory are its own and none of this process's imports are in them."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, queue))
    child.start()
    result = queue.get()
    child.join()
    return result
