"""Keyset paging for newest-first lists (jobs, models, sweeps, datasets): the cursor is the (created_at, id) of a
page's last row, opaque to clients, so a page never skips or repeats a row that was added meanwhile."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from service.errors import SpecError


class Paged(Protocol):
    created_at: datetime
    id: str


RowT = TypeVar("RowT", bound=Paged)


def encode_cursor(created_at: datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), row_id
    except Exception as exc:
        raise SpecError("invalid cursor", [{"loc": "cursor", "msg": "not a cursor this API returned"}]) from exc


def newest_first_page(session: Session, query: Select[Any], table: type[RowT], *, limit: int,
                      cursor: str | None) -> tuple[list[RowT], str | None]:
    """One page of `query` (rows of `table`, already filtered), newest first, and the cursor of the next (None at
    the end)."""
    columns: Any = table  # the mapped class: its attributes are columns here
    if cursor:
        created, row_id = decode_cursor(cursor)
        query = query.where((columns.created_at < created)
                            | ((columns.created_at == created) & (columns.id < row_id)))
    rows: list[RowT] = list(session.scalars(query.order_by(columns.created_at.desc(), columns.id.desc())
                                            .limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor
