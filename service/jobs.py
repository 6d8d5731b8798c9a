"""Job use cases: validate, submit, read, list, cancel, delete, and putting lost jobs back in the queue."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import psycopg
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.sql.compiler import SQLCompiler

from service.auth import tenant_of
from service.datainfo import DataInfo, DataSpecError, describe_data
from service.datasets import get_dataset_or_raise
from service.db import driver_errors_as_sqlalchemy
from service.errors import JobNotFound, QuotaExceeded, SpecError, StateConflict, Unauthorized, validation_items
from service.metrics import finite_or_none, read_points_page
from service.models import FINISHED_STATUSES, ApiKey, Checkpoint, Job, Submission, utcnow
from service.nets import Issue, Limits, SpecReport, check_spec
from service.pagination import newest_first_page
from service.queue import queue_for_device
from service.registry import versions_of_job
from service.schemas import BestCheckpoint, JobPage, JobRead, MetricsPage, Progress, TrialRef
from service.settings import Settings, get_settings
from service.spec import JobSpec
from service.tabular import DatasetDescription
from service.warmstart import check_warm_start
from service.workers import QueueView

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    data: DataInfo | None
    report: dict[str, Any]  # service.schemas.ValidationReport's shape

    @property
    def ok(self) -> bool:
        return bool(self.report["ok"])


def _failed_report(errors: list[dict[str, str]]) -> dict[str, Any]:
    return {"ok": False, "errors": errors, "warnings": [], "layers": []}


def analyse_spec(session: Session, *, tenant: str, spec: JobSpec, settings: Settings) -> Analysis:
    """The static check: data shapes first, then the layer stack against them."""
    dataset: DatasetDescription | None = None
    if spec.data.source == "dataset":
        try:
            row = get_dataset_or_raise(session, tenant=tenant, dataset_id=spec.data.dataset_id)
        except Exception:
            return Analysis(None, _failed_report([{"loc": "data.dataset_id",
                                                   "msg": f"dataset {spec.data.dataset_id} not found"}]))
        dataset = DatasetDescription.from_json(row.description)
        if spec.data.validation_dataset_id is not None:
            try:
                get_dataset_or_raise(session, tenant=tenant, dataset_id=spec.data.validation_dataset_id)
            except Exception:
                return Analysis(None, _failed_report([{"loc": "data.validation_dataset_id",
                                                       "msg": f"dataset {spec.data.validation_dataset_id} not found"}]))
    try:
        data = describe_data(spec, dataset=dataset)
    except DataSpecError as exc:
        return Analysis(None, _failed_report([{"loc": exc.loc, "msg": exc.msg}]))
    report: SpecReport = check_spec(spec, data, limits=Limits.from_settings(settings))
    return Analysis(data, check_warm_start(session, tenant=tenant, spec=spec, data=data, report=report.to_json()))


def validate_payload(session: Session, *, tenant: str, payload: Any, settings: Settings) -> dict[str, Any]:
    """POST /jobs/validate: structural and shape problems alike come back in the report."""
    try:
        spec = JobSpec.model_validate(payload)
    except ValidationError as exc:
        return _failed_report(validation_items(exc.errors()))
    return analyse_spec(session, tenant=tenant, spec=spec, settings=settings).report


def _issues_detail(errors: list[dict[str, str]]) -> str:
    head = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"the spec has {len(errors)} problem{'s' if len(errors) != 1 else ''}: {head}{more}"


QUOTA_WINDOW = timedelta(minutes=1)


# Built once: building and keying a statement costs more than running it, on the path of every submission.
_QUOTA_COUNTS = select(
    select(func.count()).select_from(Job).where(Job.tenant == bindparam("tenant"),
                                                Job.status.in_(("queued", "running"))).scalar_subquery(),
    select(func.count()).select_from(Job).where(Job.tenant == bindparam("tenant"),
                                                Job.created_at >= bindparam("since")).scalar_subquery(),
    select(func.count()).select_from(Submission).where(Submission.tenant == bindparam("tenant"),
                                                       Submission.created_at >= bindparam("since")).scalar_subquery(),
    # The request's key, still the tenant's and not revoked (1) or not (0): read with the counts, no extra trip.
    select(func.count()).select_from(ApiKey).where(ApiKey.key_hash == bindparam("digest"),
                                                   ApiKey.tenant == bindparam("tenant"),
                                                   ApiKey.revoked_at.is_(None)).scalar_subquery(),
)


def _locked_quota_counts(session: Session, params: dict[str, Any]) -> tuple[int, int, int, int]:
    """_QUOTA_COUNTS read under a per-tenant lock: count-then-insert must not interleave between two submissions
    of one tenant. SQLite's BEGIN IMMEDIATE already serialises writers. PostgreSQL takes a lock per tenant, held
    until this transaction ends, and the transaction's BEGIN, the lock and the counts travel in one round trip
    (psycopg's pipeline): the server runs them in order, so the counts read after the lock is granted."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        active, created, deleted, key_valid = session.execute(_QUOTA_COUNTS, params).one()
        return active, created, deleted, key_valid
    lock = {"key": "trainserve.quota:" + params["tenant"]}
    driver: Any = connection.connection.driver_connection  # a psycopg Connection
    if not psycopg.Pipeline.is_supported():  # libpq before 14: the same statements, one round trip each
        connection.exec_driver_sql(_QUOTA_LOCK_SQL, lock)
        active, created, deleted, key_valid = session.execute(_QUOTA_COUNTS, params).one()
        return active, created, deleted, key_valid
    counts = _compiled_for(connection.dialect).construct_expanded_state(params)
    # An outage raised as for any statement: the request answers 503 with Retry-After.
    with driver_errors_as_sqlalchemy(connection, counts.statement, counts.parameters):
        with driver.pipeline():
            driver.execute(_QUOTA_LOCK_SQL, lock)
            cursor = driver.execute(counts.statement, counts.parameters)
        row = cursor.fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


_QUOTA_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext(%(key)s))"


