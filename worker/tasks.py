"""Celery task bodies: I/O only. Claim the job's lease, load data, call fit(), write what it reports."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import shared_task
from sqlalchemy import and_, bindparam, false, func, or_, select, update
from sqlalchemy.orm import Session

from service.checkpoints import load_resume_state
from service.datainfo import DataInfo
from service.datasets import load_table
from service import db
from service.db import session_scope, with_retry
from service.dispatch import send_job
from service.metrics import drop_points_after
from service.models import FINISHED_STATUSES, Job, utcnow
from service.nets import build_model
from service.queue import TRAIN_JOB
from service.settings import Settings, get_settings
from service.logs import current_job_id
from service.spec import JobSpec
from service.tabular import Table
from worker import sweep_hooks
from worker.observability import BUSY, JOB_SECONDS, JOBS, SAMPLES_PER_SECOND
from worker.warmstart import WarmStart
from worker import writer_process
from worker.recorder import BackgroundWriter, JobRecorder, apply_here
from worker.writes import LeaseLost, owned_job, user_error, write_until_done
from service.workers import lease_owner
from worker.engine import FitResult, TrainingDiverged, fit, resolve_device

log = logging.getLogger(__name__)


@dataclass
class Claim:
    job_id: str
    tenant: str
    spec: dict[str, Any]
    data_info: dict[str, Any]
    attempts: int
    last_metrics: dict[str, float]
    fresh: bool  # never claimed before: no checkpoint to resume from, no points to replace
    sweep_id: str | None


_NOW = bindparam("now", type_=Job.__table__.c.started_at.type)
# The claim, in one statement: a job queued, or running on a lease that has expired (its worker was lost), not
# cancelled, with attempts left. `fresh` reads the new row: started_at equals this claim's time only where it was
# unset (the first claim sets it, nothing clears it; a hand-back keeps it and gives its attempt back).
_CLAIM = (
    update(Job)
    .where(Job.id == bindparam("job_id"), Job.cancel_requested == false(),
           Job.attempts < bindparam("max_attempts"),
           or_(Job.status == "queued",
               and_(Job.status == "running", or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= _NOW))))
    .values(status="running", attempts=Job.attempts + 1, lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("expires", type_=Job.__table__.c.lease_expires_at.type), heartbeat_at=_NOW,
            started_at=func.coalesce(Job.started_at, _NOW), error=None)
    .returning(Job.tenant, Job.spec, Job.data_info, Job.attempts, Job.last_metrics, Job.sweep_id,
               (Job.started_at == _NOW).label("fresh"))
)


def claim_job(session: Session, *, job_id: str, owner: str, settings: Settings) -> Claim | None:
    """Take the job's lease, or return None when there is nothing to do (finished, cancelled, leased)."""
    claim = _claim(session, job_id=job_id, owner=owner, settings=settings)
    if claim is not None:
        return claim
    # Not claimable: read it under a row lock to say why, and finish a cancelled or exhausted job.
    job = session.get(Job, job_id, with_for_update=True)
    now = utcnow()
    if job is None:
        log.warning("job.missing job_id=%s", job_id)
        return None
    if job.status in FINISHED_STATUSES:
        log.info("job.skip_finished job_id=%s status=%s", job_id, job.status)
        return None
    if job.cancel_requested:
        job.status, job.finished_at, job.lease_owner = "cancelled", now, None
        return None
    expires = job.lease_expires_at
    if job.status == "running" and expires is not None and _aware(expires) > now:
        log.info("job.duplicate_delivery job_id=%s lease_owner=%s", job_id, job.lease_owner)
        return None
    if job.attempts >= settings.max_attempts:
        job.status, job.finished_at = "failed", now
        job.error = f"gave up after {job.attempts} attempts (TRAINSERVE_MAX_ATTEMPTS={settings.max_attempts})"
        return None
    # Claimable again: another transaction changed it between the claim and the read (a reaper's hand-back).
    return _claim(session, job_id=job_id, owner=owner, settings=settings)


def _claim(session: Session, *, job_id: str, owner: str, settings: Settings) -> Claim | None:
    now = utcnow()
    row = session.execute(_CLAIM, {"job_id": job_id, "max_attempts": settings.max_attempts, "owner": owner,
                                   "expires": now + timedelta(seconds=settings.lease_seconds), "now": now}).first()
    if row is None:
        return None
    return Claim(job_id=job_id, tenant=row.tenant, spec=dict(row.spec), data_info=dict(row.data_info),
                 attempts=row.attempts, last_metrics=dict(row.last_metrics or {}), fresh=bool(row.fresh),
                 sweep_id=row.sweep_id)


def _aware(value: Any) -> Any:
    from datetime import timezone

    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# Trainings in this process, so a worker told to stop can hand their jobs back at the next step.
_active_heartbeats: set[Heartbeat] = set()
# Set for good once this process is told to stop: a job that starts afterwards (its claim raced the signal) is
# handed back at its first step too, instead of holding the shutdown for its whole run.
_draining = threading.Event()


