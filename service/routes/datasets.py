"""/datasets: upload a table (CSV, Parquet, NPZ) to train on, list and read them."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, Query, UploadFile

from service import datasets
from service.routes.deps import SessionDep, SettingsDep, TenantDep, error_responses
from service.schemas import DatasetPage, DatasetRead

router = APIRouter(tags=["datasets"])


@router.post("/datasets", status_code=201, response_model=DatasetRead, name="upload_dataset",
             responses=error_responses(400, 413))
async def upload_dataset(
    session: SessionDep, tenant: TenantDep, settings: SettingsDep,
    file: Annotated[UploadFile, File(description="CSV (with a header row), Parquet or NPZ")],
    target: Annotated[list[str], Form(description="target column(s): repeat the field or comma-separate")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetRead:
    """Upload a table: it is parsed and described (column types, statistics) once, then stored."""
    raw = await file.read(settings.max_dataset_bytes + 1)
    return await anyio.to_thread.run_sync(lambda: datasets.upload_dataset_read(
        session, tenant=tenant, raw=raw, filename=file.filename or "upload", target=target, name=name,
        settings=settings))


@router.get("/datasets", response_model=DatasetPage, name="list_datasets", responses=error_responses())
def list_datasets(session: SessionDep, tenant: TenantDep, settings: SettingsDep,
                  limit: Annotated[int, Query(ge=1)] = 50,
                  cursor: Annotated[str | None, Query(max_length=500)] = None) -> DatasetPage:
    """The tenant's datasets, newest first, a page at a time: pass `next_cursor` back as `cursor`."""
    return datasets.list_datasets(session, tenant=tenant, limit=min(limit, settings.max_page_size), cursor=cursor)


@router.get("/datasets/{dataset_id}", response_model=DatasetRead, name="get_dataset", responses=error_responses(404))
def get_dataset(session: SessionDep, tenant: TenantDep, dataset_id: str) -> DatasetRead:
    """One dataset's description: rows, columns with their types and statistics, target columns."""
    return datasets.dataset_read(datasets.get_dataset_or_raise(session, tenant=tenant, dataset_id=dataset_id))
