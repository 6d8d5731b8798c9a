"""Live servers for end-to-end tests: real `trainserve-server up` processes, a real worker, real databases.

- `embedded_server`: SQLite + Celery's filesystem transport under a temporary TRAINSERVE_HOME.
- `postgres_server`: a fresh PostgreSQL database + Redis. Under CI (CI=true) these must be reachable, so an
  unreachable one fails the run; on a laptop without them the PostgreSQL tests are skipped.
- `stack`: parametrized over both, for tests that must hold on each.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TRAINSERVE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TRAINSERVE_TEST_REDIS", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() == "true"

# Small limits so the 413 paths can be exercised without huge uploads; everything else keeps defaults.
TEST_LIMITS = {
    "TRAINSERVE_MAX_DATASET_BYTES": str(512 * 1024),
    "TRAINSERVE_MAX_BODY_BYTES": str(2 * 1024 * 1024),
    "TRAINSERVE_HEARTBEAT_SECONDS": "1",
    "TRAINSERVE_REAPER_INTERVAL_SECONDS": "1",
    "TRAINSERVE_MAX_RUNNING_JOBS_PER_TENANT": "50",
    "TRAINSERVE_MAX_SUBMISSIONS_PER_MINUTE": "500",
}


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

    def wait_for_job(self, job_id: str, *, timeout: float = 120, statuses: tuple[str, ...] = (
            "succeeded", "failed", "cancelled")) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                job = c.get(f"/jobs/{job_id}").json()
                if job["status"] in statuses:
                    return job
                time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s\n{self.log_tail()}")


def start_server(home: Path, *, env_extra: dict[str, str] | None = None, timeout: float = 90) -> LiveServer:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "TRAINSERVE_HOME": str(home), "TRAINSERVE_PORT": str(port), "TRAINSERVE_HOST": "127.0.0.1",
           "PYTHONUNBUFFERED": "1", **TEST_LIMITS, **(env_extra or {})}
    log_path = home / "server.log"
    log_file = open(log_path, "wb")
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


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("embedded") / "home")
    yield server
    stop_server(server.proc)


def require_service(what: str, check: Any) -> None:
    """Fail under CI=true, skip elsewhere, when a server the test needs does not answer."""
    try:
        check()
    except Exception as exc:
        message = f"{what} is not reachable ({exc})"
        if IN_CI:
            pytest.fail(f"{message}; under CI=true the PostgreSQL/Redis tests must run")
        pytest.skip(f"{message}; set CI=true to make this a failure")


def create_pg_database() -> str:
    import psycopg

    name = f"trainserve_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    import psycopg

    require_service("PostgreSQL at " + PG_ADMIN_URL, lambda: psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close())
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    require_service("Redis at " + REDIS_URL, lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())
    # A database of our own (one per xdist worker), emptied, so no other run's tasks reach our worker.
    db = 3 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    redis.Redis.from_url(f"{REDIS_URL}/{db}").flushdb()
    return f"{REDIS_URL}/{db}"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("pg") / "home",
                          env_extra={"TRAINSERVE_DATABASE_URL": pg_url, "TRAINSERVE_BROKER_URL": redis_url})
    yield server
    stop_server(server.proc)


@pytest.fixture(params=["embedded", "postgres"])
def stack(request: pytest.FixtureRequest) -> LiveServer:
    name = "embedded_server" if request.param == "embedded" else "postgres_server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]
