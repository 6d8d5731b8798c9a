"""Database engine and sessions: PostgreSQL (psycopg 3) and SQLite (WAL, busy timeout, foreign keys) alike."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings, get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY_OPTION = "trainserve_read_only"


def normalize_url(url: str) -> str:
    # Users write postgresql://; psycopg 3 is the driver we ship.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(settings: Settings) -> Engine:
    url = normalize_url(settings.database_url)
    if url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Take control of transactions so BEGIN IMMEDIATE can be issued for writes (see below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A deferred transaction that reads then writes can fail with "database is locked" at once
            # (the busy timeout does not apply to lock upgrades); IMMEDIATE waits for the writer lock instead.
            # Read-only sessions (GET requests, streams) take no lock at all: WAL readers never block writers.
            read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


_configured: Settings | None = None


def configure(settings: Settings) -> None:
    """Point this process's engine and sessions at `settings.database_url` (create_app calls it with its
    settings); until then they follow the environment's settings."""
    global _configured
    if _configured is not None and _configured.database_url == settings.database_url:
        return
    _configured = settings
    for cached in (get_engine, get_read_engine, get_sessionmaker, get_read_sessionmaker):
        cached.cache_clear()


def reset() -> None:
    """Forget the configured database and every engine and session factory built (tests switching databases)."""
    global _configured
    _configured = None
    for cached in (get_engine, get_read_engine, get_sessionmaker, get_read_sessionmaker):
        cached.cache_clear()


def current_settings() -> Settings:
    """The settings this process's engine connects with (configure's, else the environment's)."""
    return _configured or get_settings()


@lru_cache
def get_engine() -> Engine:
    return make_engine(current_settings())


@lru_cache
def get_read_engine() -> Engine:
    """The engine for reads only; on SQLite their transactions take no write lock."""
    return get_engine().execution_options(**{READ_ONLY_OPTION: True})


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@lru_cache
def get_read_sessionmaker() -> sessionmaker[Session]:
    """Sessions for reads only; on SQLite their transactions take no write lock."""
    return sessionmaker(bind=get_read_engine(), expire_on_commit=False)


@contextmanager
def session_scope(*, read_only: bool = False) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error."""
    session = (get_read_sessionmaker() if read_only else get_sessionmaker())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def driver_errors_as_sqlalchemy(connection: Connection, statement: str, params: Any = None) -> Iterator[None]:
    """For work done on the driver's own connection (psycopg's pipeline or COPY): its errors raised as SQLAlchemy
    raises for its own statements, a lost connection invalidated, so that retries and the API's 503 see a database
    outage as an outage."""
    try:
        yield
    except connection.dialect.loaded_dbapi.Error as exc:
        driver = connection.connection.driver_connection
        lost = connection.dialect.is_disconnect(exc, driver, None)  # type: ignore[arg-type]
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(statement, params, exc, connection.dialect.loaded_dbapi.Error,
                                  connection_invalidated=lost, dialect=connection.dialect) from exc


@contextmanager
def lone_read() -> Iterator[Connection]:
    """A connection for one read statement that needs no transaction around it (a key lookup on every request).

    On PostgreSQL it runs in autocommit: no BEGIN and COMMIT round trips around the statement. SQLite (in-process,
    no round trips) reads in a read-only transaction as the read sessions do."""
    engine = get_engine()
    if engine.dialect.name == "sqlite":
        with get_read_engine().connect() as conn:
            yield conn
        return
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_retry(fn: Callable[[Session], T], *, attempts: int = 8, first_delay: float = 0.2) -> T:
    """Run fn in its own transaction, retrying with backoff while the database is briefly unavailable."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            with session_scope() as session:
                return fn(session)
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log.warning("db.retry attempt=%d delay=%.1fs error=%s", attempt, delay, exc.__class__.__name__)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")
