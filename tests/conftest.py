"""Live servers for end-to-end tests: real `trainserve-server up` processes, a real worker, real databases.

- `embedded_server`: SQLite + Celery's filesystem transport under a temporary TRAINSERVE_HOME.
- `postgres_server`: a fresh PostgreSQL database + Redis. Under CI (CI=true) these must be reachable, so an
  unreachable one fails the run; on a laptop without them the PostgreSQL tests are skipped.
- `stack`: parametrized over both, for tests that must hold on each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import localstack
from service.db import make_engine
from service.migrate import migrate_to_head
from service.settings import Settings
from service.localstack import LiveServer, free_port, stop_server

__all__ = ["LiveServer", "free_port", "stop_server", "start_server", "create_pg_database", "drop_pg_database"]

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


def start_server(home: Path, *, env_extra: dict[str, str] | None = None, timeout: float = 90) -> LiveServer:
    """A live server with the tests' small limits and fast heartbeats (env_extra wins)."""
    return localstack.start_server(home, env_extra={**TEST_LIMITS, **(env_extra or {})}, timeout=timeout)


def create_pg_database() -> str:
    return localstack.create_pg_database(PG_ADMIN_URL)


def drop_pg_database(url: str) -> None:
    localstack.drop_pg_database(url, admin_url=PG_ADMIN_URL)


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


def migrated_sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                      name: str) -> Iterator[sessionmaker[Session]]:
    """For a fixture parametrized over "sqlite" and "postgres": sessions on a migrated database of its own (on
    PostgreSQL one created for it, so no live server's database sees its rows), dropped afterwards."""
    home = tmp_path_factory.mktemp(name)
    if request.param == "postgres":
        request.getfixturevalue("pg_url")  # fails under CI=true, skips elsewhere, when PostgreSQL is not there
        url = create_pg_database()
    else:
        url = f"sqlite:///{home / (name + '.db')}"
    migrate_to_head(url)
    engine = make_engine(Settings(database_url=url, home=home))
    try:
        yield sessionmaker(bind=engine, expire_on_commit=False)
    finally:
        engine.dispose()
        if request.param == "postgres":
            drop_pg_database(url)


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