@functools.cache
def _compiled_for(dialect: Dialect) -> SQLCompiler:
    return _QUOTA_COUNTS.compile(dialect=dialect)


def _enforce_quotas(session: Session, *, tenant: str, settings: Settings, key_digest: str | None = None) -> None:
    """Both per-tenant limits from one read (after the lock): the jobs queued or running, and the submissions of
    the last minute: the jobs created in it, and those of them deleted since (`delete_jobs` keeps a row for each;
    older rows are only history, the reaper deletes them). With `key_digest`, the same read checks that the
    request's key is still valid (401 if it was revoked since the request's early check)."""
    active, created, deleted, key_valid = _locked_quota_counts(session, {
        "tenant": tenant, "since": utcnow() - QUOTA_WINDOW, "digest": key_digest or ""})
    if key_digest is not None and not key_valid:
        raise Unauthorized("invalid or revoked API key")
    recent = created + deleted
    if active >= settings.max_running_jobs_per_tenant:
        raise QuotaExceeded(
            f"{active} jobs are queued or running, the limit is {settings.max_running_jobs_per_tenant}; "
            "wait for one to finish or cancel one", retry_after=10)
    if recent >= settings.max_submissions_per_minute:
        raise QuotaExceeded(
            f"{recent} jobs submitted in the last minute, the limit is {settings.max_submissions_per_minute}",
            retry_after=60)


def _check_key(session: Session, *, tenant: str, key_digest: str | None) -> None:
    """The key check the quota read does, for the answers given before it (a replay, a spec error)."""
    if key_digest is not None and tenant_of(session, key_digest) != tenant:
        raise Unauthorized("invalid or revoked API key")


