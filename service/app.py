"""The FastAPI app: `create_app(settings)` builds it (middleware, lifespan, error handlers, routers).

uvicorn runs it as a factory (`service.app:create_app`, see service.cli), so nothing is built at import.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import Authentication
from service.dispatch import reaper_loop
from service.errors import PayloadTooLarge, error_body, install_error_handlers
from service.observability import RequestTelemetry, install_collector
from service.predict import ModelCache
from service.routes import ROUTERS
from service.routes.deps import ERROR_DESCRIPTIONS
from service.routes import predict as predict_route
from service.routes.health import STATIC_DIR
from service import db
from service.streams import StreamSlots
from service.settings import Settings, get_settings
from service.workers import RecentQueueView

# How old the queue view behind a new job's waiting reason may be (POST /jobs answers without reading it).
QUEUE_VIEW_MAX_AGE_SECONDS = 2.0

DESCRIPTION = """Train PyTorch networks described as JSON, follow their metrics, and serve predictions.

Every route but the probes needs an API key: `Authorization: Bearer KEY` (the Authorize button here).
Every error answers `{"type", "detail", "errors"}`; docs/api.md lists the types."""


class BodySizeLimit:
    """Answers 413 before a too-large body is parsed: by Content-Length, or while the body streams in."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._reject(send, int(declared))
                return
            if b"transfer-encoding" not in headers:
                # The server reads no more than a declared length (HTTP framing), so the body cannot grow past
                # it: nothing to count, and no wrapped receive and send on every request.
                await self.app(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self._detail(seen))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            if not started:
                await self._reject(send, seen)

    def _detail(self, size: int) -> str:
        return f"the request body has {size:,} bytes or more, the limit is {self.max_bytes:,} (TRAINSERVE_MAX_BODY_BYTES)"

    async def _reject(self, send: Send, size: int) -> None:
        body = json.dumps(error_body("payload_too_large", self._detail(size), [])).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Everything imported and built at start-up is never garbage: keep the collector from scanning it again on
    # every collection (a few percent of a small /predict request otherwise).
    gc.freeze()
    task = asyncio.create_task(reaper_loop(app.state.settings))
    try:
        yield
    finally:
        task.cancel()


def operation_id(route: APIRoute) -> str:
    """`create_job`, not FastAPI's `create_job_jobs_post`: generated clients name their functions after it."""
    return route.name


def _document_undecodable_bodies(document: dict[str, Any]) -> None:
    # Every route that reads a body answers 400 to one that cannot be decoded (service.errors): say so, for
    # routers added later too.
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" in operation and "400" not in operation.get("responses", {}):
                operation["responses"]["400"] = {
                    "description": ERROR_DESCRIPTIONS[400],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


def document_schemas(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Adds request bodies a route reads itself (so FastAPI never sees them) to the document's components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            components = build().setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            _document_undecodable_bodies(app.openapi_schema or {})
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for these settings (the environment's when None); the only place an app is built."""
    settings = settings or get_settings()
    db.configure(settings)  # one process, one database: this app's
    app = FastAPI(title="trainserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  generate_unique_id_function=operation_id)
    app.state.settings = settings
    app.state.model_cache = ModelCache(settings.model_cache_size)
    app.state.stream_slots = StreamSlots()
    app.state.queue_view = RecentQueueView(max_age=QUEUE_VIEW_MAX_AGE_SECONDS)
    install_error_handlers(app)
    # Added innermost first: telemetry sees every answer (401s and 413s included); the key is checked before
    # the body is read, so a request without one is refused before it can send megabytes.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(Authentication, predict_cache_seconds=settings.predict_cache_seconds)  # type: ignore[arg-type]
    app.add_middleware(RequestTelemetry)  # type: ignore[arg-type]
    install_collector(settings)
    predict_route.install(app)
    for router in ROUTERS:
        app.include_router(router)
    document_schemas(app, predict_route.SCHEMAS)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
