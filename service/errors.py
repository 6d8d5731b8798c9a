"""Domain exceptions and the one handler that renders every error as {"type", "detail", "errors"}."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.db import is_transient

from service.spec import TAG_NAMES

log = logging.getLogger(__name__)

ErrorItem = dict[str, str]
# A request-state key: the body of a route that reads its own (POST /predict), left there when it fails.
REQUEST_BODY = "request_body"
RETRY_AFTER_SECONDS = 2


class ServiceError(Exception):
    status_code = 400
    type = "bad_request"

    def __init__(self, detail: str, errors: Iterable[ErrorItem] = (), headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.headers = headers


class NotFound(ServiceError):
    status_code = 404
    type = "not_found"


class JobNotFound(NotFound):
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} not found")


class DatasetNotFound(NotFound):
    def __init__(self, dataset_id: str):
        super().__init__(f"dataset {dataset_id} not found")


class CheckpointNotFound(NotFound):
    def __init__(self, job_id: str, ref: str):
        super().__init__(f"checkpoint {ref} of job {job_id} not found")


class StateConflict(ServiceError):
    status_code = 409
    type = "conflict"


class SpecError(ServiceError):
    status_code = 422
    type = "validation_error"


class Unauthorized(ServiceError):
    status_code = 401
    type = "unauthorized"

    def __init__(self, detail: str) -> None:
        # RFC 9110: a 401 names the scheme the client should use.
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class PayloadTooLarge(ServiceError):
    status_code = 413
    type = "payload_too_large"


class QuotaExceeded(ServiceError):
    status_code = 429
    type = "rate_limited"

    def __init__(self, detail: str, *, retry_after: int):
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class CorruptCheckpoint(ServiceError):
    # The stored bytes no longer match their SHA-256: refuse to load them.
    status_code = 409
    type = "corrupt_checkpoint"


_TYPE_NAMES = {"int", "float", "str", "bool", "list", "dict", "none", "tuple"}


def json_path(loc: Sequence[str | int]) -> str:
    """('body', 'model', 'layers', 2, 'Linear', 'in_features') -> 'model.layers[2].in_features'; a header's problem
    is named by the header: ('header', 'idempotency-key') -> 'header idempotency-key'."""
    if len(loc) == 2 and loc[0] == "header":
        return f"header {loc[1]}"
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # Drop what pydantic adds that is not in the user's JSON: the request part, union tags and member types.
        if part in ("body", "query", "path", "header") and not out:
            continue
        if part in TAG_NAMES or part in _TYPE_NAMES or any(c in part for c in "[(-"):
            continue
        out += f".{part}" if out else part
    return out


def validation_items(errors: Iterable[Any]) -> list[ErrorItem]:
    items: list[ErrorItem] = []
    seen: set[tuple[str, str]] = set()
    for err in errors:
        loc, msg = json_path(err.get("loc", ())), str(err.get("msg", "invalid"))
        ctx = err.get("ctx") or {}
        if err.get("type") == "union_tag_invalid":
            msg = f"unknown {ctx.get('discriminator', 'type')} {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif err.get("type") == "union_tag_not_found":
            msg = f"missing {ctx.get('discriminator', 'type')}"
        if (loc, msg) not in seen:
            seen.add((loc, msg))
            items.append({"loc": loc, "msg": msg})
    return items


def error_body(type_: str, detail: str, errors: list[ErrorItem]) -> dict[str, Any]:
    return {"type": type_, "detail": detail, "errors": errors}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's own 405 names only the first route's)."""
    allowed = {method for method in _METHODS
               if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                      for route in request.app.router.routes)}
    return ", ".join(sorted(allowed))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(error_body(exc.type, exc.detail, exc.errors), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        undecodable = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if undecodable:
            # Not JSON at all: there is no JSON path to point at, so this is a 400 like undecodable bytes.
            reason = (undecodable[0].get("ctx") or {}).get("error") or undecodable[0].get("msg", "")
            return JSONResponse(error_body("http_error", f"the body is not valid JSON: {reason}", []), 400)
        items = validation_items(exc.errors())
        detail = f"the request has {_plural(len(items), 'problem')}: " + "; ".join(
            f"{i['loc'] or '(body)'}: {i['msg']}" for i in items[:5]
        )
        return JSONResponse(error_body("validation_error", detail, items), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "payload_too_large"}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return JSONResponse(error_body(kinds.get(exc.status_code, "http_error"), str(exc.detail), []),
                            exc.status_code, headers=headers or None)

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # Handled here, inside the app, so an outage is an answer (503), not an unhandled exception: no
        # "Exception in ASGI application" traceback and no 500 in the request metrics.
        if holds_nul(exc):
            return await _service_error(request, nul_refusal(nul_location(request)))
        if is_transient(exc):
            log.warning("request.db_unavailable path=%s error=%s", request.url.path, exc.__class__.__name__)
            return JSONResponse(error_body("unavailable", "the database is unavailable; retry shortly", []), 503,
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        log.error("request.failed path=%s", request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal error (a bug): see the server log", []), 500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request.failed path=%s", request.url.path)
        return JSONResponse(error_body("internal_error", "internal error (a bug): see the server log", []), 500)


def holds_nul(exc: DBAPIError) -> bool:
    """PostgreSQL's text types cannot hold NUL; its driver refuses such a value before sending it (SQLite stores it)."""
    return "NUL (0x00)" in str(exc.orig)


def nul_refusal(loc: str) -> SpecError:
    msg = "text here contains the NUL character (\\u0000), which the database cannot store"
    return SpecError(f"the request has 1 problem: {loc or '(body)'}: {msg}", [{"loc": loc, "msg": msg}])


def body_read(request: Request) -> bytes:
    """The body a failed request had read, never reading the stream again (it is spent, and a read would wait for
    the client): what FastAPI's request keeps (Starlette's `_body`), or what a route that reads its own body left
    under REQUEST_BODY in the request's state; else b''."""
    return getattr(request, "_body", None) or request.scope.get("state", {}).get(REQUEST_BODY, b"")


def nul_location(request: Request) -> str:
    """Where the request sent the NUL the database refused: a path or query parameter's name, else the JSON path in
    the body it sent, else ''."""
    for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
        if "\x00" in str(value) or "\x00" in name:
            return str(name)
    try:
        return nul_path(orjson.loads(body_read(request))) or ""
    except orjson.JSONDecodeError:
        return ""


def nul_path(value: Any, path: str = "") -> str | None:
    """The JSON path of the first string (or object key) in `value` holding a NUL character, else None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := nul_path(item, f"{path}[{i}]")) is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return where
            if (found := nul_path(item, where)) is not None:
                return found
    return None
