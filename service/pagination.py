"""Keyset cursors for newest-first lists: (created_at, id) of a page's last row, opaque to clients."""

from __future__ import annotations

import base64
from datetime import datetime

from service.errors import SpecError


def encode_cursor(created_at: datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), row_id
    except Exception as exc:
        raise SpecError("invalid cursor", [{"loc": "cursor", "msg": "not a cursor this API returned"}]) from exc
