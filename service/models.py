"""SQLAlchemy tables: jobs, metric points, checkpoints, datasets and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "pruned")
# "pruned": a sweep trial its pruner stopped early; metrics and checkpoints stay, like a finished job's.
FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "pruned"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the key itself is never stored
    prefix: Mapped[str] = mapped_column(String(12))  # shown to people to tell keys apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Submission(Base):
    """A job deleted within the per-minute submission quota's window: the quota counts the jobs created in the
    window plus these, so deleting jobs cannot reset the count (and a submission writes no row of its own). Rows
    past the window are pruned."""

    __tablename__ = "submissions"
    __table_args__ = (Index("ix_submissions_tenant_created", "tenant", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_tenant_status", "tenant", "status"),  # the running-job quota, counted at each submit
        UniqueConstraint("sweep_id", "trial_number", name="uq_jobs_sweep_trial"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]]
    report: Mapped[dict[str, Any]]
    data_info: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # Set once the broker has accepted the job's task; the reaper re-sends queued jobs that never got there.
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)

    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    best_checkpoint_id: Mapped[str | None] = mapped_column(String(32), default=None)
    latest_checkpoint_id: Mapped[str | None] = mapped_column(String(32), default=None)
    last_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)

    # A sweep's trial: which sweep, and {"number", "params"}; unique per (sweep_id, trial_number).
    sweep_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("sweeps.id", ondelete="CASCADE"), default=None, index=True
    )
    trial_number: Mapped[int | None] = mapped_column(Integer, default=None)
    trial: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Sweep(Base):
    """A base spec, a search space and how to search it; its trials are jobs with this sweep_id."""

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_tenant_created", "tenant", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="running")
    spec: Mapped[dict[str, Any]]
    space: Mapped[dict[str, Any]]
    search: Mapped[dict[str, Any]]  # method, trials, parallel, seed
    objective: Mapped[dict[str, Any]]  # metric, mode
    pruner: Mapped[dict[str, Any]]  # type, min_epochs, reduction_factor
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class MetricPoint(Base):
    __tablename__ = "metric_points"
    __table_args__ = (
        UniqueConstraint("job_id", "name", "step", name="uq_metric_points_job_name_step"),
        Index("ix_metric_points_job_step", "job_id", "step"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[datetime]


class MetricSeries(Base):
    """Per (job, series): what the worker wrote, kept at write time so a downsampled read of a million points
    reads only the points it returns. `stride` is the step gap of a series written at a fixed interval (every
    point at first_step + stride * k); null when the gaps differ or are not known."""

    __tablename__ = "metric_series"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    first_step: Mapped[int] = mapped_column(Integer)
    last_step: Mapped[int] = mapped_column(Integer)
    stride: Mapped[int | None] = mapped_column(Integer, default=None)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_job_step", "job_id", "step"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    is_final: Mapped[bool] = mapped_column(Boolean, default=False)
    weights: Mapped[bytes] = mapped_column(LargeBinary)  # safetensors: the model's state_dict
    weights_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[bytes] = mapped_column(LargeBinary)  # safetensors: optimizer, scheduler, RNG, data order
    state_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_created", "tenant", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))
    n_rows: Mapped[int] = mapped_column(Integer)
    description: Mapped[dict[str, Any]]
    blob: Mapped[bytes] = mapped_column(LargeBinary)  # safetensors columns (service.tabular.Table)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A training worker that is up (or was, until last_seen_at): what the API tells queued jobs and /workers."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # Celery's node name: trainserve-PID@HOST
    hostname: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list[str]] = mapped_column(JSON)
    device: Mapped[str] = mapped_column(String(200))  # "cpu", or "cuda: <GPU name> x N"
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# --- the model registry (service.registry) --------------------------------------------------------------


class RegisteredModel(Base):
    """A tenant's named model: its versions each pin one checkpoint, its aliases name versions."""

    __tablename__ = "registered_models"
    __table_args__ = (
        UniqueConstraint("tenant", "name", name="uq_registered_models_tenant_name"),
        Index("ix_registered_models_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """Version N of a model: an immutable pin of (job, checkpoint) with the signature it was registered with."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
        Index("ix_model_versions_job", "job_id"),
        Index("ix_model_versions_checkpoint", "checkpoint_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(String(32), ForeignKey("registered_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    # No foreign keys to jobs/checkpoints: a registered job cannot be deleted (409) and retention skips the pin.
    job_id: Mapped[str] = mapped_column(String(32))
    checkpoint_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    __tablename__ = "model_aliases"

    model_id: Mapped[str] = mapped_column(String(32), ForeignKey("registered_models.id", ondelete="CASCADE"),
                                          primary_key=True)
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
