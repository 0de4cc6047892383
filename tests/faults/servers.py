"""Servers a fault test owns, so it can restart them without touching the machine's shared
ones: a Redis with append-only persistence (as in production: a broker that forgets its
queue on restart loses tasks) and a PostgreSQL cluster made by initdb in a temporary
directory. Both listen on 127.0.0.1 on a free port."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen in {timeout:.0f}s")
        time.sleep(0.1)


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def _ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise RuntimeError("redis-server is not installed (scripts/test.sh installs it)")
        self.proc = subprocess.Popen(
            [redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--logfile", str(self.dir / "redis.log")])
        _wait_for(self._ping, 20, f"private Redis on port {self.port} answering")

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file out and exits, as on a service restart."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def restart(self, down_for: float) -> float:
        """Stop, stay down `down_for` seconds, start; returns the monotonic time it was back."""
        self.stop()
        time.sleep(down_for)
        self.start()
        return time.monotonic()


class PrivatePostgres:
    """PostgreSQL refuses to run as root, so as root the cluster belongs to `postgres`."""

    def __init__(self) -> None:
        bin_dir = _postgres_bin_dir()
        self.initdb, self.pg_ctl = str(bin_dir / "initdb"), str(bin_dir / "pg_ctl")
        # Not under pytest's tmp_path: its parents are private to root, and the server
        # user must reach its data directory.
        self.dir = Path(tempfile.mkdtemp(prefix="chronox-fault-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self.as_owner, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stdout}{proc.stderr}")

    def start(self) -> None:
        # fsync off: the cluster is thrown away; a fast shutdown still checkpoints everything.
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c max_connections=100", "start")

    def stop(self, mode: str = "fast") -> None:
        """fast: open connections are cut, as when an operator restarts the service."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, down_for: float) -> float:
        self.stop()
        time.sleep(down_for)
        self.start()
        return time.monotonic()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already down
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parent.parent.name))
    if not versions:
        raise RuntimeError("initdb not found: install the PostgreSQL server package (scripts/test.sh does)")
    return Path(versions[-1]).parent
