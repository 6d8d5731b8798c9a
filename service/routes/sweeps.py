"""/sweeps: a base spec plus a search space, its trials run as jobs; create, list, read, cancel, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from service import sweeps
from service.routes.deps import SessionDep, SettingsDep, TenantDep, error_responses, linked
from service.schemas import SweepCreate, SweepPage, SweepRead

router = APIRouter(tags=["sweeps"])


@router.post("/sweeps", status_code=201, response_model=SweepRead, name="create_sweep",
             responses={**linked(201, "the sweep, its first trials queued", GetSweep=("get_sweep", {"sweep_id": "id"}),
                                 CancelSweep=("cancel_sweep", {"sweep_id": "id"})),
                        **error_responses(400, 413, 429)})
def create_sweep(session: SessionDep, tenant: TenantDep, settings: SettingsDep, body: SweepCreate) -> SweepRead:
    """Start a sweep: the space (each key a JSON path into `spec`) and its extreme values are checked first
    (422 at `space["KEY"]`), then the first `search.parallel` trials are submitted as jobs."""
    sweep, send = sweeps.create_sweep(session, tenant=tenant, body=body, settings=settings)
    session.commit()  # trials are sent after commit, so no worker sees an uncommitted job
    sweeps.send_trials(send, settings=settings)
    return sweeps.sweep_read(session, sweep)


@router.get("/sweeps", response_model=SweepPage, name="list_sweeps", responses=error_responses())
def list_sweeps(session: SessionDep, tenant: TenantDep, settings: SettingsDep,
                limit: Annotated[int, Query(ge=1)] = 50,
                cursor: Annotated[str | None, Query(max_length=500)] = None) -> SweepPage:
    """The tenant's sweeps, newest first, a page at a time (pass `next_cursor` back as `cursor`)."""
    return sweeps.list_sweeps(session, tenant=tenant, limit=min(limit, settings.max_page_size), cursor=cursor)


@router.get("/sweeps/{sweep_id}", response_model=SweepRead, name="get_sweep", responses=error_responses(404))
def get_sweep(session: SessionDep, tenant: TenantDep, sweep_id: str) -> SweepRead:
    """A sweep: status, trials per status, the best trial, and every trial's params, status, objective and epochs."""
    return sweeps.sweep_read(session, sweeps.get_sweep_or_raise(session, tenant=tenant, sweep_id=sweep_id))


@router.post("/sweeps/{sweep_id}/cancel", response_model=SweepRead, name="cancel_sweep",
             responses=error_responses(404, 409))
def cancel_sweep(session: SessionDep, tenant: TenantDep, sweep_id: str) -> SweepRead:
    """Stop a running sweep: no new trials, queued trials never start, running ones stop within a second."""
    sweep = sweeps.cancel_sweep(session, tenant=tenant, sweep_id=sweep_id)
    session.commit()
    return sweeps.sweep_read(session, sweep)


@router.delete("/sweeps/{sweep_id}", status_code=204, name="delete_sweep", response_class=Response,
               responses={204: {"description": "deleted, with its trials' jobs, metrics and checkpoints"},
                          **error_responses(404, 409)})
def delete_sweep(session: SessionDep, tenant: TenantDep, sweep_id: str) -> None:
    """Delete a finished sweep and its trials; 409 while it runs or a trial is still queued or running."""
    sweeps.delete_sweep(session, tenant=tenant, sweep_id=sweep_id)
