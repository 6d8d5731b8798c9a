"""Typed views of the server's answers (docs/api.md): jobs, reports, metric points, checkpoints, datasets,
registered models.

Every model ignores fields it does not know, so a newer server never breaks an older client.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "pruned"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "pruned"})  # pruned: a sweep trial


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
    # A warm start's source (job_id, checkpoint_id, model) and its loaded / skipped tensors and frozen layers.
    init_from: dict[str, Any] | None = None


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
    sweep_id: str | None = None  # a sweep's trial: its sweep, and trial = {"number", "params"}
    trial: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """True once the job reached succeeded, failed, cancelled or (a sweep's trial) pruned."""
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


# --- the model registry ---------------------------------------------------------------------------------


class SignatureInputs(_Answer):
    shape: list[int] = Field(default_factory=list)
    features: list[str] | None = None


class SignatureOutputs(_Answer):
    kind: Literal["classes", "values"] | str = "values"
    classes: list[str] | None = None
    targets: list[str] | None = None


class Signature(_Answer):
    """What a model version takes (values per row, feature names) and gives (classes or values)."""

    inputs: SignatureInputs
    outputs: SignatureOutputs


class ModelVersion(_Answer):
    """One registered version: it pins one checkpoint of one job, forever."""

    model: str
    version: int
    job_id: str
    checkpoint_id: str
    created_at: datetime | None = None
    aliases: list[str] = Field(default_factory=list)
    signature: Signature | None = None


class ModelSummary(_Answer):
    name: str
    created_at: datetime | None = None
    latest_version: int | None = None
    aliases: dict[str, int] = Field(default_factory=dict)


class Model(ModelSummary):
    """A named model with every version (newest first) and its aliases (alias -> version)."""

    versions: list[ModelVersion] = Field(default_factory=list)


class Alias(_Answer):
    alias: str
    version: int


# --- sweeps and comparing runs (client.sweeps, client.jobs.compare) -------------------------------------

SWEEP_TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class SweepBest(_Answer):
    job_id: str
    params: dict[str, Any] = Field(default_factory=dict)
    value: float


class SweepTrial(_Answer):
    """One trial: a job with its params, status, objective (its best epoch-end value so far) and epochs done."""

    number: int
    job_id: str
    params: dict[str, Any] = Field(default_factory=dict)
    status: str
    value: float | None = None
    epochs: int = 0


class Sweep(_Answer):
    """A sweep: a base spec, a search space and its trials (ordinary jobs), with the best trial so far."""

    id: str
    name: str | None = None
    status: str
    created_at: datetime | None = None
    finished_at: datetime | None = None
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)  # method, trials, parallel, seed
    objective: dict[str, Any] = Field(default_factory=dict)  # metric, mode
    pruner: dict[str, Any] = Field(default_factory=dict)  # type, min_epochs, reduction_factor, startup_trials
    counts: dict[str, int] = Field(default_factory=dict)  # trials per status
    best: SweepBest | None = None
    trials: list[SweepTrial] = Field(default_factory=list)
    spec: dict[str, Any] | None = None  # absent from list pages

    @property
    def finished(self) -> bool:
        """True once the sweep succeeded, failed or was cancelled."""
        return self.status in SWEEP_TERMINAL_STATUSES

    @property
    def trials_total(self) -> int:
        return int(self.search.get("trials") or len(self.trials))


class SeriesPoint(_Answer):
    step: int
    value: float | None = None  # None: not finite


class ComparedJob(_Answer):
    id: str
    name: str | None = None
    status: str
    best: Best | None = None
    series: dict[str, list[SeriesPoint]] = Field(default_factory=dict)


class Comparison(_Answer):
    """``GET /jobs/compare``: each job's curves, and the spec paths whose values differ (values in ids order)."""

    jobs: list[ComparedJob] = Field(default_factory=list)
    spec_diff: dict[str, list[Any]] = Field(default_factory=dict)
