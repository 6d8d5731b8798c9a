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

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.checkpoints import load_resume_state, record_checkpoint
from service.datainfo import DataInfo
from service.datasets import load_table
from service.db import session_scope, with_retry
from service.jobs import mark_enqueued
from service.metrics import drop_points_after, record_points
from service.models import FINISHED_STATUSES, Job, utcnow
from service.nets import build_model
from service.queue import TRAIN_JOB
from service.settings import Settings, get_settings
from service.logs import current_job_id
from service.spec import JobSpec
from service.tabular import Table
from worker.celery_app import app
from worker.data import load_data
from worker.observability import BUSY, JOB_SECONDS, JOBS, SAMPLES_PER_SECOND, STEPS
from service.workers import lease_owner
from worker.engine import CheckpointBlob, Point, Progress, TrainingDiverged, fit, resolve_device

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """Another worker owns this job now (our lease ran out): stop without writing anything more."""


@dataclass
class Claim:
    job_id: str
    tenant: str
    spec: dict[str, Any]
    data_info: dict[str, Any]
    attempts: int
    last_metrics: dict[str, float]


def claim_job(session: Session, *, job_id: str, owner: str, settings: Settings) -> Claim | None:
    """Take the job's lease, or return None when there is nothing to do (finished, cancelled, leased)."""
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
    job.status = "running"
    job.attempts += 1
    job.lease_owner = owner
    job.lease_expires_at = now + timedelta(seconds=settings.lease_seconds)
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.error = None
    return Claim(job_id=job.id, tenant=job.tenant, spec=dict(job.spec), data_info=dict(job.data_info),
                 attempts=job.attempts, last_metrics=dict(job.last_metrics or {}))


def _aware(value: Any) -> Any:
    from datetime import timezone

    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _owned_job(session: Session, job_id: str, owner: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.lease_owner != owner:
        raise LeaseLost(job_id)
    return job


# Trainings in this process, so a worker told to stop can hand their jobs back at the next step.
_active_heartbeats: set[Heartbeat] = set()


def drain_all() -> None:
    """Warm shutdown (SIGTERM): every job trained here stops at its next step and goes back to the queue,
    instead of holding the shutdown for its whole run. Called from a signal handler: flags only, no I/O."""
    for heartbeat in list(_active_heartbeats):
        heartbeat.drain()


def _update_owned(session: Session, job_id: str, owner: str, **values: Any) -> None:
    """Write columns of a job we hold the lease of, without loading the row (its spec and report are large)."""
    result = session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(**values))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise LeaseLost(job_id)


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


class JobRecorder:
    """fit()'s callbacks: each writes in its own short transaction, and only while we hold the lease."""

    def __init__(self, *, job_id: str, owner: str, spec: JobSpec, start_step: int = 0,
                 last_metrics: dict[str, float] | None = None) -> None:
        self.job_id, self.owner, self.spec = job_id, owner, spec
        self.last_step = start_step  # a resumed run's steps count from its checkpoint
        # Only the lease holder writes last_metrics, so this copy is the truth: no read before each write.
        self.last_metrics = dict(last_metrics or {})

    def points(self, points: list[Point]) -> None:
        # Plain dicts, not dataclasses.asdict (which deep-copies field by field: 13 us a point).
        rows = [{"name": p.name, "step": p.step, "epoch": p.epoch, "value": p.value, "time": p.time} for p in points]
        last = dict(self.last_metrics)
        for p in points:
            last[p.name] = p.value
            if p.name == "samples_per_s":
                SAMPLES_PER_SECOND.set(p.value)

        def write(session: Session) -> None:
            _update_owned(session, self.job_id, self.owner, last_metrics=last)  # checks the lease first
            record_points(session, job_id=self.job_id, points=rows)

        with_retry(write)
        self.last_metrics = last

    def progress(self, progress: Progress) -> None:
        STEPS.inc(max(0, progress.step - self.last_step))
        self.last_step = progress.step
        with_retry(lambda session: _update_owned(session, self.job_id, self.owner, epoch=progress.epoch,
                                                 step=progress.step, total_steps=progress.total_steps,
                                                 epochs=progress.epochs))

    def checkpoint(self, blob: CheckpointBlob) -> None:
        policy = self.spec.training.checkpoint

        def write(session: Session) -> None:
            job = _owned_job(session, self.job_id, self.owner)
            record_checkpoint(session, job=job, step=blob.step, epoch=blob.epoch, metric=blob.monitor,
                              value=blob.monitor_value, weights=blob.weights, state=blob.state,
                              is_final=blob.is_final, keep_last=policy.keep_last, keep_best=policy.keep_best,
                              mode=policy.mode)
            job.epoch, job.step = blob.epoch, blob.step

        with_retry(write)


