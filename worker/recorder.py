"""What a training run writes to the database, written off the training thread, in order, through any outage.

fit() reports points, progress and checkpoints through JobRecorder's callbacks. Each becomes a write on a
bounded queue that one background thread applies in the order fit() reported them, so the training step never
waits for the database. Whatever is queued when the thread comes for work goes in one transaction (an epoch's
end queues points, progress and a checkpoint together): the writer's CPU, and the GIL it holds, are taken from
training, and a transaction's own cost (session, commit) is much of a small write's. While the database is away
the writer retries for as long as the outage lasts (an outage never fails a job); once the buffer is full, the
training thread waits, so memory stays bounded. The job-row changes of a transaction's writes (last metrics,
progress, checkpoint pointers) go in one UPDATE at its end that also checks the lease: a transaction that finds
the lease gone (another worker resumed the job) is rolled back whole, and stops everything.
Nothing is lost on a kill: a resumed run replays from its latest written checkpoint.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Update, bindparam, func, select, update
from sqlalchemy.orm import Session

from service.checkpoints import CheckpointPointers, record_checkpoint
from service.db import is_transient, session_scope
from service.metrics import record_points
from service.models import Checkpoint, Job, MetricPoint
from service.spec import JobSpec
from worker.engine import CheckpointBlob, Point, Progress
from worker.observability import SAMPLES_PER_SECOND, STEPS

log = logging.getLogger(__name__)

# (session, is_retry). Core statements on the session's connection only, no ORM objects: several writes share one
# transaction (see _apply), and an ORM change pending until the commit would land after a later write's update.
Write = Callable[[Session, bool], None]
POINT_BYTES = 200  # a buffered point's rough footprint, for the byte budget
MAX_RETRY_DELAY = 5.0
# What a checkpoint write reads of the job row: the checkpoints it points at, if we still hold its lease.
_POINTERS = select(Job.best_checkpoint_id, Job.latest_checkpoint_id).where(
    Job.id == bindparam("owned_id"), Job.lease_owner == bindparam("owned_by"))


class LeaseLost(RuntimeError):
    """Another worker owns this job now (our lease ran out): stop without writing anything more."""


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
    write cost the writer thread more than executing it."""
    table = Job.__table__
    return update(Job).where(Job.id == bindparam("owned_id"), Job.lease_owner == bindparam("owned_by")).values(
        {name: bindparam(f"set_{name}", type_=table.c[name].type) for name in columns})


def owned_job(session: Session, job_id: str, owner: str) -> Job:
    """The job we hold the lease of (LeaseLost otherwise)."""
    job = session.get(Job, job_id)
    if job is None or job.lease_owner != owner:
        raise LeaseLost(job_id)
    return job


def write_until_done(fn: Callable[[Session, bool], Any], *, what: str) -> Any:
    """Run fn in its own transaction, retrying while the database is unavailable, however long that is.
    fn learns whether an earlier attempt may have committed without us hearing (is_retry), to stay exactly-once."""
    delay, retry, outage_started = 0.2, False, None
    while True:
        try:
            with session_scope() as session:
                result = fn(session, retry)
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
            retry = True
            time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)


