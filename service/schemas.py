"""The HTTP contract: request and response bodies (the spec itself lives in service.spec)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "pruned"]


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @field_serializer("*", when_used="json")
    @staticmethod
    def _utc(value: Any) -> Any:
        # SQLite returns naive datetimes; every time we store is UTC.
        if isinstance(value, datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            return aware.isoformat().replace("+00:00", "Z")
        return value


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
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
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
    last_metrics: dict[str, float]
    spec: dict[str, Any] | None
    report: dict[str, Any] | None


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


class MetricPointRead(ReadModel):
    name: str
    step: int
    epoch: int
    value: float
    time: datetime


class MetricsPage(BaseModel):
    job_id: str
    status: JobStatus
    last_step: int
    points: list[MetricPointRead]


class CheckpointRead(ReadModel):
    id: str
    step: int
    epoch: int
    metric: str
    value: float | None
    sha256: str
    size_bytes: int
    created_at: datetime
    is_best: bool
    is_latest: bool


class CheckpointList(BaseModel):
    items: list[CheckpointRead]


Row = list[Any]


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"job_id": "0b9f3c...", "checkpoint": "best", "inputs": [[0.1] * 4]}]},
    )

    job_id: str
    checkpoint: str = "best"
    # Checked row by row by the use case, so each problem gets its own inputs[i][j] path.
    inputs: Annotated[list[Any], Field(description="rows of numbers (or nested arrays for images)")]


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
    created_at: datetime


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
    started_at: datetime
    last_seen_at: datetime
    running_jobs: int


class WorkerList(BaseModel):
    items: list[WorkerRead]
