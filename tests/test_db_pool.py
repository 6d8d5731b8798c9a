"""The PostgreSQL pool (service.db.make_engine): a connection that sat idle in the pool is pinged before use, so one
the database dropped meanwhile costs no request; one used within PING_AFTER_IDLE_S is handed out as is, and if it
was dropped in that window the one statement that meets it fails as a transient error and the next one works."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from service import db
from service.db import is_transient, make_engine
from service.settings import Settings
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.postgres


@pytest.fixture()
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(Settings(database_url=pg_url))
    try:
        yield engine
    finally:
        engine.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def drop_backend(pid: int) -> None:
    """What a database restart or a proxy does to a pooled connection: its server process ends."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()  # waits until it has ended
        assert row is not None and row[0] is True


def test_a_connection_dropped_while_idle_in_the_pool_costs_no_request(engine: Engine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every checkout counts as "idle long enough"
    first = backend_pid(engine)
    drop_backend(first)

    assert backend_pid(engine) != first  # the ping found it gone: a new connection served the statement


def test_a_connection_dropped_within_the_window_fails_one_statement_as_transient(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)  # no checkout is pinged
    first = backend_pid(engine)
    drop_backend(first)

    with pytest.raises(Exception) as failed, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert is_transient(failed.value)  # the API answers 503 with Retry-After; the worker retries the write
    assert backend_pid(engine) != first
