"""/jobs/{job_id}/checkpoints: list a job's checkpoints and download one's weights (safetensors)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service import checkpoints, jobs
from service.routes.deps import SessionDep, TenantDep, error_responses
from service.schemas import CheckpointList

router = APIRouter(tags=["checkpoints"])

_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_DOWNLOAD_HEADERS = {
    "Content-Disposition": {"description": "the file name", "schema": {"type": "string"}},
    "X-Checkpoint-Id": {"description": "the checkpoint the reference resolved to", "schema": {"type": "string"}},
    "X-Checkpoint-SHA256": {"description": "the weights' SHA-256", "schema": {"type": "string"}},
}


@router.get("/jobs/{job_id}/checkpoints", response_model=CheckpointList, name="list_checkpoints",
            responses=error_responses(404))
def list_checkpoints(session: SessionDep, tenant: TenantDep, job_id: str) -> CheckpointList:
    """A job's kept checkpoints, newest first, marking the best and the latest."""
    return checkpoints.list_checkpoints(session, job=jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id))


@router.get("/jobs/{job_id}/checkpoints/{ckpt}", name="download_checkpoint", response_class=Response,
            responses={200: {"description": "the weights as a safetensors file", "content": _BINARY,
                             "headers": _DOWNLOAD_HEADERS},
                       **error_responses(404, 409)})
def download_checkpoint(session: SessionDep, tenant: TenantDep, job_id: str, ckpt: str) -> Response:
    """Download a checkpoint's weights: `ckpt` is a checkpoint id, `best` or `latest`; the SHA-256 is checked."""
    job = jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id)
    weights, row = checkpoints.load_weights_verified(
        session, job=job, checkpoint_id=checkpoints.resolve_checkpoint_id(job, ckpt))
    return Response(weights, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{job.id}-step{row.step}.safetensors"',
        "X-Checkpoint-Id": row.id, "X-Checkpoint-SHA256": row.weights_sha256})
