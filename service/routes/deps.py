"""What every router shares: the request's transaction, settings and tenant as `Annotated` aliases, and the
documented error answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.db import get_read_sessionmaker, get_sessionmaker
from service.errors import Unauthorized
from service.schemas import ErrorBody
from service.settings import Settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One transaction per request: routes that write commit before they answer (and before enqueueing).

    `async` because opening a session does no I/O (a connection is taken at its first statement): FastAPI runs a
    plain generator's enter and exit on its thread pool, two thread hops per request. Only a transaction the
    route left open is committed (or rolled back, on an error) on the thread pool."""
    session = (get_read_sessionmaker() if request.method in ("GET", "HEAD") else get_sessionmaker())()
    try:
        yield session
        if session.in_transaction():
            await anyio.to_thread.run_sync(session.commit)
    except BaseException:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):  # a cancelled request still hands its connection back clean
                await anyio.to_thread.run_sync(session.rollback)
        raise
    finally:
        session.close()  # no transaction is left by now: no I/O


# The two below do no I/O, so they are `async def`: FastAPI runs a plain `def` dependency on its thread pool,
# a thread hop (and back) per dependency per request.
async def get_app_settings(request: Request) -> Settings:
    """The settings the app was built with (create_app's argument), never the environment's."""
    return request.app.state.settings  # type: ignore[no-any-return]


# Documents the key as a bearer scheme (Swagger's Authorize button, a generated client's token). The key is
# checked by service.auth.Authentication before the body is read; this only hands its verdict to the route.
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer KEY`")


async def get_tenant(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> str:
    tenant = getattr(request.state, "tenant", None)
    if tenant is None:  # only if a route was left out of the middleware's public list by mistake
        raise Unauthorized("missing API key: send 'Authorization: Bearer KEY'")
    return str(tenant)


# scope="function": the transaction commits when the route returns, before the answer is sent, so a client
# never reads back the state from before its own write (and a failed commit is an error, not a sent 2xx).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
TenantDep = Annotated[str, Depends(get_tenant)]

ERROR_DESCRIPTIONS = {
    400: "the body could not be decoded at all (not JSON, not UTF-8, broken multipart)",
    401: "missing, invalid or revoked API key (with `WWW-Authenticate: Bearer`)",
    404: "not found, or owned by another tenant",
    409: "the resource's state forbids it (finished job, no checkpoint yet, corrupt checkpoint)",
    413: "the request body or upload is over its limit",
    422: "the request or the spec is invalid; `errors` holds the JSON path of each problem",
    429: "over a quota; see Retry-After",
    503: "the database is unavailable; see Retry-After",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                                "schema": {"type": "integer"}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "always `Bearer`", "schema": {"type": "string"}}}


def error_responses(*codes: int, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """The error answers a route can give: 422 and 503 always, 401 when it needs a key, plus `codes`."""
    # Replacing FastAPI's default 422 schema too: our handler answers {"type", "detail", "errors"} for all of them.
    statuses = {422, 503, *codes} | ({401} if auth else set())
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted(statuses):
        entry: dict[str, Any] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]}
        if code in (429, 503):
            entry["headers"] = _RETRY_AFTER
        elif code == 401:
            entry["headers"] = _WWW_AUTHENTICATE
        out[code] = entry
    return out


def linked(status: int, description: str, **targets: tuple[str, dict[str, str]]) -> dict[int | str, dict[str, Any]]:
    """A success answer with OpenAPI links: `name=(operation_id, {parameter: body_field})` feeds fields of the
    answer to that operation's parameters (generated clients and schemathesis' stateful phase follow them)."""
    return {status: {"description": description, "links": {
        name: {"operationId": operation,
               "parameters": {parameter: f"$response.body#/{field}" for parameter, field in fields.items()}}
        for name, (operation, fields) in targets.items()}}}


def split_names(names: list[str] | None) -> list[str] | None:
    """`?names=a,b&names=c` -> ["a", "b", "c"]; nothing -> None (every series)."""
    if not names:
        return None
    return [n.strip() for item in names for n in item.split(",") if n.strip()] or None
