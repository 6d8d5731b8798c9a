"""What a training run writes to the database, as data: a write is a small picklable object that applies itself to a
session, so the same writes run on the worker's writer thread or in its writer process (worker.writer_process).

This module imports no torch: the writer process starts with SQLAlchemy and the service's tables only.
Several writes share one transaction (see apply_writes); each uses Core statements on the session's connection,
no ORM objects, since an ORM change pending until the commit would land after a later write's update.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, SupportsIndex

from sqlalchemy import Update, bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.checkpoints import CheckpointPointers, record_checkpoint
from service.db import is_transient, session_scope
from service.metrics import record_points
from service.models import Checkpoint, Job, MetricPoint

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 5.0
# What a checkpoint write reads of the job row: the checkpoints it points at, if we still hold its lease.
_POINTERS = select(Job.best_checkpoint_id, Job.latest_checkpoint_id).where(
    Job.id == bindparam("owned_id"), Job.lease_owner == bindparam("owned_by"))


class Write(Protocol):
    """One report of a run (points, progress, a checkpoint), applied in the batch's transaction. is_retry: an
    earlier attempt of this transaction may have committed without us hearing, so the write must not duplicate."""

    def apply(self, session: Session, is_retry: bool) -> None: ...


class LeaseLost(RuntimeError):
    """Another worker owns this job now (our lease ran out): stop without writing anything more."""


class WriterFailed(RuntimeError):
    """The writer process could not apply a batch (a bug, or a database that refuses the write): its text is
    user_error's, written in that process."""


def user_error(exc: BaseException) -> str:
    """What a user reads in job.error: never SQL, parameters, hosts or ports (those go to the worker's log)."""
    if isinstance(exc, WriterFailed):
        return str(exc)
    if isinstance(exc, SQLAlchemyError):
        return f"internal error: the database refused a write ({exc.__class__.__name__}); see the worker log"
    return f"{exc.__class__.__name__}: {exc}"


def update_owned(session: Session, job_id: str, owner: str, **values: Any) -> None:
    """Write columns of a job we hold the lease of, without loading the row (its spec and report are large).
    A Core update on the session's connection: the ORM's bulk-update bookkeeping cost more than the round trip."""
    parameters = {"owned_id": job_id, "owned_by": owner, **{f"set_{k}": v for k, v in values.items()}}
    result = session.connection().execute(_owned_update(tuple(values)), parameters)
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise LeaseLost(job_id)


@functools.cache
def _owned_update(columns: tuple[str, ...]) -> Update:
    """update_owned's statement for these columns, built once: building and keying a new one for every progress
    write cost the writer more than executing it."""
    table = Job.__table__
    return update(Job).where(Job.id == bindparam("owned_id"), Job.lease_owner == bindparam("owned_by")).values(
        {name: bindparam(f"set_{name}", type_=table.c[name].type) for name in columns})


def owned_job(session: Session, job_id: str, owner: str) -> Job:
    """The job we hold the lease of (LeaseLost otherwise)."""
    job = session.get(Job, job_id)
    if job is None or job.lease_owner != owner:
        raise LeaseLost(job_id)
    return job


def write_until_done(fn: Callable[[Session, bool], Any], *, what: str, is_retry: bool = False,
                     keep_trying: Callable[[], bool] = lambda: True) -> Any:
    """Run fn in its own transaction, retrying while the database is unavailable, however long that is (until
    keep_trying() says otherwise: TimeoutError). fn learns whether an earlier attempt may have committed without
    us hearing (is_retry, true from the start when the caller already lost an attempt's answer)."""
    delay, outage_started = 0.2, None
    while True:
        try:
            with session_scope() as session:
                result = fn(session, is_retry)
            if outage_started is not None:
                log.info("db.back what=%s after=%.1fs", what, time.monotonic() - outage_started)
            return result
        except Exception as exc:
            if not is_transient(exc):
                raise
            if outage_started is None:
                outage_started = time.monotonic()
                log.warning("db.unavailable what=%s error=%s: retrying until it is back", what,
                            exc.__class__.__name__)
            if not keep_trying():
                raise TimeoutError(f"gave up writing {what}") from exc
            is_retry = True
            time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)


def apply_writes(batch: list[Write], session: Session, is_retry: bool) -> None:
    """The writes in the order they were submitted, then the job-row changes they staged, in the caller's one
    transaction."""
    for write in batch:
        write.apply(session, is_retry)
    for (job_id, owner), values in session.info.pop(_STAGED, {}).items():
        update_owned(session, job_id, owner, **values)  # the lease check: LeaseLost rolls the whole batch back


_STAGED = "trainserve.staged_job_changes"


