"""A whole trainserve on this machine, for the end-to-end tests and the benchmarks: `trainserve-server up` (API
and a worker) in a process group of its own under a given TRAINSERVE_HOME, and throwaway PostgreSQL databases.
Nothing in the service itself uses this module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FINISHED = ("succeeded", "failed", "cancelled", "pruned")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    api_key: str
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self, api_key: str | None = None, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout,
                            headers={"Authorization": f"Bearer {api_key or self.api_key}"})

    def worker_pid(self) -> int:
        return int((self.home / "worker.pid").read_text())

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_for_job(self, job_id: str, *, timeout: float = 120,
                     statuses: tuple[str, ...] = FINISHED) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        with self.client() as c:
            while time.monotonic() < deadline:
                job = c.get(f"/jobs/{job_id}").json()
                if job["status"] in statuses:
                    return job
                time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout}s\n{self.log_tail()}")


def start_server(home: Path, *, env_extra: dict[str, str] | None = None, timeout: float = 90) -> LiveServer:
    """`trainserve-server up` on a free port; returns once /healthz answers and the first API key exists."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "TRAINSERVE_HOME": str(home), "TRAINSERVE_PORT": str(port), "TRAINSERVE_HOST": "127.0.0.1",
           "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    log_path = home / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "up"], cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"trainserve-server up exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200 and (home / "api-key").exists():
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    else:
        stop_server(proc)
        raise RuntimeError(f"server did not come up in {timeout}s:\n{log_path.read_text()}")
    return LiveServer(url=url, api_key=(home / "api-key").read_text().strip(), home=home, env=env, proc=proc,
                      log_path=log_path)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def create_pg_database(admin_url: str) -> str:
    """A new, empty database on the server `admin_url` points at; its URL."""
    import psycopg

    name = f"trainserve_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str, *, admin_url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
