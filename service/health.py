"""Readiness: can this API reach its database and its broker."""

from __future__ import annotations

from sqlalchemy import text

from service.db import session_scope
from service.queue import broker_ok
from service.schemas import Health
from service.settings import Settings


def readiness(settings: Settings) -> Health:
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # any failure means "not ready"; the probe reports its kind
        database = f"unavailable: {exc.__class__.__name__}"
    broker = "ok" if broker_ok(settings) else "unavailable"
    ready = database == "ok" and broker == "ok"
    return Health(status="ready" if ready else "unavailable", database=database, broker=broker)
