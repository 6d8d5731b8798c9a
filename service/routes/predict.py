"""POST /predict: run a finished (or running) job's checkpoint on rows sent in the body."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service.errors import REQUEST_BODY, Unauthorized
from service.predict import predict
from service.routes.deps import bearer, error_responses
from service.schemas import PredictRequest, PredictResponse


class PredictRoute(APIRoute):
    """POST /predict served as a plain ASGI app: the body read straight from `receive`, the answer sent as two
    messages. FastAPI's request handler (Request and Response objects, dependency solving, two exit stacks) has
    nothing to do for an endpoint without parameters or dependencies, yet cost some 60 us of a one-row prediction,
    about a tenth of its time. Everything before the route is unchanged: middleware (key, body size, telemetry),
    routing, and the app's error handlers, which render what `predict` raises exactly as from an endpoint.
    Dependencies would not run here, so the route (and the include of its router) must declare none."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dependant.dependencies:
            raise TypeError(f"{self.path}: PredictRoute answers without FastAPI's request handler, so dependencies "
                            "would not run")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":  # the 405 FastAPI gives
            await super().handle(scope, receive, send)
            return
        answer, hit = await _answer(scope, await _read_body(receive))
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"x-model-cache", b"hit" if hit else b"miss"), (b"content-length", str(len(answer)).encode()),
            (b"content-type", b"application/json")]})  # a Response's headers, in its order
        await send({"type": "http.response.body", "body": answer})



# The route reads its body itself (FastAPI's parsing of a declared body and header cost 8 % of a one-row
# prediction), so the document gets the body schema a declared one would give from here.
_BODY: dict[str, Any] = {
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
}
# Named in the document's components (service.app adds them), so generated clients get a PredictRequest class.
SCHEMAS = [PredictRequest]


async def post_predict(request: Request) -> Response:
    """Predict with a job's checkpoint (`best`, `latest` or an id): one answer row per input row.

    A hot model answers from memory with no database round trip (see TRAINSERVE_PREDICT_CACHE_SECONDS)."""
    # Served by PredictRoute.handle, which answers the same without FastAPI's request handler; this endpoint
    # documents the operation and gives the same answer if called as one.
    answer, hit = await _answer(request.scope, await request.body())
    return Response(answer, media_type="application/json", headers={"X-Model-Cache": "hit" if hit else "miss"})


async def _answer(scope: Scope, body: bytes) -> tuple[bytes, bool]:
    # No declared body or dependency: the key was checked by the middleware before the body was read (its tenant
    # is in the request's state), and service.predict parses the body itself, so a hot model answers with no
    # session and no thread hop.
    tenant = scope.get("state", {}).get("tenant")
    if tenant is None:  # only if /predict were left out of the middleware by mistake
        raise Unauthorized("missing API key: send 'Authorization: Bearer KEY'")
    state = scope["app"].state
    try:
        return await predict(body, tenant=tenant, cache=state.model_cache, settings=state.settings)
    except Exception:
        # For the app's error handlers, which may name where in the body a problem lies: FastAPI's own request
        # keeps the body it read, this route reads its own.
        scope.setdefault("state", {})[REQUEST_BODY] = body
        raise


async def _read_body(receive: Receive) -> bytes:
    """The request body, as Request.body() reads it (ClientDisconnect if the client goes away first)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def install(app: FastAPI) -> None:
    """Adds POST /predict to the app's own router rather than through an included APIRouter: an included router
    is one more match and hand-over on every request (FastAPI resolves it lazily, per request), which a one-row
    prediction, thousands a second, notices."""
    app.router.add_api_route(
        "/predict", post_predict, methods=["POST"], route_class_override=PredictRoute, tags=["predict"],
        response_model=PredictResponse, response_model_exclude_none=True, name="predict",
        responses={200: {"headers": {"X-Model-Cache": {"description": "hit or miss: was the model loaded",
                                                       "schema": {"type": "string", "enum": ["hit", "miss"]}}}},
                   **error_responses(400, 404, 409, 413)},
        openapi_extra={**_BODY, "security": [{bearer.scheme_name: []}]})
