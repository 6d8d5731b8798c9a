"""Dataset use cases: upload (parse, describe, store), read and list, and loading a stored table."""

from __future__ import annotations

import hashlib
import logging
from pathlib import PurePath

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from service.errors import DatasetNotFound, PayloadTooLarge, SpecError
from service.models import Dataset
from service.pagination import decode_cursor, encode_cursor
from service.schemas import ColumnRead, DatasetPage, DatasetRead
from service.settings import Settings
from service.tabular import DatasetDescription, Table, TableError, TableLimits, detect_format, parse_table

log = logging.getLogger(__name__)


MAX_NAME_CHARS = 200  # Dataset.name's column width


def upload_dataset(session: Session, *, tenant: str, raw: bytes, filename: str, target: list[str],
                   name: str | None, settings: Settings) -> Dataset:
    """Parse first, then store: the parse (seconds for a large file) runs outside any write transaction.

    The request's session has only read the key so far; on SQLite that read began a BEGIN IMMEDIATE
    transaction, and holding the write lock through the parse would stall every worker's metric writes.
    """
    session.commit()  # end the key check's transaction: no lock is held while parsing
    table, dataset_name = parse_upload(raw=raw, filename=filename, target=target, name=name, settings=settings)
    return store_dataset(session, tenant=tenant, table=table, name=dataset_name,
                         fmt=detect_format(raw, filename=filename), size_bytes=len(raw))


def parse_upload(*, raw: bytes, filename: str, target: list[str], name: str | None,
                 settings: Settings) -> tuple[Table, str]:
    """The upload as a typed, described table and the dataset's name; no database access."""
    if len(raw) > settings.max_dataset_bytes:
        raise PayloadTooLarge(f"the file has {len(raw):,} bytes, the limit is {settings.max_dataset_bytes:,} "
                              "(TRAINSERVE_MAX_DATASET_BYTES)")
    dataset_name = name or PurePath(filename).name or "dataset"
    if len(dataset_name) > MAX_NAME_CHARS:
        loc = "name" if name else "file"
        raise SpecError(f"{loc}: the name has {len(dataset_name)} characters, the limit is {MAX_NAME_CHARS}",
                        [{"loc": loc, "msg": f"the {'name' if name else 'file name'} has {len(dataset_name)} "
                                             f"characters, the limit is {MAX_NAME_CHARS}; give a shorter name"}])
    targets = [t.strip() for item in target for t in item.split(",") if t.strip()]
    if not targets:
        raise SpecError("name the target column(s)", [{"loc": "target", "msg": "at least one target column is required"}])
    limits = TableLimits(max_rows=settings.max_rows, max_columns=settings.max_dataset_columns,
                         max_decoded_bytes=settings.max_dataset_decoded_bytes)
    try:
        table = parse_table(raw, filename=filename, target=targets, max_rows=settings.max_rows, limits=limits)
    except TableError as exc:
        raise SpecError(f"{exc.loc}: {exc.msg}", [{"loc": exc.loc, "msg": exc.msg}]) from exc
    return table, dataset_name


def store_dataset(session: Session, *, tenant: str, table: Table, name: str, fmt: str, size_bytes: int) -> Dataset:
    blob = table.to_bytes()
    dataset = Dataset(
        tenant=tenant,
        name=name,
        format=fmt,
        n_rows=table.description.n_rows,
        description=table.description.to_json(),
        blob=blob,
        sha256=hashlib.sha256(blob).hexdigest(),
        size_bytes=size_bytes,
    )
    session.add(dataset)
    session.flush()
    log.info("dataset.uploaded dataset_id=%s rows=%d", dataset.id, dataset.n_rows)
    return dataset


def upload_dataset_read(session: Session, *, tenant: str, raw: bytes, filename: str, target: list[str],
                        name: str | None, settings: Settings) -> DatasetRead:
    """POST /datasets: upload, commit, and the stored dataset as the API shows it."""
    dataset = upload_dataset(session, tenant=tenant, raw=raw, filename=filename, target=target, name=name,
                             settings=settings)
    session.commit()
    return dataset_read(dataset)


# Reading or listing a dataset shows its description only: the stored table (up to the dataset cap) stays in
# the database until load_table asks for it.
_WITHOUT_BLOB = defer(Dataset.blob)


def get_dataset_or_raise(session: Session, *, tenant: str, dataset_id: str, with_blob: bool = False) -> Dataset:
    dataset = session.get(Dataset, dataset_id, options=() if with_blob else (_WITHOUT_BLOB,))
    if dataset is None or dataset.tenant != tenant:
        raise DatasetNotFound(dataset_id)
    return dataset


def list_datasets(session: Session, *, tenant: str, limit: int, cursor: str | None = None) -> DatasetPage:
    """Newest first, `limit` at a time; `next_cursor` continues after the page's last row."""
    query = select(Dataset).options(_WITHOUT_BLOB).where(Dataset.tenant == tenant)
    if cursor:
        created, dataset_id = decode_cursor(cursor)
        query = query.where((Dataset.created_at < created)
                            | ((Dataset.created_at == created) & (Dataset.id < dataset_id)))
    rows = list(session.scalars(query.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return DatasetPage(items=[dataset_read(row) for row in rows[:limit]], next_cursor=next_cursor)


def dataset_read(dataset: Dataset) -> DatasetRead:
    description = DatasetDescription.from_json(dataset.description)
    return DatasetRead(
        id=dataset.id, name=dataset.name, format=dataset.format, n_rows=dataset.n_rows,
        size_bytes=dataset.size_bytes, created_at=dataset.created_at, target=description.target,
        columns=[ColumnRead(**c.to_json()) for c in description.columns],
        delimiter=description.delimiter,
    )


def load_table(session: Session, *, tenant: str, dataset_id: str) -> Table:
    dataset = get_dataset_or_raise(session, tenant=tenant, dataset_id=dataset_id, with_blob=True)
    if hashlib.sha256(dataset.blob).hexdigest() != dataset.sha256:
        raise TableError("data.dataset_id", f"dataset {dataset_id} is corrupt (SHA-256 mismatch)")
    return Table.from_bytes(dataset.blob)
