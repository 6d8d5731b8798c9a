"""Checkpoints: recording them with their SHA-256, retention, listing, and reading them back verified."""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import Boolean, Connection, DateTime, Float, Integer, String, bindparam, delete, func, insert, select
from sqlalchemy.orm import Session, defer

from service.db import driver_errors_as_sqlalchemy
from service.errors import CheckpointNotFound, CorruptCheckpoint, StateConflict
from service.models import Checkpoint, Job, ModelVersion, new_id, utcnow
from service.schemas import CheckpointList, CheckpointRead

log = logging.getLogger(__name__)


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _better(value: float | None, than: float | None, mode: Literal["min", "max"]) -> bool:
    if value is None:
        return False
    if than is None:
        return True
    return value < than if mode == "min" else value > than


@dataclass
class CheckpointPointers:
    """A job's id and the two checkpoint columns record_checkpoint moves, without the rest of its row."""

    id: str
    best_checkpoint_id: str | None
    latest_checkpoint_id: str | None


def record_checkpoint(session: Session, *, job: Job | CheckpointPointers, step: int, epoch: int, metric: str,
                      value: float | None, weights: bytes, state: bytes, is_final: bool, keep_last: int,
                      keep_best: bool, mode: Literal["min", "max"]) -> str:
    """Store a checkpoint of `job`, point the job's latest (when it has state) and best at it as they now are,
    and apply retention; returns its id. The new pointers are set on `job`: an ORM Job's flush writes them, the
    worker writes a CheckpointPointers' back itself (with its lease check).

    Core statements built once, on the session's connection, not the ORM: the worker's writer thread runs this at
    every checkpoint, holding the GIL that training waits for, and the ORM's bookkeeping (or building the
    statements anew each time) cost more than the statements."""
    connection = session.connection()
    ckpt_id = new_id()
    _insert_checkpoint(connection, {
        "id": ckpt_id, "job_id": job.id, "step": step, "epoch": epoch, "metric": metric, "value": value,
        "is_final": is_final, "weights": weights, "weights_sha256": sha256(weights), "state": state,
        "state_sha256": sha256(state), "size_bytes": len(weights) + len(state), "created_at": utcnow()})
    if state:  # a best-weights checkpoint (an earlier epoch's weights, no state) is never the one to resume from
        job.latest_checkpoint_id = ckpt_id
    best = connection.execute(_VALUE_OF, {"best_id": job.best_checkpoint_id}).first() \
        if job.best_checkpoint_id else None
    if best is None or _better(value, best.value, mode) or (best.value is None and value is None):
        job.best_checkpoint_id = ckpt_id
    _apply_retention(connection, job=job, keep_last=keep_last, keep_best=keep_best)
    return ckpt_id


_INSERT = insert(Checkpoint)

# A checkpoint whose blobs add up to this much is a large one. PostgreSQL: streamed a piece at a time. Bound as a
# statement's parameters, the blobs are copied whole into libpq's output buffer (which keeps its grown size):
# storing a checkpoint took twice its size in the writer's memory, now its size and a piece. SQLite copies a bound
# blob and builds the row's record from it, and its incremental blob I/O needs a row whose blobs already have their
# size (zero-filled blobs that are not the row's last columns are built in memory too), so streaming saves nothing
# there; but the driver's cached INSERT keeps its copy of the last bound blobs for as long as the connection lives,
# so the connection is closed rather than pooled once its transaction is over.
STREAM_BLOBS_FROM_BYTES = 16 * 2**20
BLOB_PIECE_BYTES = 2**20


def _insert_checkpoint(connection: Connection, row: dict[str, Any]) -> None:
    large = len(row["weights"]) + len(row["state"]) >= STREAM_BLOBS_FROM_BYTES
    if large and connection.dialect.name == "postgresql":
        _insert_postgres_streamed(connection, row)
        return
    connection.execute(_INSERT, row)
    if large and connection.dialect.name == "sqlite":
        connection.connection.detach()  # closed, not returned to the pool, when the session lets it go


