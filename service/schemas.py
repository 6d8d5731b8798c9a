"""The HTTP contract: request and response bodies (the spec itself lives in service.spec)."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.spec import JobSpec


class JobStatus(StrEnum):
    """A job's state; succeeded, failed, cancelled and pruned are final."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    pruned = "pruned"


def _as_utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; every time we store is UTC (pydantic then writes it with a "Z").
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# A typed datetime in the document (`format: date-time`), always written in UTC.
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Progress(BaseModel):
    epoch: int
    epochs: int
    step: int
    total_steps: int
    fraction: float
    eta_seconds: float | None


class BestCheckpoint(BaseModel):
    checkpoint_id: str
    metric: str
    value: float | None
    step: int


class JobRead(ReadModel):
    id: str
    name: str | None
    status: JobStatus
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    attempts: int
    error: str | None
    cancel_requested: bool
    device: str
    queue: str
    # Only while queued: why it has not started (no live worker on its queue, all busy, broker not reached).
    waiting_reason: str | None = None
    progress: Progress
    best: BestCheckpoint | None
    latest_checkpoint_id: str | None
    last_metrics: dict[str, float | None]  # a non-finite latest value is null
    spec: dict[str, Any] | None
    report: dict[str, Any] | None
    # A sweep's trial: its sweep and {"number", "params"}; None for a job submitted on its own.
    sweep_id: str | None = None
    trial: TrialRef | None = None


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class LayerRow(BaseModel):
    index: int
    type: str
    output_shape: list[int]
    params: int
    flops: int


class ErrorItem(BaseModel):
    loc: str
    msg: str


class ErrorBody(BaseModel):
    """Every error answer (service.errors renders them all)."""

    type: str = Field(description="validation_error, not_found, conflict, unauthorized, ... (docs/api.md)")
    detail: str
    errors: list[ErrorItem]


class SkippedTensor(BaseModel):
    tensor: str  # e.g. model.layers[4].weight
    reason: str


class WarmStartReport(BaseModel):
    """What init_from resolved to and what a warm start loads (service.warmstart)."""

    job_id: str  # the source job and the checkpoint the worker loads, pinned at submit time
    checkpoint_id: str
    model: str | None  # the model reference given, if any
    loaded: list[str]
    skipped: list[SkippedTensor]
    frozen: list[int]
    normalization: Literal["source", "none", "own"]  # whose input statistics the job trains on
    optimizer_state: bool


class ValidationReport(BaseModel):
    ok: bool
    errors: list[ErrorItem]
    warnings: list[ErrorItem]
    input_shape: list[int] | None = None
    output_shape: list[int] | None = None
    layers: list[LayerRow] = []
    total_params: int | None = None
    trainable_params: int | None = None
    flops_per_sample: int | None = None
    memory_bytes: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    init_from: WarmStartReport | None = None  # a warm start's source, loaded and skipped tensors


class MetricPointRead(ReadModel):
    name: str
    step: int
    epoch: int
    # null when the value is not finite (inf, -inf, NaN: e.g. val_r2 of a constant target): JSON has no such numbers
    value: float | None
    time: UtcDatetime


class MetricsPage(BaseModel):
    job_id: str
    status: JobStatus
    last_step: int
    points: list[MetricPointRead]
    # Set when the read stopped at TRAINSERVE_MAX_METRIC_POINTS_PER_READ: pass it as since_step to read on.
    next_since_step: int | None = None


class CheckpointRead(ReadModel):
    id: str
    step: int
    epoch: int
    metric: str
    value: float | None
    sha256: str
    size_bytes: int
    created_at: UtcDatetime
    is_best: bool
    is_latest: bool


class CheckpointList(BaseModel):
    items: list[CheckpointRead]


Row = list[Any]


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"job_id": "0b9f3c...", "checkpoint": "best", "inputs": [[0.1] * 32]}]},
    )

    job_id: str | None = None
    # Or a registered model (service.registry) in place of job_id and checkpoint.
    model: Annotated[str | None, Field(description='"name@alias", "name:version" or "name" (its latest version)',
                                       max_length=200)] = None
    checkpoint: str = "best"
    # Checked row by row by the use case, so each problem gets its own inputs[i][j] path.
    inputs: Annotated[list[Any] | None, Field(description="rows of numbers (or nested arrays for images)")] = None
    # Where the data had named features (see the signature): [{"feature": value, ...}] in place of inputs.
    records: Annotated[list[Any] | None, Field(description="rows as {feature: value} objects")] = None


class PredictResponse(BaseModel):
    job_id: str
    checkpoint_id: str
    predictions: list[Any]
    classes: list[str] | None = None
    probabilities: list[list[float]] | None = None


class ColumnRead(BaseModel):
    name: str
    dtype: str
    n_unique: int
    mean: float | None = None
    std: float | None = None
    categories: list[str] | None = None


class DatasetRead(ReadModel):
    id: str
    name: str
    format: str
    n_rows: int
    size_bytes: int
    columns: list[ColumnRead]
    target: list[str]
    created_at: UtcDatetime
    # A CSV's field separator, detected from its first 64 KB among , ; tab and space; null for Parquet and NPZ.
    delimiter: str | None = None


class DatasetPage(BaseModel):
    items: list[DatasetRead]
    next_cursor: str | None


