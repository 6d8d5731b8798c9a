"""/jobs: submit, validate, list, read, cancel and delete training jobs."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Header, Query, Request, Response

from service import compare, dispatch, jobs
from service.routes.deps import SessionDep, SettingsDep, TenantDep, error_responses, linked, split_names
from service.schemas import JobComparison, JobPage, JobRead, JobStatus, ValidationReport
from service.spec import SEED_EXAMPLE, JobSpec

router = APIRouter(tags=["jobs"])

SPEC_EXAMPLES = {"seed": {"summary": "The seed article's 3-layer regression MLP", "value": SEED_EXAMPLE}}
# What a client does next with a job it created (the stream is left out: it stays open until the job ends).
_BY_ID = {"job_id": "id"}
JOB_LINKS = {"GetJob": ("get_job", _BY_ID), "CancelJob": ("cancel_job", _BY_ID),
             "GetMetrics": ("get_metrics", _BY_ID), "ListCheckpoints": ("list_checkpoints", _BY_ID)}
SpecBody = Annotated[JobSpec, Body(openapi_examples=SPEC_EXAMPLES)]


@router.post("/jobs", status_code=201, response_model=JobRead, name="create_job",
             responses={**linked(201, "the job, queued", **JOB_LINKS),
                        200: {"model": JobRead, "description": "an idempotent replay: the job this "
                                                               "Idempotency-Key created before"},
                        **error_responses(400, 413, 429)})
async def create_job(request: Request, session: SessionDep, tenant: TenantDep, settings: SettingsDep,
                     spec: SpecBody, response: Response,
                     idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None) -> JobRead:
    """Submit a training job: the spec is checked statically (shapes, sizes, quotas) and the job queued.

    With an `Idempotency-Key` seen before, answers 200 with the job that key created, and submits nothing."""
    # `async` with the database work on the thread pool: FastAPI would also validate a plain `def` route's answer
    # on the thread pool, one more thread hop on the submit path.
    job, created = await anyio.to_thread.run_sync(functools.partial(
        dispatch.submit_and_send, session, tenant=tenant, spec=spec, idempotency_key=idempotency_key,
        settings=settings, queue_view=request.app.state.queue_view, key_digest=request.state.key_digest))
    if not created:
        response.status_code = 200
    return job


@router.post("/jobs/validate", response_model=ValidationReport, name="validate_job",
             responses=error_responses(400, 413))
def validate_job(session: SessionDep, tenant: TenantDep, settings: SettingsDep,
                 payload: Annotated[dict[str, Any], Body(openapi_examples=SPEC_EXAMPLES)]) -> dict[str, Any]:
    """Check a spec without submitting it: every problem with its JSON path, and the layer table it builds."""
    return jobs.validate_payload(session, tenant=tenant, payload=payload, settings=settings)


@router.get("/jobs", response_model=JobPage, name="list_jobs", responses=error_responses())
def list_jobs(session: SessionDep, tenant: TenantDep, settings: SettingsDep, status: JobStatus | None = None,
              limit: Annotated[int, Query(ge=1)] = 50,
              cursor: Annotated[str | None, Query(max_length=500)] = None,
              sweep_id: Annotated[str | None, Query(max_length=32)] = None) -> JobPage:
    """The tenant's jobs, newest first, a page at a time: pass `next_cursor` back as `cursor` for the next.
    `sweep_id` lists one sweep's trials."""
    return jobs.list_jobs(session, tenant=tenant, status=status, limit=min(limit, settings.max_page_size),
                          cursor=cursor, settings=settings, sweep_id=sweep_id)


@router.get("/jobs/compare", response_model=JobComparison, name="compare_jobs", responses=error_responses(404))
def compare_jobs(session: SessionDep, tenant: TenantDep,
                 ids: Annotated[str, Query(max_length=2000, description="job ids, comma-separated")],
                 names: Annotated[list[str] | None, Query()] = None,
                 max_points: Annotated[int | None, Query(ge=1, le=10_000)] = None) -> JobComparison:
    """Jobs side by side: each one's status, best checkpoint and downsampled curves, and `spec_diff`, the spec
    paths whose values differ with each job's value in `ids` order."""
    return compare.compare_jobs(session, tenant=tenant, ids=split_names([ids]) or [], names=split_names(names),
                                max_points=max_points)


@router.get("/jobs/{job_id}", response_model=JobRead, name="get_job", responses=error_responses(404))
def get_job(session: SessionDep, tenant: TenantDep, settings: SettingsDep, job_id: str) -> JobRead:
    """One job: status, progress, best and latest checkpoints, last metrics, its spec and static report."""
    return jobs.job_read(session, jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id), settings=settings)


@router.post("/jobs/{job_id}/cancel", response_model=JobRead, name="cancel_job",
             responses=error_responses(404, 409))
def cancel_job(session: SessionDep, tenant: TenantDep, settings: SettingsDep, job_id: str) -> JobRead:
    """Cancel a queued or running job (a running one stops within a second); 409 once it has finished."""
    return jobs.cancel_and_read_job(session, tenant=tenant, job_id=job_id, settings=settings)


@router.delete("/jobs/{job_id}", status_code=204, name="delete_job", response_class=Response,
               responses={204: {"description": "deleted, with its metrics and checkpoints"},
                          **error_responses(404, 409)})
def delete_job(session: SessionDep, tenant: TenantDep, job_id: str) -> None:
    """Delete a finished job with its metrics and checkpoints; 409 while it is queued or running."""
    jobs.delete_job(session, tenant=tenant, job_id=job_id)
