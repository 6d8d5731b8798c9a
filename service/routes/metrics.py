"""/jobs/{job_id}/metrics: the recorded points as JSON or CSV, and the live stream of new ones."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from service import jobs, metrics
from service.routes.deps import SessionDep, SettingsDep, TenantDep, error_responses, split_names
from service.schemas import MetricsPage
from service.auth import key_digest
from service.streams import STREAM_HEADERS, StreamSlots, event_stream

router = APIRouter(tags=["metrics"])

Names = Annotated[list[str] | None, Query(description="series to return (repeat or comma-separate); all if none")]
SinceStep = Annotated[int | None, Query(ge=0, description="only points after this step")]

_CSV = {"text/csv": {"schema": {"type": "string"}, "example": "name,step,epoch,value,time\n"}}
_SSE_DESCRIPTION = ("Server-sent events: `points` (a list of MetricPointRead), `status` ({status, progress, "
                    "error}), `end` ({status, error}, then the stream closes) and `error` ({detail}, then it "
                    "closes: the job was deleted or the API key revoked); comment lines keep the connection alive, "
                    "and say when the database is briefly unavailable (the stream waits it out). At most "
                    "TRAINSERVE_MAX_STREAMS_PER_TENANT streams are open at once per tenant (429 past it).")

# One event: its name and its JSON-encoded data. OpenAPI 3.2's `itemSchema` (one event), with no `schema`: a
# generator reading `schema` would otherwise parse the whole stream as one such object.
_SSE_EVENT = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"type": "string", "enum": ["points", "status", "end", "error"]},
    "data": {"type": "string", "contentMediaType": "application/json", "description": "the event's JSON"},
    "id": {"type": "string"}, "retry": {"type": "integer"}}}


@router.get("/jobs/{job_id}/metrics", response_model=MetricsPage, name="get_metrics",
            responses={200: {"description": "the points (JSON), or a CSV file with format=csv", "content": _CSV},
                       **error_responses(404)})
def get_metrics(session: SessionDep, tenant: TenantDep, settings: SettingsDep, job_id: str, names: Names = None,
                since_step: SinceStep = None,
                max_points: Annotated[int | None, Query(ge=1, le=100_000)] = None,
                format: Annotated[Literal["json", "csv"], Query()] = "json") -> Any:
    """A job's recorded metric points (optionally some series, after a step, evenly thinned to `max_points`).

    Without `max_points` one read returns at most TRAINSERVE_MAX_METRIC_POINTS_PER_READ points (whole steps);
    `next_since_step` is then set: pass it as `since_step` to read on (null once everything was read). A CSV
    read stops at the same bound. Non-finite values are null in JSON and empty cells in CSV.
    """
    page = jobs.read_job_metrics(session, tenant=tenant, job_id=job_id, names=split_names(names),
                                 since_step=since_step, max_points=max_points, settings=settings)
    if format == "csv":
        return Response(metrics.points_csv(page.points), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{page.job_id}-metrics.csv"'})
    return page


@router.get("/jobs/{job_id}/metrics/stream", name="stream_metrics", response_class=StreamingResponse,
            responses={200: {"description": _SSE_DESCRIPTION,
                             "content": {"text/event-stream": {"itemSchema": _SSE_EVENT}}},
                       **error_responses(404, 429)})
def stream_metrics(request: Request, session: SessionDep, tenant: TenantDep, settings: SettingsDep, job_id: str,
                   names: Names = None, since_step: SinceStep = None) -> StreamingResponse:
    """Follow a job live: its new points and status changes as server-sent events, until it finishes."""
    job = jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id)
    digest = key_digest(request.headers.get("authorization"))
    slots: StreamSlots = request.app.state.stream_slots
    slots.acquire(tenant, limit=settings.max_streams_per_tenant)
    # End the request's transaction now: the stream outlives the route, and an open transaction would hold
    # SQLite's write lock (or a PostgreSQL connection) for as long as the client listens.
    session.commit()
    return StreamingResponse(event_stream(job.id, tenant, split_names(names), since_step, key_digest=digest,
                                          slots=slots),
                             media_type="text/event-stream", headers=STREAM_HEADERS)