def forget_old_submissions(session: Session) -> int:
    """The reaper's pass: submissions older than the quota window no longer count for anything."""
    result = session.execute(delete(Submission).where(Submission.created_at < utcnow() - QUOTA_WINDOW))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def submit_job(session: Session, *, tenant: str, spec: JobSpec, idempotency_key: str | None,
               settings: Settings, trial_of: tuple[str, int, dict[str, Any]] | None = None,
               enqueued_at: datetime | None = None, key_digest: str | None = None) -> tuple[Job, bool]:
    """Store a checked job as queued. Returns (job, created); the caller enqueues after commit when created.

    trial_of = (sweep_id, number, trial) stores it as that sweep's trial (service.sweeps). enqueued_at, when the
    caller will send the job right after the commit, goes into the job's insert (no second write to mark it sent).
    key_digest: the submitting request's key hash, checked again under the quota lock (service.auth).
    """
    if idempotency_key:
        existing = session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == idempotency_key))
        if existing is not None:
            _check_key(session, tenant=tenant, key_digest=key_digest)
            return existing, False
    analysis = analyse_spec(session, tenant=tenant, spec=spec, settings=settings)
    if not analysis.ok or analysis.data is None:
        _check_key(session, tenant=tenant, key_digest=key_digest)
        raise SpecError(_issues_detail(analysis.report["errors"]), analysis.report["errors"])
    _enforce_quotas(session, tenant=tenant, settings=settings, key_digest=key_digest)
    report = analysis.report
    trial = {} if trial_of is None else dict(zip(("sweep_id", "trial_number", "trial"), trial_of))
    job = _new_job(
        tenant=tenant,
        name=spec.name,
        status="queued",
        spec=spec.model_dump(mode="json"),
        report=report,
        data_info=analysis.data.to_json(),
        queue=queue_for_device(spec.training.device),
        idempotency_key=idempotency_key,
        enqueued_at=enqueued_at,
        total_steps=int(report.get("total_steps") or 0),
        epochs=int(spec.training.epochs or 0) or _epochs_from_report(report),
        last_metrics={},
        **trial,
    )
    try:
        _insert(session, job)
    except IntegrityError:
        # Two submissions with the same key raced: the other one won, answer with its job.
        session.rollback()
        if not idempotency_key:  # another unique rule (a sweep's trial number): the caller decides
            raise
        existing = session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return existing, False
    log.info("job.submitted job_id=%s tenant=%s params=%s", job.id, tenant, report.get("total_params"))
    return job, True


_JOB_COLUMNS = tuple(column.key for column in Job.__table__.columns)
_INSERT_JOB = insert(cast(Table, Job.__table__))


def _new_job(**values: Any) -> Job:
    """A job with every column set, as the INSERT will store it: `values`, else the column's default."""
    for column in Job.__table__.columns:
        if column.key not in values:
            default = column.default
            # A callable default is wrapped by SQLAlchemy to take the execution context, unused by ours.
            values[column.key] = (None if default is None else default.arg(None) if default.is_callable
                                  else default.arg)  # type: ignore[attr-defined]
    return Job(**values)


def _insert(session: Session, job: Job) -> None:
    """INSERT the job as one Core statement, then hold it in the session as the stored row it now is (later
    changes to it are UPDATEs). The ORM's flush would do the same with a unit of work around it: 0.2 ms more on
    every submission."""
    session.execute(_INSERT_JOB, {key: getattr(job, key) for key in _JOB_COLUMNS})
    make_transient_to_detached(job)
    session.add(job)