class BackgroundWriter(threading.Thread):
    """Applies writes in order on one thread; the producer waits only when max_bytes are already buffered."""

    def __init__(self, *, job_id: str, max_bytes: int) -> None:
        super().__init__(name=f"writer-{job_id}", daemon=True)
        self.job_id, self.max_bytes = job_id, max_bytes
        self._items: collections.deque[tuple[Write, int, str]] = collections.deque()
        self._buffered = 0
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def submit(self, write: Write, *, size: int, what: str) -> None:
        with self._cond:
            self._raise_error()
            # Always admit one item, however large, so a checkpoint bigger than the budget still goes through.
            while self._items and self._buffered + size > self.max_bytes and self._error is None:
                self._cond.wait()
            self._raise_error()
            self._items.append((write, size, what))
            self._buffered += size
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until everything submitted so far is written (however long the database is away)."""
        with self._cond:
            while (self._items or self._busy) and self._error is None:
                self._cond.wait()
            self._raise_error()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                batch = list(self._items)
                self._items.clear()
                self._busy = True
            try:
                write_until_done(lambda session, is_retry: _apply(batch, session, is_retry),
                                 what="+".join(dict.fromkeys(what for _, _, what in batch)))
            except BaseException as exc:  # LeaseLost, or a bug: hand it to the training thread
                with self._cond:
                    self._error = exc
                    self._items.clear()
                    self._busy = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._buffered -= sum(size for _, size, _ in batch)
                self._busy = False
                self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def _apply(batch: list[tuple[Write, int, str]], session: Session, is_retry: bool) -> None:
    """The writes in the order they were submitted, then the job-row changes they staged, in the caller's one
    transaction."""
    for write, _, _ in batch:
        write(session, is_retry)
    for (job_id, owner), values in session.info.pop(_STAGED, {}).items():
        update_owned(session, job_id, owner, **values)  # the lease check: LeaseLost rolls the whole batch back


_STAGED = "trainserve.staged_job_changes"


def stage_job_changes(session: Session, job_id: str, owner: str, **values: Any) -> None:
    """Columns of a job we hold the lease of, written as the writer's transaction ends by one lease-checked UPDATE
    (see _apply): an epoch's points, progress and checkpoint each change the job row, and three UPDATEs cost the
    writer thread three round trips of GIL-held work. A later write's value for a column replaces an earlier one's,
    as the UPDATEs one after another would."""
    session.info.setdefault(_STAGED, {}).setdefault((job_id, owner), {}).update(values)


def _staged(session: Session, job_id: str, owner: str) -> dict[str, Any]:
    staged: dict[str, Any] = session.info.get(_STAGED, {}).get((job_id, owner), {})
    return staged


class JobRecorder:
    """fit()'s callbacks: each queues one write, applied in order and only while we hold the lease."""

    def __init__(self, *, job_id: str, owner: str, spec: JobSpec, writer: BackgroundWriter, start_step: int = 0,
                 last_metrics: dict[str, float] | None = None) -> None:
        self.job_id, self.owner, self.spec, self.writer = job_id, owner, spec, writer
        self.last_step = start_step  # a resumed run's steps count from its checkpoint
        # Only the lease holder writes last_metrics, so this copy is the truth: no read before each write.
        self.last_metrics: dict[str, float | None] = dict(last_metrics or {})

    def points(self, points: list[Point]) -> None:
        # Plain dicts, not dataclasses.asdict (which deep-copies field by field: 13 us a point).
        rows = [{"name": p.name, "step": p.step, "epoch": p.epoch, "value": p.value, "time": p.time} for p in points]
        for p in points:
            # JSON has no inf or NaN (PostgreSQL's json column refuses them): a non-finite latest value is null.
            self.last_metrics[p.name] = p.value if math.isfinite(p.value) else None
            if p.name == "samples_per_s":
                SAMPLES_PER_SECOND.set(p.value)
        last = dict(self.last_metrics)
        job_id, owner = self.job_id, self.owner

        def write(session: Session, is_retry: bool) -> None:
            stage_job_changes(session, job_id, owner, last_metrics=last)
            # The failed attempt may have committed without us hearing: a batch is written whole in one
            # transaction, so finding its first point means it is in. Never duplicate.
            if is_retry and rows and session.scalar(select(MetricPoint.id).where(
                    MetricPoint.job_id == job_id, MetricPoint.name == rows[0]["name"],
                    MetricPoint.step == rows[0]["step"])) is not None:
                return
            record_points(session, job_id=job_id, points=rows)

        self.writer.submit(write, size=POINT_BYTES * len(rows), what="points")

    def progress(self, progress: Progress) -> None:
        STEPS.inc(max(0, progress.step - self.last_step))
        self.last_step = progress.step
        job_id, owner = self.job_id, self.owner
        self.writer.submit(lambda session, _retry: stage_job_changes(
            session, job_id, owner, epoch=progress.epoch, step=progress.step, total_steps=progress.total_steps,
            epochs=progress.epochs), size=POINT_BYTES, what="progress")

    def checkpoint(self, blob: CheckpointBlob) -> None:
        policy = self.spec.training.checkpoint
        job_id, owner = self.job_id, self.owner

        def write(session: Session, is_retry: bool) -> None:
            staged = _staged(session, job_id, owner)
            if "latest_checkpoint_id" in staged:  # an earlier checkpoint of this batch moved them
                pointers = (staged["best_checkpoint_id"], staged["latest_checkpoint_id"])
            else:
                row = session.connection().execute(_POINTERS, {"owned_id": job_id, "owned_by": owner}).first()
                if row is None:
                    raise LeaseLost(job_id)
                pointers = (row.best_checkpoint_id, row.latest_checkpoint_id)
            # As for points: an attempt that committed without us hearing has stored this checkpoint already (a
            # run writes one checkpoint with state, and at most one best-weights one without, per step).
            if is_retry and _stored(session, job_id, step=blob.step, with_state=bool(blob.state)):
                return
            job = CheckpointPointers(job_id, *pointers)
            record_checkpoint(session, job=job, step=blob.step, epoch=blob.epoch, metric=blob.monitor,
                              value=blob.monitor_value, weights=blob.weights, state=blob.state,
                              is_final=blob.is_final, keep_last=policy.keep_last, keep_best=policy.keep_best,
                              mode=policy.mode)
            moved: dict[str, Any] = {"best_checkpoint_id": job.best_checkpoint_id,
                                     "latest_checkpoint_id": job.latest_checkpoint_id}
            if blob.state:  # a best-weights checkpoint is an earlier epoch's: progress does not move back
                moved.update(epoch=blob.epoch, step=blob.step)
            stage_job_changes(session, job_id, owner, **moved)

        self.writer.submit(write, size=len(blob.weights) + len(blob.state), what="checkpoint")


def _stored(session: Session, job_id: str, *, step: int, with_state: bool) -> bool:
    """Whether the job has a checkpoint at `step` with (or, a best-weights one, without) training state."""
    length = func.length(Checkpoint.state)
    return session.scalar(select(Checkpoint.id).where(
        Checkpoint.job_id == job_id, Checkpoint.step == step, length > 0 if with_state else length == 0)) is not None