# PostgreSQL: COPY in its binary format, the blobs sent from where they lie in pieces (psycopg hands each piece to
# libpq and waits for it to drain past a threshold). Every column, in the table's order, laid out as its type reads.
_COPY_COLUMNS = tuple(column.key for column in Checkpoint.__table__.columns)
_COPY_SQL = f"COPY {Checkpoint.__tablename__} ({', '.join(_COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def _copy_value(column: str, value: Any) -> bytes:
    """A non-blob value in PostgreSQL's binary format for its column's type (read off the model, so a type changed
    there is refused here rather than sent in the wrong layout): text as UTF-8, Integer as int4, Float as float8,
    Boolean as one byte, DateTime as microseconds since 2000-01-01 UTC."""
    kind = type(Checkpoint.__table__.c[column].type)
    if kind is Integer:
        return struct.pack("!i", value)
    if kind is Float:
        return struct.pack("!d", value)
    if kind is Boolean:
        return b"\x01" if value else b"\x00"
    if kind is DateTime:
        delta = value - _PG_EPOCH
        return struct.pack("!q", (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)
    if kind is String:
        return str(value).encode()
    raise TypeError(f"checkpoints.{column}: no binary COPY layout for {kind.__name__}")


def _insert_postgres_streamed(connection: Connection, row: dict[str, Any]) -> None:
    driver: Any = connection.connection.driver_connection  # a psycopg Connection
    # An outage mid-COPY raised as for any statement: the writer retries the whole transaction.
    with driver_errors_as_sqlalchemy(connection, _COPY_SQL), driver.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
        head = bytearray(_COPY_SIGNATURE + struct.pack("!h", len(_COPY_COLUMNS)))
        for column in _COPY_COLUMNS:
            value = row[column]
            if isinstance(value, (bytes, bytearray, memoryview)):  # weights, state
                head += struct.pack("!i", len(value))
                copy.write(bytes(head))
                head.clear()
                view = memoryview(value)
                for start in range(0, len(view), BLOB_PIECE_BYTES):
                    copy.write(view[start:start + BLOB_PIECE_BYTES])
            elif value is None:
                head += struct.pack("!i", -1)
            else:
                encoded = _copy_value(column, value)
                head += struct.pack("!i", len(encoded)) + encoded
        copy.write(bytes(head) + _COPY_TRAILER)


_VALUE_OF = select(Checkpoint.value).where(Checkpoint.id == bindparam("best_id"))
# A job's checkpoints, newest first: whether each can be resumed from (has state) and whether a model version pins it.
_RETENTION = (
    select(Checkpoint.id, func.length(Checkpoint.state) > 0,
           select(ModelVersion.id).where(ModelVersion.checkpoint_id == Checkpoint.id).exists())
    .where(Checkpoint.job_id == bindparam("job_id"))
    .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc())
)
_DROP = delete(Checkpoint).where(Checkpoint.id.in_(bindparam("ids", expanding=True)))


def _apply_retention(connection: Connection, *, job: Job | CheckpointPointers, keep_last: int,
                     keep_best: bool) -> None:
    # keep_last counts checkpoints a run can resume from; a best-weights checkpoint (no state) stays only while
    # it is the best (keep_best) or a model version pins it. A checkpoint a model version pins (service.registry)
    # is never removed.
    rows = connection.execute(_RETENTION, {"job_id": job.id}).all()
    keep = set([ckpt_id for ckpt_id, resumable, _ in rows if resumable][:keep_last])
    if keep_best and job.best_checkpoint_id:
        keep.add(job.best_checkpoint_id)
    keep |= {ckpt_id for ckpt_id, _, is_pinned in rows if is_pinned}
    drop = [ckpt_id for ckpt_id, _, _ in rows if ckpt_id not in keep]
    if drop:
        connection.execute(_DROP, {"ids": drop})
    if not keep_best and job.best_checkpoint_id in drop:
        job.best_checkpoint_id = job.latest_checkpoint_id


def list_checkpoints(session: Session, *, job: Job) -> CheckpointList:
    rows = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job.id)
        .options(defer(Checkpoint.weights), defer(Checkpoint.state)).order_by(Checkpoint.step)
    )
    return CheckpointList(items=[
        CheckpointRead(id=c.id, step=c.step, epoch=c.epoch, metric=c.metric, value=c.value, sha256=c.weights_sha256,
                       size_bytes=c.size_bytes, created_at=c.created_at, is_best=c.id == job.best_checkpoint_id,
                       is_latest=c.id == job.latest_checkpoint_id)
        for c in rows
    ])


def resolve_checkpoint_id(job: Job, ref: str) -> str:
    """`best`, `latest` or an id -> an id; 409 while the job has no checkpoint yet."""
    if ref in ("best", "latest"):
        found = job.best_checkpoint_id if ref == "best" else job.latest_checkpoint_id
        if found is None:
            raise StateConflict(f"job {job.id} has no checkpoint yet (status {job.status})")
        return found
    return ref


def load_weights_verified(session: Session, *, job: Job, checkpoint_id: str) -> tuple[bytes, Checkpoint]:
    ckpt = session.scalar(
        select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.job_id == job.id)
        .options(defer(Checkpoint.state))
    )
    if ckpt is None:
        raise CheckpointNotFound(job.id, checkpoint_id)
    if sha256(ckpt.weights) != ckpt.weights_sha256:
        log.error("checkpoint.corrupt job_id=%s checkpoint_id=%s", job.id, ckpt.id)
        raise CorruptCheckpoint(
            f"checkpoint {ckpt.id} is corrupt: its bytes no longer match the SHA-256 recorded when it was written; "
            "it will not be loaded")
    return ckpt.weights, ckpt


def load_resume_state(session: Session, *, job: Job) -> tuple[Checkpoint, bytes, bytes] | None:
    """The latest checkpoint with verified weights and state, for exact resume; None when there is none."""
    if job.latest_checkpoint_id is None:
        return None
    ckpt = session.get(Checkpoint, job.latest_checkpoint_id)
    if ckpt is None:
        return None
    if sha256(ckpt.weights) != ckpt.weights_sha256 or sha256(ckpt.state) != ckpt.state_sha256:
        raise CorruptCheckpoint(f"checkpoint {ckpt.id} is corrupt (SHA-256 mismatch); cannot resume from it")
    return ckpt, ckpt.weights, ckpt.state
