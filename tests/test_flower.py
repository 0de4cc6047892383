"""Flower is the job view: a real Flower on Redis sees a real worker's backfill tasks."""
import ast
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from chronox import registry
from chronox.db import get_engine
from tests.conftest import DAYS, REPO
from tests.helpers import wait_for_statuses, write_days


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_text(url: str, user: str, password: str) -> str:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def get_json(url: str, user: str, password: str):
    return json.loads(get_text(url, user, password))


def test_flower_lists_a_backfill_with_names_arguments_and_states(pg_url, flatfiles, start_worker, celery_client,
                                                                 tmp_path, monkeypatch):
    # the replay provider answers REST from the flat files, so the symbol's chain has its REST tasks
    monkeypatch.setenv("CHRONOX_PROVIDER", "replay")
    write_days(flatfiles, DAYS[:2], ["FLA"])
    registry.add_symbol(get_engine(pg_url), "FLA", "flatpack")
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "chronox", "flower", f"--port={port}", "--address=127.0.0.1",
         "--basic-auth=ops:secret", f"--db={tmp_path / 'flower.db'}", "--persistent=True"],
        cwd=REPO, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                get_json(f"{base}/api/workers?refresh=0", "ops", "secret")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "flower.log").read_text()) from None
                time.sleep(0.3)
        start_worker(concurrency=2)
        run = celery_client.send_task("chronox.backfill", args=["FLA"],
                                      kwargs={"start": DAYS[0].isoformat(), "end": DAYS[1].isoformat()})
        assert wait_for_statuses(pg_url, ["FLA"]) == {"FLA": "completed"}
        deadline = time.monotonic() + 20
        while True:
            tasks = get_json(f"{base}/api/tasks", "ops", "secret")
            names = {t["name"] for t in tasks.values() if t.get("state") == "SUCCESS"}
            if "chronox.phase.finalize" in names or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        by_name: dict[str, list[dict]] = {}
        for task in tasks.values():
            by_name.setdefault(task["name"], []).append(task)
        assert {"chronox.backfill", "chronox.phase.begin", "chronox.phase.flatpack_day",
                "chronox.phase.fanout", "chronox.phase.finalize"} <= set(by_name)
        assert all(t["state"] == "SUCCESS" for ts in by_name.values() for t in ts)
        days = sorted(ast.literal_eval(t["kwargs"])["day"] for t in by_name["chronox.phase.flatpack_day"])
        assert days == [d.isoformat() for d in DAYS[:2]]
        [final] = by_name["chronox.phase.finalize"]
        assert "'symbol': 'FLA'" in final["kwargs"]
        assert "'rows'" in final["result"] and "completed" in final["result"]
        # what the README tells an operator to do: search by symbol, follow root_id, scrape /metrics
        found = get_json(f"{base}/api/tasks?search=kwargs:symbol=FLA", "ops", "secret")
        assert {t["name"] for t in found.values()} == {"chronox.rest.reference", "chronox.rest.corporate_actions",
                                                       "chronox.rest.daily_bars", "chronox.phase.finalize"}
        info = get_json(f"{base}/api/task/info/{final['uuid']}", "ops", "secret")
        assert info["root_id"] == run.id
        assert {t["root_id"] for t in tasks.values()} == {run.id}
        metrics = get_text(f"{base}/metrics", "ops", "secret")
        assert any(line.startswith("flower_events_total{") and 'task="chronox.phase.finalize"' in line
                   for line in metrics.splitlines())
        assert "flower_task_runtime_seconds_bucket{" in metrics and "flower_worker_online{" in metrics
        # unauthenticated access is refused
        try:
            urllib.request.urlopen(f"{base}/api/tasks", timeout=5)
            raise AssertionError("Flower answered without credentials")
        except urllib.error.HTTPError as err:
            assert err.code == 401
    finally:
        flower.terminate()
        flower.wait(timeout=20)
        log.close()
