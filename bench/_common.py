"""Bench-only plumbing: this checkout on sys.path (so the scripts run from a checkout without
an install) and the PostgreSQL server the benchmarks create their databases on. Everything
else they share (mock Kafka, throwaway databases, worker processes, the Polygon stand-ins)
is chronox.testing's."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PG_ADMIN_URL = os.environ.get("CHRONOX_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
