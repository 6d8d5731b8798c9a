"""/workers: the live training workers."""

from __future__ import annotations

from fastapi import APIRouter

from service import workers
from service.routes.deps import SessionDep, SettingsDep, TenantDep, error_responses
from service.schemas import WorkerList

router = APIRouter(tags=["health"])


@router.get("/workers", response_model=WorkerList, name="list_workers", responses=error_responses())
def list_workers(session: SessionDep, _tenant: TenantDep, settings: SettingsDep) -> WorkerList:
    """Live workers: their queues, device and how many jobs each is training."""
    return workers.worker_list(session, settings=settings)
