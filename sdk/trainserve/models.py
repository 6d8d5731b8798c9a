"""Typed views of the server's answers (docs/api.md): jobs, reports, metric points, checkpoints, datasets.

Every model ignores fields it does not know, so a newer server never breaks an older client.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "pruned"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class Problem(_Answer):
    loc: str = ""
    msg: str = ""


class LayerReport(_Answer):
    index: int
    type: str
    output_shape: list[int] | None = None
    params: int = 0
    flops: int | None = None


class Report(_Answer):
    """The static check of a spec, as ``POST /jobs/validate`` returns it."""

    ok: bool
    errors: list[Problem] = Field(default_factory=list)
    warnings: list[Problem] = Field(default_factory=list)
    input_shape: list[int] | None = None
    output_shape: list[int] | None = None
    layers: list[LayerReport] = Field(default_factory=list)
    total_params: int | None = None
    trainable_params: int | None = None
    flops_per_sample: int | None = None
    memory_bytes: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None


class Progress(_Answer):
    epoch: int = 0
    epochs: int | None = None
    step: int = 0
    total_steps: int | None = None
    fraction: float = 0.0
    eta_seconds: float | None = None


class Best(_Answer):
    checkpoint_id: str | None = None
    metric: str | None = None
    value: float | None = None
    step: int | None = None


class Job(_Answer):
    id: str
    name: str | None = None
    status: str
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    error: str | None = None
    cancel_requested: bool = False
    device: str | None = None
    queue: str | None = None
    waiting_reason: str | None = None  # only while queued: why it has not started yet
    progress: Progress = Field(default_factory=Progress)
    best: Best | None = None
    latest_checkpoint_id: str | None = None
    last_metrics: dict[str, float | None] = Field(default_factory=dict)  # None: not finite
    spec: dict[str, Any] | None = None
    report: Report | None = None

    @property
    def finished(self) -> bool:
        """True once the job reached succeeded, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


class MetricPoint(_Answer):
    name: str
    step: int
    epoch: int | None = None
    value: float | None  # None: the value was not finite (inf, -inf or NaN)
    time: datetime | None = None


class Metrics(_Answer):
    """One ``GET /jobs/{id}/metrics`` answer; ``last_step`` is the cursor for the next poll."""

    job_id: str
    status: str | None = None
    last_step: int | None = None
    points: list[MetricPoint] = Field(default_factory=list)
    next_since_step: int | None = None  # set when the server stopped at its per-read cap: read on from here


class Checkpoint(_Answer):
    id: str
    step: int
    epoch: int | None = None
    metric: str | None = None
    value: float | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    created_at: datetime | None = None
    is_best: bool = False
    is_latest: bool = False


class Column(_Answer):
    name: str
    dtype: str | None = None
    n_unique: int | None = None


class Dataset(_Answer):
    id: str
    name: str | None = None
    format: str | None = None
    n_rows: int | None = None
    size_bytes: int | None = None
    columns: list[Column] = Field(default_factory=list)
    target: list[str] = Field(default_factory=list)
    created_at: datetime | None = None


class WorkerInfo(_Answer):
    """A live training worker, as GET /workers lists it."""

    name: str
    hostname: str
    queues: list[str]
    device: str
    concurrency: int = 1
    started_at: datetime | None = None
    last_seen_at: datetime | None = None
    running_jobs: int = 0


class Prediction(_Answer):
    """``POST /predict``: ``predictions`` are rows of values (regressors) or class labels (classifiers)."""

    job_id: str
    checkpoint_id: str | None = None
    predictions: list[Any]
    classes: list[Any] | None = None
    probabilities: list[list[float]] | None = None