class Health(BaseModel):
    status: str
    database: str | None = None
    broker: str | None = None


class WorkerRead(ReadModel):
    name: str
    hostname: str
    queues: list[str]
    device: str
    concurrency: int
    started_at: UtcDatetime
    last_seen_at: UtcDatetime
    running_jobs: int


class WorkerList(BaseModel):
    items: list[WorkerRead]


# --- models: registry, signatures (service.registry, service.signature) --------------------------------

# Model names and aliases: lower-case letters, digits, '_', '.', '-'; they appear in URLs and in "name@alias".
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"  # a letter first, so "name@2" can never be mistaken for a version


class SignatureInputs(BaseModel):
    shape: list[int] = Field(description="values per row, as /predict's inputs and an export take them")
    features: list[str] | None = Field(description="the feature names, where the data had them")


class SignatureOutputs(BaseModel):
    kind: Literal["classes", "values"]
    classes: list[str] | None
    targets: list[str] | None


class Signature(BaseModel):
    """What a checkpoint takes and gives."""

    inputs: SignatureInputs
    outputs: SignatureOutputs


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"name": "churn", "job_id": "0b9f3c...", "checkpoint": "best"}]})

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
    job_id: Annotated[str, Field(max_length=32)]
    checkpoint: Annotated[str, Field(max_length=32, description='"best", "latest" or a checkpoint id')] = "best"


class AliasUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1)]


class ModelVersionRead(ReadModel):
    model: str
    version: int
    job_id: str
    checkpoint_id: str
    created_at: datetime
    aliases: list[str]
    signature: Signature


class ModelAliasRead(BaseModel):
    alias: str
    version: int


class ModelRead(ReadModel):
    name: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]
    versions: list[ModelVersionRead]


class ModelSummary(ReadModel):
    name: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]


class ModelPage(BaseModel):
    items: list[ModelSummary]
    next_cursor: str | None


# --- experiments: sweeps and comparing runs (service.sweeps, service.compare) ----------------------------


class TrialRef(BaseModel):
    """A sweep trial's place in its sweep: its number and the params it was given."""

    number: int
    params: dict[str, Any]


class SweepSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["grid", "random", "tpe"] = "random"
    trials: Annotated[int, Field(ge=1)] = 10  # grid: at most every combination
    parallel: Annotated[int, Field(ge=1)] = 1
    seed: Annotated[int, Field(ge=0, lt=2**31)] = 0


class SweepObjective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"


class SweepPruner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["none", "median", "asha"] = "none"
    min_epochs: Annotated[int, Field(ge=1)] = 1  # no trial is stopped before this many epochs
    reduction_factor: Annotated[int, Field(ge=2)] = 3  # asha: one in this many trials goes on at each rung
    startup_trials: Annotated[int, Field(ge=0)] = 1  # median: trials that finish before any is pruned


SWEEP_SPACE_EXAMPLE = {
    "optimizer.lr": {"log_uniform": [0.0001, 0.1]},
    "model.layers[0].out_channels": {"choice": [8, 16, 32]},
    "training.batch_size": {"choice": [32, 64, 128]},
}


class SweepCreate(BaseModel):
    """POST /sweeps: a base spec, a search space of JSON paths into it, how to search, and what to optimize."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=200)] | None = None
    spec: JobSpec
    # Keys are JSON paths into spec, written like error locs; values one of {"choice": [...]},
    # {"uniform": [lo, hi]}, {"log_uniform": [lo, hi]}, {"int_uniform": [lo, hi]}.
    space: Annotated[dict[str, dict[str, Any]], Field(min_length=1, examples=[SWEEP_SPACE_EXAMPLE])]
    search: SweepSearch = Field(default_factory=SweepSearch)
    objective: SweepObjective = Field(default_factory=SweepObjective)
    pruner: SweepPruner = Field(default_factory=SweepPruner)


SweepStatus = Literal["running", "succeeded", "failed", "cancelled"]


class SweepBest(BaseModel):
    job_id: str
    params: dict[str, Any]
    value: float


class SweepTrial(BaseModel):
    number: int
    job_id: str
    params: dict[str, Any]
    status: JobStatus
    value: float | None  # the objective's best epoch-end value so far
    epochs: int  # epochs done


class SweepRead(BaseModel):
    id: str
    name: str | None
    status: SweepStatus
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
    space: dict[str, dict[str, Any]]
    search: SweepSearch
    objective: SweepObjective
    pruner: SweepPruner
    counts: dict[str, int]  # trials per status
    best: SweepBest | None
    trials: list[SweepTrial]
    spec: dict[str, Any] | None = None  # GET /sweeps/{id} only


class SweepPage(BaseModel):
    items: list[SweepRead]
    next_cursor: str | None


class SeriesPoint(BaseModel):
    step: int
    value: float | None  # a non-finite value (a diverged run) is served as null, as by GET .../metrics


class ComparedJob(BaseModel):
    id: str
    name: str | None
    status: JobStatus
    best: BestCheckpoint | None
    series: dict[str, list[SeriesPoint]]


class JobComparison(BaseModel):
    """GET /jobs/compare: each job's curves, and the spec paths whose values differ (each job's value, in ids order)."""

    jobs: list[ComparedJob]
    spec_diff: dict[str, list[Any]]
