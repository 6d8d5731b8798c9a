"""trainserve servers for the benchmarks, on either stack, and what a benchmark reads about their processes.

The servers are `service.localstack`'s (`python -m service.cli up` in its own process group), the launcher the
end-to-end tests use too, with the service's default heartbeat, reaper and size limits.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from service.spec import SEED_EXAMPLE
from service.localstack import LiveServer, start_server, stop_server
from service.localstack import create_pg_database as _create_pg_database
from service.localstack import drop_pg_database as _drop_pg_database

# The local PostgreSQL and Redis the benchmarks use (the same ones the tests use).
PG_ADMIN_URL = os.environ.get("TRAINSERVE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TRAINSERVE_TEST_REDIS", "redis://127.0.0.1:6379")

STACKS = ("postgres", "embedded")
STACK_TITLES = {"postgres": "PostgreSQL + Redis", "embedded": "SQLite + filesystem broker"}
FINISHED = ("succeeded", "failed", "cancelled")
# Benchmarks submit bursts of jobs: the per-tenant quotas must not refuse them.
NO_QUOTAS = {"TRAINSERVE_MAX_RUNNING_JOBS_PER_TENANT": "100000", "TRAINSERVE_MAX_SUBMISSIONS_PER_MINUTE": "100000"}


def create_pg_database() -> str:
    return _create_pg_database(PG_ADMIN_URL)


def drop_pg_database(url: str) -> None:
    _drop_pg_database(url, admin_url=PG_ADMIN_URL)


def redis_url(db: int) -> str:
    import redis

    redis.Redis.from_url(f"{REDIS_URL}/{db}").flushdb()  # only our own database: earlier runs' tasks must not reach us
    return f"{REDIS_URL}/{db}"


@contextmanager
def trainserve(stack: str, *, redis_db: int, env: dict[str, str] | None = None) -> Iterator[LiveServer]:
    """A running trainserve (API + one worker) on `stack`, in a temporary home; stopped and cleaned up after."""
    extra = dict(env or {})
    pg_url = None
    if stack == "postgres":
        pg_url = create_pg_database()
        extra |= {"TRAINSERVE_DATABASE_URL": pg_url, "TRAINSERVE_BROKER_URL": redis_url(redis_db)}
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-{stack}-") as tmp:
            server = start_server(Path(tmp) / "home", env_extra=extra)
            try:
                yield server
            except Exception:
                print(f"trainserve's log ({stack}), last lines:\n{server.log_tail(80)}", file=sys.stderr)
                raise
            finally:
                stop_server(server.proc)
    finally:
        if pg_url is not None:
            drop_pg_database(pg_url)


def seed_spec(epochs: int | None = None, name: str = "bench-seed") -> dict[str, Any]:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["name"] = name
    if epochs is not None:
        spec["training"]["epochs"] = epochs
    return spec


def submit(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/jobs", json=spec)
    if answer.status_code != 201:
        raise RuntimeError(f"POST /jobs answered {answer.status_code}: {answer.text}")
    return dict(answer.json())


def wait_finished(client: httpx.Client, job_id: str, *, first_wait: float = 0.0, poll: float = 0.02,
                  timeout: float = 300) -> dict[str, Any]:
    """The job once finished. Polls gently: on 2 cores every poll takes CPU from the worker being measured."""
    time.sleep(first_wait)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = dict(client.get(f"/jobs/{job_id}").json())
        if job["status"] in FINISHED:
            if job["status"] != "succeeded":
                raise RuntimeError(f"bench job {job_id} ended {job['status']}: {job.get('error')}")
            return job
        time.sleep(poll)
    raise RuntimeError(f"bench job {job_id} not finished after {timeout} s")


def timestamp(value: str) -> float:
    """A timestamp of the API's (ISO 8601, UTC) as seconds since the epoch, comparable with time.time()."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- processes ----------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:  # the process ended while we looked
        pass
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (pages shared between them counted in each)."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def api_pid(server: LiveServer) -> int:
    return int((server.home / "api.pid").read_text())