def drain_all() -> None:
    """Warm shutdown (SIGTERM): every job trained here stops at its next step and goes back to the queue,
    instead of holding the shutdown for its whole run. Called from a signal handler: flags only, no I/O."""
    _draining.set()
    for heartbeat in list(_active_heartbeats):
        heartbeat.drain()


def _track(heartbeat: Heartbeat) -> None:
    """Make the training `heartbeat` watches drainable. Added before the flag is read, and drain_all sets the flag
    before it reads the set, so a signal at any moment in between still reaches this job."""
    _active_heartbeats.add(heartbeat)
    if _draining.is_set():
        heartbeat.drain()


class Heartbeat(threading.Thread):
    """Renews the lease and watches for cancellation and the run-time limit, so should_stop() is a flag read."""

    def __init__(self, *, job_id: str, owner: str, settings: Settings) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.owner, self.settings = job_id, owner, settings
        self.stop_training = threading.Event()
        self.reason: str | None = None
        self._done = threading.Event()
        self._started_at = time.monotonic()

    def run(self) -> None:
        # A cheap cancel check every cancel_poll_seconds, so a cancel lands within about a second; the lease
        # is renewed every heartbeat_seconds.
        next_beat = time.monotonic() + self.settings.heartbeat_seconds
        while not self._done.wait(min(self.settings.cancel_poll_seconds, self.settings.heartbeat_seconds)):
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.settings.heartbeat_seconds
                    self.beat()
                elif self._cancel_requested():
                    self._stop("cancelled")
            except Exception as exc:  # the database may be briefly away: keep training, try again
                log.warning("heartbeat.failed job_id=%s error=%s", self.job_id, exc.__class__.__name__)

    def _cancel_requested(self) -> bool:
        with session_scope(read_only=True) as session:  # no SQLite write lock: metric writes go on
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))

    def beat(self) -> None:
        def renew(session: Session) -> bool | None:
            now = utcnow()
            result = session.execute(
                update(Job).where(Job.id == self.job_id, Job.lease_owner == self.owner)
                .values(lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds), heartbeat_at=now)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                return None
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))

        cancel = with_retry(renew, attempts=2)
        if cancel is None:
            self._stop("lease_lost")
        elif cancel:
            self._stop("cancelled")
        elif time.monotonic() - self._started_at > self.settings.job_time_limit_seconds:
            self._stop("timeout")

    def drain(self) -> None:
        if self.reason is None:
            self.reason = "drained"
        self.stop_training.set()

    def _stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            log.info("job.stop_requested job_id=%s reason=%s", self.job_id, reason)
        self.stop_training.set()

    def close(self) -> None:
        self._done.set()


def _finish(job_id: str, owner: str, *, status: str, error: str | None = None) -> None:
    """The run's last write: it waits for the database however long it is away (a finished run is never lost)."""
    def write(session: Session, _retry: bool) -> None:
        job = owned_job(session, job_id, owner)
        job.status, job.error, job.finished_at = status, error, utcnow()
        job.lease_owner, job.lease_expires_at = None, None

    write_until_done(write, what="finish")
    log.info("job.%s job_id=%s", status, job_id)


def _hand_back(job_id: str, owner: str) -> None:
    """Back to the queue, to resume from its latest checkpoint on another worker, sent at once."""

    def write(session: Session) -> str:
        job = owned_job(session, job_id, owner)
        job.status, job.lease_owner, job.lease_expires_at, job.enqueued_at = "queued", None, None, None
        # Handed back, not lost: this delivery does not count against TRAINSERVE_MAX_ATTEMPTS.
        job.attempts = max(0, job.attempts - 1)
        return job.queue

    queue = with_retry(write)
    log.info("job.handed_back job_id=%s queue=%s: this worker is shutting down", job_id, queue)
    send_job(job_id, queue=queue)  # if the broker is down, the API's reaper sends it once it is back


def run_training(job_id: str, *, settings: Settings, worker_name: str | None = None) -> str | None:
    """The whole life of one delivery of a job. Returns the final status, or None when it did not run."""
    token = current_job_id.set(job_id)
    started = time.monotonic()
    BUSY.inc()
    try:
        status = _run_claimed(job_id, settings=settings, worker_name=worker_name or f"trainserve@{socket.gethostname()}")
    finally:
        BUSY.dec()
        SAMPLES_PER_SECOND.set(0)
        current_job_id.reset(token)
    if status is not None:
        JOBS.labels(status).inc()
        JOB_SECONDS.observe(time.monotonic() - started)
    return status


