"""POST /predict: run a finished (or running) job's checkpoint on rows sent in the body."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.predict import predict
from service.routes.deps import bearer, error_responses
from service.schemas import PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])

# The route reads its body itself (FastAPI's parsing of a declared body and header cost 8 % of a one-row
# prediction), so the document gets the body schema a declared one would give from here.
_BODY: dict[str, Any] = {
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
}
# Named in the document's components (service.app adds them), so generated clients get a PredictRequest class.
SCHEMAS = [PredictRequest]


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, name="predict",
             responses={200: {"headers": {"X-Model-Cache": {"description": "hit or miss: was the model loaded",
                                                            "schema": {"type": "string", "enum": ["hit", "miss"]}}}},
                        **error_responses(400, 404, 409, 413)},
             openapi_extra={**_BODY, "security": [{bearer.scheme_name: []}]})
async def post_predict(request: Request) -> Response:
    """Predict with a job's checkpoint (`best`, `latest` or an id): one answer row per input row.

    A hot model answers from memory with no database round trip (see TRAINSERVE_PREDICT_CACHE_SECONDS)."""
    # No declared body or dependency: the key was checked by the middleware before the body was read, and
    # service.predict parses the body itself, so a hot model answers with no session and no thread hop.
    answer, hit = await predict(await request.body(), authorization=request.headers.get("authorization"),
                                cache=request.app.state.model_cache, settings=request.app.state.settings)
    return Response(answer, media_type="application/json", headers={"X-Model-Cache": "hit" if hit else "miss"})
