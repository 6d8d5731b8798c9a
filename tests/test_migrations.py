"""An empty database of either kind migrates to head, and the tables the code declares match the migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.db import normalize_url
from service.migrate import migrate_to_head
from service.models import Base
from tests.conftest import create_pg_database, drop_pg_database

TABLES = {"jobs", "metric_points", "checkpoints", "datasets", "api_keys", "workers", "alembic_version"}


def assert_matches_models(url: str) -> None:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            assert TABLES <= set(inspect(conn).get_table_names())
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_sqlite_migrates_to_head_and_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    migrate_to_head(url)
    migrate_to_head(url)  # a second run is a no-op
    assert_matches_models(url)


def test_postgres_migrates_to_head_and_matches_the_models(pg_url: str) -> None:
    url = create_pg_database()
    try:
        migrate_to_head(url)
        assert_matches_models(url)
    finally:
        drop_pg_database(url)


@pytest.fixture(autouse=True)
def _pg_marker(request: pytest.FixtureRequest) -> None:
    if "pg_url" in request.fixturenames:
        request.node.add_marker(pytest.mark.postgres)


@pytest.mark.parametrize("command", [["api"], ["worker", "--queues", "cpu"]])
def test_api_and_worker_refuse_to_start_behind_the_migrations(tmp_path: Path, command: list[str]) -> None:
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    env = {**os.environ, "TRAINSERVE_HOME": str(home), "TRAINSERVE_PORT": "1"}
    for name in ("TRAINSERVE_DATABASE_URL", "TRAINSERVE_BROKER_URL"):
        env.pop(name, None)
    root = Path(__file__).resolve().parent.parent
    # An empty database (never migrated), then one a migration behind head: both refused, naming the command.
    for downgrade_to in (None, "-1"):
        if downgrade_to:
            from alembic import command as alembic_command

            from service.migrate import alembic_config

            url = f"sqlite:///{home / 'trainserve.db'}"
            migrate_to_head(url)
            alembic_command.downgrade(alembic_config(url), downgrade_to)
        proc = subprocess.run([sys.executable, "-m", "service.cli", *command], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "trainserve-server migrate" in proc.stderr