def stage_job_changes(session: Session, job_id: str, owner: str, **values: Any) -> None:
    """Columns of a job we hold the lease of, written as the writer's transaction ends by one lease-checked UPDATE
    (see apply_writes): an epoch's points, progress and checkpoint each change the job row, and three UPDATEs cost
    three round trips. A later write's value for a column replaces an earlier one's, as the UPDATEs one after
    another would."""
    session.info.setdefault(_STAGED, {}).setdefault((job_id, owner), {}).update(values)


def _staged(session: Session, job_id: str, owner: str) -> dict[str, Any]:
    staged: dict[str, Any] = session.info.get(_STAGED, {}).get((job_id, owner), {})
    return staged


@dataclass(frozen=True, slots=True)
class PointsWrite:
    job_id: str
    owner: str
    rows: list[dict[str, Any]]  # name, step, epoch, value, time
    last_metrics: dict[str, float | None]

    def apply(self, session: Session, is_retry: bool) -> None:
        stage_job_changes(session, self.job_id, self.owner, last_metrics=self.last_metrics)
        # The failed attempt may have committed without us hearing: a batch is written whole in one
        # transaction, so finding its first point means it is in. Never duplicate.
        first = self.rows[0] if self.rows else None
        if is_retry and first is not None and session.scalar(select(MetricPoint.id).where(
                MetricPoint.job_id == self.job_id, MetricPoint.name == first["name"],
                MetricPoint.step == first["step"])) is not None:
            return
        record_points(session, job_id=self.job_id, points=self.rows)


@dataclass(frozen=True, slots=True)
class ProgressWrite:
    job_id: str
    owner: str
    epoch: int
    step: int
    total_steps: int
    epochs: int

    def apply(self, session: Session, is_retry: bool) -> None:
        stage_job_changes(session, self.job_id, self.owner, epoch=self.epoch, step=self.step,
                          total_steps=self.total_steps, epochs=self.epochs)


@dataclass(frozen=True, slots=True)
class CheckpointWrite:
    job_id: str
    owner: str
    step: int
    epoch: int
    weights: bytes
    state: bytes  # empty for a best-weights checkpoint
    monitor: str
    monitor_value: float | None
    is_final: bool
    keep_last: int
    keep_best: bool
    mode: Literal["min", "max"]

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        # Pickle protocol 5 carries the two blobs as buffers of their own (out of band, where the pickler takes
        # them so; worker.writer_process does): a checkpoint, gigabytes at the cap, is not copied into the pickle.
        values = [getattr(self, field.name) for field in dataclasses.fields(self)]
        if int(protocol) >= 5:
            values = [pickle.PickleBuffer(value) if isinstance(value, bytes) else value for value in values]
        return CheckpointWrite, tuple(values)

    def apply(self, session: Session, is_retry: bool) -> None:
        staged = _staged(session, self.job_id, self.owner)
        if "latest_checkpoint_id" in staged:  # an earlier checkpoint of this batch moved them
            pointers = (staged["best_checkpoint_id"], staged["latest_checkpoint_id"])
        else:
            row = session.connection().execute(_POINTERS, {"owned_id": self.job_id, "owned_by": self.owner}).first()
            if row is None:
                raise LeaseLost(self.job_id)
            pointers = (row.best_checkpoint_id, row.latest_checkpoint_id)
        # As for points: an attempt that committed without us hearing has stored this checkpoint already (a run
        # writes one checkpoint with state, and at most one best-weights one without, per step).
        if is_retry and _stored(session, self.job_id, step=self.step, with_state=bool(self.state)):
            return
        job = CheckpointPointers(self.job_id, *pointers)
        record_checkpoint(session, job=job, step=self.step, epoch=self.epoch, metric=self.monitor,
                          value=self.monitor_value, weights=self.weights, state=self.state, is_final=self.is_final,
                          keep_last=self.keep_last, keep_best=self.keep_best, mode=self.mode)
        moved: dict[str, Any] = {"best_checkpoint_id": job.best_checkpoint_id,
                                 "latest_checkpoint_id": job.latest_checkpoint_id}
        if self.state:  # a best-weights checkpoint is an earlier epoch's: progress does not move back
            moved.update(epoch=self.epoch, step=self.step)
        stage_job_changes(session, self.job_id, self.owner, **moved)


def _stored(session: Session, job_id: str, *, step: int, with_state: bool) -> bool:
    """Whether the job has a checkpoint at `step` with (or, a best-weights one, without) training state."""
    length = func.length(Checkpoint.state)
    return session.scalar(select(Checkpoint.id).where(
        Checkpoint.job_id == job_id, Checkpoint.step == step, length > 0 if with_state else length == 0)) is not None