def _finish(job_id: str, owner: str, *, status: str, error: str | None = None) -> None:
    def write(session: Session) -> None:
        job = _owned_job(session, job_id, owner)
        job.status, job.error, job.finished_at = status, error, utcnow()
        job.lease_owner, job.lease_expires_at = None, None

    with_retry(write)
    log.info("job.%s job_id=%s", status, job_id)


def _hand_back(job_id: str, owner: str) -> None:
    """Back to the queue, to resume from its latest checkpoint on another worker, sent at once."""

    def write(session: Session) -> str:
        job = _owned_job(session, job_id, owner)
        job.status, job.lease_owner, job.lease_expires_at, job.enqueued_at = "queued", None, None, None
        # Handed back, not lost: this delivery does not count against TRAINSERVE_MAX_ATTEMPTS.
        job.attempts = max(0, job.attempts - 1)
        return job.queue

    queue = with_retry(write)
    log.info("job.handed_back job_id=%s queue=%s: this worker is shutting down", job_id, queue)
    try:
        app.send_task(TRAIN_JOB, args=[job_id], queue=queue)
        with_retry(lambda s: mark_enqueued(s, job_id=job_id))
    except Exception as exc:  # the API's reaper sends queued jobs the broker never got
        log.warning("job.hand_back_send_failed job_id=%s error=%s", job_id, exc)


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
    _active_heartbeats.add(heartbeat)
    try:
        spec = JobSpec.model_validate(claim.spec)
        info = DataInfo.from_json(claim.data_info)

        def dataset_loader(dataset_id: str) -> Table:
            return with_retry(lambda s: load_table(s, tenant=claim.tenant, dataset_id=dataset_id))

        data = load_data(spec, dataset_loader=dataset_loader)
        model = build_model(spec, info.input_shape)
        resume, resume_step = _prepare_resume(job_id, owner)
        recorder = JobRecorder(job_id=job_id, owner=owner, spec=spec, start_step=resume_step,
                               last_metrics=claim.last_metrics)
        result = fit(model, spec, data, device=resolve_device(spec.training.device),
                     on_points=recorder.points, on_checkpoint=recorder.checkpoint, on_progress=recorder.progress,
                     should_stop=heartbeat.stop_training.is_set, resume=resume)
        if result.status == "cancelled":
            if heartbeat.reason == "lease_lost":
                raise LeaseLost(job_id)
            if heartbeat.reason == "drained":
                _hand_back(job_id, owner)
                return "drained"
            if heartbeat.reason == "timeout":
                _finish(job_id, owner, status="failed", error=(
                    f"timeout: the job ran longer than TRAINSERVE_JOB_TIME_LIMIT_SECONDS="
                    f"{settings.job_time_limit_seconds}; its latest checkpoint is kept"))
                return "failed"
            _finish(job_id, owner, status="cancelled")
            return "cancelled"
        _finish(job_id, owner, status="succeeded")
        return "succeeded"
    except LeaseLost:
        log.warning("job.lease_lost job_id=%s owner=%s: another worker has it", job_id, owner)
        return None
    except TrainingDiverged as exc:
        _finish(job_id, owner, status="failed", error=str(exc))
        return "failed"
    except Exception as exc:
        log.exception("job.crashed job_id=%s", job_id)
        _finish(job_id, owner, status="failed", error=f"{exc.__class__.__name__}: {exc}")
        return "failed"
    finally:
        _active_heartbeats.discard(heartbeat)
        heartbeat.close()


def _prepare_resume(job_id: str, owner: str) -> tuple[tuple[bytes, bytes] | None, int]:
    """(weights, state) of the checkpoint to resume from, or None for a fresh start; and its step."""

    def read(session: Session) -> tuple[tuple[bytes, bytes] | None, int]:
        job = _owned_job(session, job_id, owner)
        found = load_resume_state(session, job=job)
        # Everything after the checkpoint we resume from is recomputed: drop those points now.
        drop_points_after(session, job_id=job_id, step=found[0].step if found else 0)
        if found is None:
            return None, 0
        ckpt, weights, state = found
        log.info("job.resuming job_id=%s from_step=%d", job_id, ckpt.step)
        return (weights, state), ckpt.step

    return with_retry(read)


@app.task(name=TRAIN_JOB, acks_late=True, ignore_result=True, bind=True)
def train_job(self: Any, job_id: str) -> str | None:
    return run_training(job_id, settings=get_settings(), worker_name=self.request.hostname)
