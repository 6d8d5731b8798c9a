"""API keys: created once and shown once, stored only as SHA-256 hashes, each bound to a tenant."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import NotFound, Unauthorized
from service.models import ApiKey, utcnow

KEY_PREFIX = "ts_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, *, tenant: str) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant=tenant, key_hash=hash_key(key), prefix=key[:10]))
    return key


def revoke_api_key(session: Session, *, key: str) -> None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None:
        raise NotFound("no such API key")
    row.revoked_at = utcnow()


def authenticate(session: Session, *, authorization: str | None) -> str:
    """The tenant that an `Authorization: Bearer KEY` header belongs to."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer KEY'")
    digest = hash_key(key.strip())
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The lookup is by hash, so timing reveals nothing about the key; compare_digest keeps the final check
    # constant-time as well.
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked API key")
    return row.tenant
