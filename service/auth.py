"""API keys: created once and shown once, stored only as SHA-256 hashes, each bound to a tenant; and the
middleware that checks a request's key before anything reads its body."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict

import json
import logging

import anyio
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from service.db import is_transient, lone_read
from service.errors import NotFound, ServiceError, Unauthorized, error_body
from service.models import ApiKey, utcnow
from service.singleflight import SingleFlight

log = logging.getLogger(__name__)

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


def key_digest(authorization: str | None) -> str:
    """The SHA-256 of the key in an `Authorization: Bearer KEY` header; 401 when there is none."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer KEY'")
    return hash_key(key.strip())


_KEY_LOOKUP = select(ApiKey.tenant, ApiKey.key_hash, ApiKey.revoked_at).where(
    ApiKey.key_hash == bindparam("digest"))


def tenant_of(conn: Connection | Session, digest: str) -> str:
    row = conn.execute(_KEY_LOOKUP, {"digest": digest}).first()
    # The lookup is by hash, so timing reveals nothing about the key; compare_digest keeps the final check
    # constant-time as well.
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked API key")
    return str(row.tenant)


class RecentKeys:
    """Key hash -> tenant for keys the database accepted less than `ttl` seconds ago (least recently used
    dropped past `size`). Only accepted keys are kept: a new key works at once, a wrong one is looked up
    every time."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> str | None:
        with self._lock:
            found = self._items.get(digest)
            if found is None or found[1] <= time.monotonic():
                return None
            self._items.move_to_end(digest)
            return found[0]

    def expired(self, digest: str) -> bool:
        """Whether the key was accepted once, more than its `ttl` ago."""
        with self._lock:
            found = self._items.get(digest)
            return found is not None and found[1] <= time.monotonic()

    def remember(self, digest: str, tenant: str, ttl: float) -> None:
        with self._lock:
            self._items[digest] = (tenant, time.monotonic() + ttl)
            self._items.move_to_end(digest)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_recent_keys = RecentKeys()
_key_lookups = SingleFlight()


async def tenant_of_digest(digest: str, *, ttl: float) -> str:
    """The tenant of the key with this hash. A key accepted less than `ttl` seconds ago is trusted without asking
    the database again, so a revoked key keeps working for at most `ttl` seconds where this is used with one (0:
    ask every time). When the key's time is up, the requests in flight with it share one lookup."""
    if ttl <= 0:
        return await anyio.to_thread.run_sync(_tenant_in_database, digest)
    tenant = _recent_keys.get(digest)
    if tenant is None and _recent_keys.expired(digest) and await _key_lookups.wait(digest):
        tenant = _recent_keys.get(digest)  # accepted by the lookup just waited for
    if tenant is None:
        with _key_lookups.lead(digest):
            tenant = await anyio.to_thread.run_sync(_tenant_in_database, digest)
            _recent_keys.remember(digest, tenant, ttl)
    return tenant


def _tenant_in_database(digest: str) -> str:
    with lone_read() as conn:
        return tenant_of(conn, digest)


# A submission checks its key again inside the transaction that stores the job (service.jobs), in the statement
# that reads the quotas: its early check may use a recently accepted key, and a revoked key still stops at once.
SUBMIT_PATH = "/jobs"

# Everything else needs a key: the dashboard's page and assets, the probes, the scrape and the API's own
# documentation are public.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json"})
PREDICT_PATH = "/predict"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


class Authentication:
    """Pure ASGI middleware: answers 401 (with `WWW-Authenticate: Bearer`) before a request without a valid key
    has its body read or parsed, and hands the key's tenant to the routes in `request.state.tenant`.

    /predict trusts a key the database accepted less than TRAINSERVE_PREDICT_CACHE_SECONDS ago (its hot path
    has no database round trip). POST /jobs may too, here, because it checks the key again in the transaction
    that stores the job (`request.state.key_digest`, in the same statement as the quotas, so at no extra round
    trip): a revoked key's submission is still refused at once, only after its body was read (a body the schema
    refuses may get its 422 first, within that time). Every other route asks the database each time, so a revoked
    key stops at once.
    """

    def __init__(self, app: ASGIApp, *, predict_cache_seconds: float) -> None:
        self.app = app
        self.predict_cache_seconds = predict_cache_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        path = scope["path"]
        cached = path == PREDICT_PATH or (path == SUBMIT_PATH and scope.get("method") == "POST")
        try:
            digest = key_digest(authorization)
            tenant = await tenant_of_digest(digest, ttl=self.predict_cache_seconds if cached else 0.0)
        except ServiceError as exc:
            await _answer(send, exc.status_code, error_body(exc.type, exc.detail, exc.errors), exc.headers)
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("auth.db_unavailable path=%s error=%s", scope["path"], exc.__class__.__name__)
            await _answer(send, 503, error_body("unavailable", "the database is unavailable; retry shortly", []),
                          {"Retry-After": "2"})
            return
        state = scope.setdefault("state", {})
        state["tenant"], state["key_digest"] = tenant, digest
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, body: dict[str, object], headers: dict[str, str] | None) -> None:
    raw = json.dumps(body).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": raw})
