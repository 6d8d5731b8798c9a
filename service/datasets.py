"""Dataset use cases: upload (parse, describe, store), read and list, and loading a stored table."""

from __future__ import annotations

import hashlib
import logging
from pathlib import PurePath

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import DatasetNotFound, PayloadTooLarge, SpecError
from service.models import Dataset
from service.schemas import ColumnRead, DatasetPage, DatasetRead
from service.settings import Settings
from service.tabular import DatasetDescription, Table, TableError, detect_format, parse_table

log = logging.getLogger(__name__)


def upload_dataset(session: Session, *, tenant: str, raw: bytes, filename: str, target: list[str],
                   name: str | None, settings: Settings) -> Dataset:
    if len(raw) > settings.max_dataset_bytes:
        raise PayloadTooLarge(f"the file has {len(raw):,} bytes, the limit is {settings.max_dataset_bytes:,} "
                              "(TRAINSERVE_MAX_DATASET_BYTES)")
    targets = [t.strip() for item in target for t in item.split(",") if t.strip()]
    if not targets:
        raise SpecError("name the target column(s)", [{"loc": "target", "msg": "at least one target column is required"}])
    try:
        table = parse_table(raw, filename=filename, target=targets, max_rows=settings.max_rows)
    except TableError as exc:
        raise SpecError(f"{exc.loc}: {exc.msg}", [{"loc": exc.loc, "msg": exc.msg}]) from exc
    blob = table.to_bytes()
    dataset = Dataset(
        tenant=tenant,
        name=name or PurePath(filename).name or "dataset",
        format=detect_format(raw, filename=filename),
        n_rows=table.description.n_rows,
        description=table.description.to_json(),
        blob=blob,
        sha256=hashlib.sha256(blob).hexdigest(),
        size_bytes=len(raw),
    )
    session.add(dataset)
    session.flush()
    log.info("dataset.uploaded dataset_id=%s rows=%d", dataset.id, dataset.n_rows)
    return dataset


def get_dataset_or_raise(session: Session, *, tenant: str, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant != tenant:
        raise DatasetNotFound(dataset_id)
    return dataset


def list_datasets(session: Session, *, tenant: str, limit: int) -> DatasetPage:
    rows = session.scalars(
        select(Dataset).where(Dataset.tenant == tenant).order_by(Dataset.created_at.desc()).limit(limit)
    )
    return DatasetPage(items=[dataset_read(row) for row in rows], next_cursor=None)


def dataset_read(dataset: Dataset) -> DatasetRead:
    description = DatasetDescription.from_json(dataset.description)
    return DatasetRead(
        id=dataset.id, name=dataset.name, format=dataset.format, n_rows=dataset.n_rows,
        size_bytes=dataset.size_bytes, created_at=dataset.created_at, target=description.target,
        columns=[ColumnRead(**c.to_json()) for c in description.columns],
    )


def load_table(session: Session, *, tenant: str, dataset_id: str) -> Table:
    dataset = get_dataset_or_raise(session, tenant=tenant, dataset_id=dataset_id)
    if hashlib.sha256(dataset.blob).hexdigest() != dataset.sha256:
        raise TableError("data.dataset_id", f"dataset {dataset_id} is corrupt (SHA-256 mismatch)")
    return Table.from_bytes(dataset.blob)
