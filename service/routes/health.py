"""The public routes: the dashboard, liveness and readiness probes, and Prometheus' /metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.health import readiness
from service.routes.deps import SettingsDep
from service.schemas import Health

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["health"])


@router.get("/", include_in_schema=False, response_model=None)
def dashboard() -> Response:
    index = STATIC_DIR / "index.html"
    if not index.exists():
        return Response("trainserve API: see /docs", media_type="text/plain")
    return FileResponse(index)


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, name="healthz")
def healthz() -> Health:
    """Liveness: the API process answers (no key needed)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, name="readyz",
            responses={503: {"model": Health, "description": "the database or the broker is unavailable"}})
def readyz(response: Response, settings: SettingsDep) -> Health:
    """Readiness: the database and the broker both answer (no key needed); 503 says which does not."""
    health = readiness(settings)
    response.status_code = 200 if health.status == "ready" else 503
    return health


@router.get("/metrics", include_in_schema=False, response_model=None)
def prometheus_metrics() -> Response:
    # Public like /healthz: aggregate counts only, no tenant's data; scraped by Prometheus.
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
