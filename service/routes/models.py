"""/models: the registry (versions pinning checkpoints, aliases), and every checkpoint's signature and export."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response

from service import export, registry, signature
from service.jobs import get_job_or_raise
from service.routes.deps import SessionDep, SettingsDep, TenantDep, error_responses, linked
from service.schemas import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    AliasUpdate,
    ModelAliasRead,
    ModelCreate,
    ModelPage,
    ModelRead,
    ModelVersionRead,
    Signature,
)

router = APIRouter(tags=["models"])

ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="the model's name")]
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN, description="an alias, e.g. prod")]
Version = Annotated[int, Path(ge=1)]
Format = Annotated[export.ExportFormat, Query(description="onnx (onnxruntime and other runtimes) or pt2 "
                                                            "(torch.export.load)")]

_FILE: dict[int | str, dict[str, Any]] = {200: {"description": "one self-contained file: normalization, reshape, network (and probabilities)",
               "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
               "headers": {"Content-Disposition": {"description": "the file name", "schema": {"type": "string"}}}}}


def _download(raw: bytes, filename: str) -> Response:
    return Response(raw, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.post("/models", status_code=201, response_model=ModelVersionRead, name="register_model",
             responses={**linked(201, "the new version", GetModel=("get_model", {"name": "model"}),
                                 GetModelVersion=("get_model_version", {"name": "model", "version": "version"})),
                        **error_responses(404, 409)})
def register_model(session: SessionDep, tenant: TenantDep, body: ModelCreate) -> ModelVersionRead:
    """Register the job's checkpoint (`best`, `latest` or an id, pinned now) as the next version of `name`."""
    return registry.register_version(session, tenant=tenant, name=body.name, job_id=body.job_id,
                                     checkpoint=body.checkpoint)


@router.get("/models", response_model=ModelPage, name="list_models", responses=error_responses())
def list_models(session: SessionDep, tenant: TenantDep, settings: SettingsDep,
                limit: Annotated[int, Query(ge=1)] = 50,
                cursor: Annotated[str | None, Query(max_length=500)] = None) -> ModelPage:
    """The tenant's models, newest first, with their latest version and aliases."""
    return registry.list_models(session, tenant=tenant, limit=min(limit, settings.max_page_size), cursor=cursor)


@router.get("/models/{name}", response_model=ModelRead, name="get_model", responses=error_responses(404))
def get_model(session: SessionDep, tenant: TenantDep, name: ModelName) -> ModelRead:
    """A model with every version (newest first) and its aliases."""
    return registry.model_read(session, tenant=tenant, name=name)


@router.get("/models/{name}/versions/{version}", response_model=ModelVersionRead, name="get_model_version",
            responses=error_responses(404))
def get_model_version(session: SessionDep, tenant: TenantDep, name: ModelName, version: Version) -> ModelVersionRead:
    """One version: the job and checkpoint it pins, its aliases and its signature."""
    return registry.get_version_read(session, tenant=tenant, name=name, version=version)


@router.put("/models/{name}/aliases/{alias}", response_model=ModelAliasRead, name="set_model_alias",
            responses=error_responses(404))
def set_model_alias(session: SessionDep, tenant: TenantDep, name: ModelName, alias: AliasName,
                    body: Annotated[AliasUpdate, Body()]) -> ModelAliasRead:
    """Point an alias at a version (creating or moving it); /predict follows within the predict cache time."""
    return registry.set_alias(session, tenant=tenant, name=name, alias=alias, version=body.version)


@router.delete("/models/{name}/aliases/{alias}", status_code=204, name="delete_model_alias",
               responses=error_responses(404))
def delete_model_alias(session: SessionDep, tenant: TenantDep, name: ModelName, alias: AliasName) -> Response:
    """Remove an alias; the version it named stays."""
    registry.delete_alias(session, tenant=tenant, name=name, alias=alias)
    return Response(status_code=204)


@router.get("/models/{name}/versions/{version}/export", name="export_model_version", response_class=Response,
            responses={**_FILE, **error_responses(404, 409)})
def export_model_version(session: SessionDep, tenant: TenantDep, name: ModelName, version: Version,
                         format: Format = "onnx") -> Response:
    """Download the version as one file that runs without trainserve (ONNX or torch.export's pt2)."""
    return _download(*export.export_model_version(session, tenant=tenant, name=name, version=version, fmt=format))


@router.get("/jobs/{job_id}/checkpoints/{ckpt}/signature", response_model=Signature, tags=["checkpoints"],
            name="get_checkpoint_signature", responses=error_responses(404, 409))
def get_checkpoint_signature(session: SessionDep, tenant: TenantDep, job_id: str, ckpt: str) -> Signature:
    """What the checkpoint takes (values per row, feature names) and gives (classes or values)."""
    return signature.checkpoint_signature(session, job=get_job_or_raise(session, tenant=tenant, job_id=job_id),
                                          ref=ckpt)


@router.get("/jobs/{job_id}/checkpoints/{ckpt}/export", tags=["checkpoints"], name="export_checkpoint",
            response_class=Response, responses={**_FILE, **error_responses(404, 409)})
def export_checkpoint(session: SessionDep, tenant: TenantDep, job_id: str, ckpt: str,
                      format: Format = "onnx") -> Response:
    """Download the checkpoint (`best`, `latest` or an id) as one file that runs without trainserve."""
    return _download(*export.export_job_checkpoint(session, tenant=tenant, job_id=job_id, ref=ckpt, fmt=format))
