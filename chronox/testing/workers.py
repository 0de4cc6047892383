"""Real `celery worker` processes for tests and benchmarks, started as deployed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

# The directory holding the chronox package (and celeryconfig): a checkout's root.
ROOT = Path(__file__).resolve().parent.parent.parent


class WorkerProcess:
    """One `celery -A chronox worker` process (prefork, `concurrency` children) with `env` as its
    environment, logging at INFO to chronox-worker-<name>.log in $CHRONOX_TEST_LOG_DIR (default /tmp)."""

    def __init__(self, env: dict[str, str], concurrency: int = 2, queues: str | None = None,
                 name: str | None = None, cwd: Path = ROOT) -> None:
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        args = [sys.executable, "-m", "celery", "-A", "chronox", "worker", "-P", "prefork",
                "-c", str(concurrency), "-n", f"{self.name}@%h", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle", "-E"]
        if queues:
            args += ["-Q", queues]
        self.log_path = Path(env.get("CHRONOX_TEST_LOG_DIR", "/tmp")) / f"chronox-worker-{self.name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, client: Celery, timeout: float = 60) -> None:
        """Return once this worker answers `client`'s ping (a Celery client on the worker's broker)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            replies = client.control.ping(timeout=1.0)
            if any(self.name in key for reply in replies for key in reply):
                return
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """The end of the worker's log (its last 6,000 characters)."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        """SIGTERM to the worker's process group (warm shutdown); SIGKILL after 20 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