def _run_claimed(job_id: str, *, settings: Settings, worker_name: str) -> str | None:
    owner = lease_owner(worker_name, f"{os.getpid()}:{uuid.uuid4().hex[:8]}")
    claim = with_retry(lambda s: claim_job(s, job_id=job_id, owner=owner, settings=settings))
    if claim is None:
        return None
    log.info("job.started job_id=%s attempt=%d owner=%s", job_id, claim.attempts, owner)
    heartbeat = Heartbeat(job_id=job_id, owner=owner, settings=settings)
    heartbeat.start()
    _track(heartbeat)
    apply = writer_process.for_settings(db.current_settings()).apply if settings.writer == "process" else apply_here
    writer = BackgroundWriter(job_id=job_id, max_bytes=settings.writer_buffer_bytes, apply=apply)
    writer.start()
    try:
        result = _train(claim, owner=owner, heartbeat=heartbeat, writer=writer)
        writer.flush()  # every point and checkpoint is in before the job says it is done
        return _conclude(result, job_id=job_id, owner=owner, reason=heartbeat.reason, settings=settings)
    except LeaseLost:
        log.warning("job.lease_lost job_id=%s owner=%s: another worker has it", job_id, owner)
        return None
    except TrainingDiverged as exc:
        return _fail(job_id, owner, writer, error=str(exc))
    except Exception as exc:
        log.exception("job.crashed job_id=%s", job_id)
        return _fail(job_id, owner, writer, error=user_error(exc))
    finally:
        writer.close()
        _active_heartbeats.discard(heartbeat)
        heartbeat.close()


def _fail(job_id: str, owner: str, writer: BackgroundWriter, *, error: str) -> str | None:
    try:
        writer.flush()  # the points up to the failure are kept, in order
        _finish(job_id, owner, status="failed", error=error)
    except LeaseLost:
        return None
    except Exception:  # the writer itself failed (a bug): still record the failure
        _finish(job_id, owner, status="failed", error=error)
    return "failed"


def _train(claim: Claim, *, owner: str, heartbeat: Heartbeat, writer: BackgroundWriter) -> FitResult:
    job_id = claim.job_id
    spec = JobSpec.model_validate(claim.spec)
    info = DataInfo.from_json(claim.data_info)

    def dataset_loader(dataset_id: str) -> Table:
        return write_until_done(lambda s, _r: load_table(s, tenant=claim.tenant, dataset_id=dataset_id),
                                what="load dataset")

    # A fresh job starts from nothing: no transaction to find that out (two of them, a few ms of a short job).
    resume, resume_step = (None, 0) if claim.fresh else _prepare_resume(job_id, owner)
    warm = WarmStart.prepare(job_id, spec, resume=resume)  # init_from: source weights, statistics, frozen layers
    data = warm.load_data(spec, dataset_loader=dataset_loader)
    model = warm.apply(build_model(spec, info.input_shape))
    recorder = JobRecorder(job_id=job_id, owner=owner, spec=spec, writer=writer, start_step=resume_step,
                           last_metrics=claim.last_metrics)
    on_points = sweep_hooks.watch_pruning(job_id, recorder.points, writer=writer, sweep_id=claim.sweep_id,
                                          stop=lambda: heartbeat._stop("pruned"))
    return fit(model, spec, data, device=resolve_device(spec.training.device),
               on_points=on_points, on_checkpoint=recorder.checkpoint, on_progress=recorder.progress,
               should_stop=heartbeat.stop_training.is_set, resume=resume, init_optimizer=warm.init_optimizer,
               points_every_epoch=isinstance(on_points, sweep_hooks.PruneWatch))  # it decides at each epoch end


def _conclude(result: FitResult, *, job_id: str, owner: str, reason: str | None, settings: Settings) -> str:
    """The job's final status from how fit() ended and why it was told to stop."""
    if result.status != "cancelled":
        _finish(job_id, owner, status="succeeded")
        return "succeeded"
    if reason == "lease_lost":
        raise LeaseLost(job_id)
    if reason == "drained":
        _hand_back(job_id, owner)
        return "drained"
    if reason == "timeout":
        _finish(job_id, owner, status="failed", error=(
            f"timeout: the job ran longer than TRAINSERVE_JOB_TIME_LIMIT_SECONDS="
            f"{settings.job_time_limit_seconds}; its latest checkpoint is kept"))
        return "failed"
    if reason == "pruned":  # its sweep's pruner stopped it: metrics and checkpoints stay
        _finish(job_id, owner, status="pruned")
        return "pruned"
    _finish(job_id, owner, status="cancelled")
    return "cancelled"


def _prepare_resume(job_id: str, owner: str) -> tuple[tuple[bytes, bytes] | None, int]:
    """(weights, state) of the checkpoint to resume from, or None for a fresh start; and its step."""

    def read(session: Session, _retry: bool) -> tuple[tuple[bytes, bytes] | None, int]:
        job = owned_job(session, job_id, owner)
        found = load_resume_state(session, job=job)
        # Everything after the checkpoint we resume from is recomputed: drop those points now.
        drop_points_after(session, job_id=job_id, step=found[0].step if found else 0)
        if found is None:
            return None, 0
        ckpt, weights, state = found
        log.info("job.resuming job_id=%s from_step=%d", job_id, ckpt.step)
        return (weights, state), ckpt.step

    return write_until_done(read, what="resume")


# A shared task: it joins the workers' Celery app when that app is built (worker.celery_app includes this
# module), so importing the task bodies builds no app and touches no broker.
@shared_task(name=TRAIN_JOB, acks_late=True, ignore_result=True, bind=True)
def train_job(self: Any, job_id: str) -> str | None:
    status = run_training(job_id, settings=get_settings(), worker_name=self.request.hostname)
    sweep_hooks.after_job(job_id, status, settings=get_settings())  # a sweep's trial: ask for the next
    return status
