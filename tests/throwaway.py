"""Throwaway Redis and PostgreSQL servers on ports of our own, so a test can stop and restart "the broker" or
"the database" without touching the shared ones. Each is stopped only by what started it (its own pid or data
folder)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port


def _wait_until(ready: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


class RedisProcess:
    """redis-server without persistence: a restart comes back empty, like a failover or a restart without AOF."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                           capture_output=True).stdout.strip() == b"PONG", "redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # no shutdown save: what it held is gone
            self.proc.wait(timeout=20)
            self.proc = None


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise FileNotFoundError(f"{name} (PostgreSQL's server binaries) is not installed")
    return found


class PostgresProcess:
    """A PostgreSQL cluster in a temp folder (initdb + pg_ctl as the postgres user), trust auth, on its own port."""

    def __init__(self) -> None:
        self.port = free_port()
        # A folder of its own under /tmp, not pytest's tmp_path: that one is root-only, and initdb refuses to run
        # as root, so the server runs as the postgres user and must reach its folder.
        self.workdir = Path(tempfile.mkdtemp(prefix="trainserve-pg-"))
        self.datadir = self.workdir / "pgdata"
        self.logfile = self.workdir / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.workdir, user="postgres")
        self._run(pg_bin("initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} -c fsync=off"
        self._run(pg_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-o", options, "-w", "start")
        _wait_until(lambda: subprocess.run([pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                                           capture_output=True).returncode == 0, "postgres")

    def stop(self) -> None:
        """An abrupt stop (what a crash or a failover looks like to clients): open connections are cut."""
        if (self.datadir / "postmaster.pid").exists():
            self._run(pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