def _epochs_from_report(report: dict[str, Any]) -> int:
    steps, per_epoch = int(report.get("total_steps") or 0), int(report.get("steps_per_epoch") or 1)
    return -(-steps // per_epoch) if steps else 0


def get_job_or_raise(session: Session, *, tenant: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant != tenant:
        raise JobNotFound(job_id)
    return job


def list_jobs(session: Session, *, tenant: str, status: str | None, limit: int, cursor: str | None,
              settings: Settings, sweep_id: str | None = None) -> JobPage:
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    if sweep_id:
        query = query.where(Job.sweep_id == sweep_id)
    page, next_cursor = newest_first_page(session, query, Job, limit=limit, cursor=cursor)
    view = QueueView.read(session, settings=settings) if any(job.status == "queued" for job in page) else None
    return JobPage(items=[job_read(session, job, full=False, view=view) for job in page], next_cursor=next_cursor)


def cancel_job(session: Session, *, tenant: str, job_id: str) -> Job:
    """A queued job is cancelled at once, a running one is asked to stop (within cancel_poll_seconds)."""
    job = get_job_or_raise(session, tenant=tenant, job_id=job_id)
    if job.status in FINISHED_STATUSES:
        raise StateConflict(f"job {job_id} is already {job.status}")
    job.cancel_requested = True
    if job.status == "queued":
        # Never started: a worker that receives it later sees the status and exits.
        job.status = "cancelled"
        job.finished_at = utcnow()
    log.info("job.cancel_requested job_id=%s status=%s", job_id, job.status)
    return job


def cancel_and_read_job(session: Session, *, tenant: str, job_id: str, settings: Settings) -> JobRead:
    """POST /jobs/{id}/cancel: cancel_job, committed before the answer (the client's next read sees it)."""
    job = cancel_job(session, tenant=tenant, job_id=job_id)
    session.commit()
    return job_read(session, job, settings=settings)


def read_job_metrics(session: Session, *, tenant: str, job_id: str, names: list[str] | None,
                     since_step: int | None, max_points: int | None, settings: Settings) -> MetricsPage:
    """GET /jobs/{id}/metrics: one bounded page of the job's points (see metrics.read_points_page)."""
    job = get_job_or_raise(session, tenant=tenant, job_id=job_id)
    points, next_since_step = read_points_page(session, job_id=job.id, names=names, since_step=since_step,
                                               max_points=max_points, limit=settings.max_metric_points_per_read)
    last = max((p.step for p in points), default=since_step or 0)
    return MetricsPage(job_id=job.id, status=job.status, last_step=last,  # type: ignore[arg-type]
                       points=points, next_since_step=next_since_step)


def delete_job(session: Session, *, tenant: str, job_id: str) -> None:
    job = get_job_or_raise(session, tenant=tenant, job_id=job_id)
    if job.status not in FINISHED_STATUSES:
        raise StateConflict(f"job {job_id} is {job.status}; cancel it before deleting it")
    registered = versions_of_job(session, job_id=job.id)
    if registered:
        raise StateConflict(f"job {job_id} has registered model versions: {', '.join(registered)}; "
                            "a version pins its checkpoint, so the job cannot be deleted")
    delete_jobs(session, Job.id == job.id)
    log.info("job.deleted job_id=%s", job_id)


def delete_jobs(session: Session, which: ColumnElement[bool]) -> None:
    """Delete the jobs `which` selects (their metrics and checkpoints go with them). Those created within the quota
    window leave a submission row behind, so deleting jobs cannot reset the per-minute count."""
    session.execute(insert(Submission).from_select(
        ["tenant", "created_at"],
        select(Job.tenant, Job.created_at).where(which, Job.created_at >= utcnow() - QUOTA_WINDOW)))
    session.execute(delete(Job).where(which))


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def job_progress(job: Job) -> Progress:
    fraction = min(1.0, job.step / job.total_steps) if job.total_steps else 0.0
    if job.status == "succeeded":
        fraction = 1.0
    eta: float | None = None
    started = _as_utc(job.started_at)
    if job.status == "running" and started is not None and 0 < fraction < 1:
        elapsed = (utcnow() - started).total_seconds()
        eta = round(elapsed * (1 - fraction) / fraction, 1)
    return Progress(epoch=job.epoch, epochs=job.epochs, step=job.step, total_steps=job.total_steps,
                    fraction=round(fraction, 4), eta_seconds=eta)


def job_read(session: Session, job: Job, *, full: bool = True, view: QueueView | None = None,
             settings: Settings | None = None) -> JobRead:
    """The job as the API shows it; a queued job also says what it waits for (one extra read, or `view`'s)."""
    best: BestCheckpoint | None = None
    if job.best_checkpoint_id:
        # Only the columns the answer needs: the blobs stay in the database.
        row = session.execute(
            select(Checkpoint.id, Checkpoint.metric, Checkpoint.value, Checkpoint.step)
            .where(Checkpoint.id == job.best_checkpoint_id)
        ).first()
        if row is not None:
            best = BestCheckpoint(checkpoint_id=row.id, metric=row.metric, value=row.value, step=row.step)
    return JobRead(
        id=job.id,
        name=job.name,
        status=job.status,  # type: ignore[arg-type]
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts,
        error=job.error,
        cancel_requested=job.cancel_requested,
        device=str(job.spec.get("training", {}).get("device", "auto")),
        queue=job.queue,
        waiting_reason=_waiting_reason(session, job, view, settings),
        progress=job_progress(job),
        best=best,
        latest_checkpoint_id=job.latest_checkpoint_id,
        last_metrics={k: _finite_or_none(v) for k, v in (job.last_metrics or {}).items()},
        spec=job.spec if full else None,
        report=job.report if full else None,
        sweep_id=job.sweep_id,
        trial=TrialRef(number=job.trial["number"], params=job.trial["params"]) if job.trial else None,
    )


def _finite_or_none(value: Any) -> float | None:
    # A job stored before non-finite values were written as null may still hold one (SQLite kept -Infinity).
    return None if value is None else finite_or_none(value)


def _waiting_reason(session: Session, job: Job, view: QueueView | None, settings: Settings | None) -> str | None:
    if job.status != "queued":
        return None
    return (view or QueueView.read(session, settings=settings or get_settings())).waiting_reason(job)


def reap_expired_leases(session: Session, *, settings: Settings) -> list[tuple[str, str]]:
    """Running jobs whose worker stopped renewing the lease go back to the queue (or fail after the cap).

    Returns (job_id, queue) pairs to enqueue once this transaction has committed.
    """
    now = utcnow()
    expired = list(session.scalars(
        select(Job).where(Job.status == "running", Job.lease_expires_at < now).with_for_update(skip_locked=True)
    ))
    requeue: list[tuple[str, str]] = []
    for job in expired:
        if job.cancel_requested:
            job.status, job.finished_at, job.lease_owner = "cancelled", now, None
        elif job.attempts >= settings.max_attempts:
            job.status, job.finished_at, job.lease_owner = "failed", now, None
            job.error = (f"the worker running this job was lost {job.attempts} times "
                         f"(TRAINSERVE_MAX_ATTEMPTS={settings.max_attempts}); last lease owner {job.lease_owner}")
        else:
            job.status, job.lease_owner, job.enqueued_at = "queued", None, None
            requeue.append((job.id, job.queue))
        log.warning("job.lease_expired job_id=%s attempts=%d now=%s", job.id, job.attempts, job.status)
    return requeue


ENQUEUE_GRACE_SECONDS = 5


def unsent_jobs(session: Session) -> list[tuple[str, str]]:
    """Queued jobs the broker never accepted (it was down at submit time): (job_id, queue) pairs to send again."""
    cutoff = utcnow() - timedelta(seconds=ENQUEUE_GRACE_SECONDS)
    rows = session.execute(
        select(Job.id, Job.queue).where(Job.status == "queued", Job.enqueued_at.is_(None), Job.created_at < cutoff)
    ).all()
    return [(row.id, row.queue) for row in rows]


def mark_enqueued(session: Session, *, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


__all__ = [
    "Analysis", "Issue", "analyse_spec", "validate_payload", "submit_job", "get_job_or_raise", "list_jobs",
    "cancel_job", "cancel_and_read_job", "read_job_metrics", "delete_job", "job_read", "job_progress", "reap_expired_leases",
]
