"""Runs Alembic migrations to head from code, for `trainserve-server migrate` and `up`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from service.db import normalize_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(database_url))
    return config


def migrate_to_head(database_url: str) -> None:
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), "head")


class DatabaseBehind(RuntimeError):
    """The database's schema is not the one this code was written for."""


def check_at_head(database_url: str) -> None:
    """Raises DatabaseBehind, naming the command that fixes it, unless the database is at the latest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    current: set[str] = set()
    if not database_url.startswith("sqlite:///") or Path(database_url.removeprefix("sqlite:///")).exists():
        engine = create_engine(normalize_url(database_url))
        try:
            with engine.connect() as conn:
                current = set(MigrationContext.configure(conn).get_current_heads())
        finally:
            engine.dispose()
    if current != heads:
        at = ", ".join(sorted(current)) or "none (an empty database)"
        raise DatabaseBehind(f"the database is at migration {at}, this code needs {', '.join(sorted(heads))}: "
                             "run `trainserve-server migrate` first")
