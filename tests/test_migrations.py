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
