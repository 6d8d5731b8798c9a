"""The one place that reads the environment: every TRAINSERVE_* setting, with safe defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINSERVE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".trainserve")
    # Empty means the embedded default under `home`: SQLite in WAL mode and Celery's filesystem transport.
    database_url: str = ""
    broker_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000

    # Limits: each answers 413/422/429 with the figure that broke it.
    max_body_bytes: int = 32 * 1024 * 1024
    max_dataset_bytes: int = 64 * 1024 * 1024
    # An upload's size says little about its decoded size (a 10 KB NPZ can declare 10^13 values): both caps are
    # checked from headers (NPZ member shapes, the Parquet footer, the CSV header line) before decoding.
    max_dataset_columns: int = 10_000
    max_dataset_decoded_bytes: int = 512 * 1024 * 1024
    max_parameters: int = 50_000_000
    max_epochs: int = 10_000
    max_steps: int = 10_000_000
    max_rows: int = 1_000_000
    max_layers: int = 256
    max_page_size: int = 200
    # Live metric streams open at once per tenant, per API process (each polls the database twice a second).
    max_streams_per_tenant: int = 8
    max_predict_rows: int = 10_000
    # /predict rows × outputs per sample: the answer is built and encoded in memory.
    max_predict_values: int = 5_000_000
    # A job's estimated memory (data, one batch's activations, parameters, gradients, optimizer state), and the
    # bytes of the checkpoints it keeps; the per-field caps keep a spec's sizes within reason before any estimate.
    max_job_memory_bytes: int = 8 * 2**30
    max_checkpoint_bytes_per_job: int = 8 * 2**30
    max_synthetic_features: int = 100_000
    max_synthetic_targets: int = 10_000
    max_conv_padding: int = 1_024
    # One metrics read answers at most this many points; the answer's next_since_step continues it.
    max_metric_points_per_read: int = 10_000
    max_running_jobs_per_tenant: int = 8
    max_submissions_per_minute: int = 120
    # A sweep asks for at most this many trials, and runs at most this many at once.
    max_sweep_trials: int = 200
    max_sweep_parallel: int = 16
    job_time_limit_seconds: int = 6 * 3600

    # Leases: a running job whose heartbeat is older than lease_seconds goes back to the queue.
    lease_seconds: int = 60
    heartbeat_seconds: float = 5.0
    # How often a running job looks for a cancel (one indexed read): a cancel stops it within about this long.
    cancel_poll_seconds: float = 0.5
    # Points and checkpoints a running job may hold in memory while the database is slow or away; past it the
    # training waits (an outage pauses a job, never fails it).
    writer_buffer_bytes: int = 256 * 1024 * 1024
    # Where a run's writes are applied: "process", a writer process beside each worker process, so the database
    # work holds none of the interpreter lock training needs (see worker.writer_process); "thread", on a thread
    # of the training process (one process fewer, training slower while it writes).
    writer: Literal["process", "thread"] = "process"
    max_attempts: int = 3
    reaper_interval_seconds: float = 10.0

    model_cache_size: int = 16
    # /predict trusts an API key the database accepted, and the checkpoint a finished job's "best"/"latest"/id
    # named, for this many seconds, so a hot model answers with no database round trip. A revoked key or a
    # deleted job still answers /predict (only) for at most this long; 0 asks the database on every request.
    predict_cache_seconds: float = 5.0
    # Queues a worker consumes: "auto" is gpu and cpu where CUDA works, else cpu only. CPU hosts never take gpu.
    worker_queues: str = "auto"
    worker_concurrency: int = 1
    # Each worker serves its Prometheus series here (http://HOST:PORT/metrics); 0 turns that off. A second
    # worker on the same host needs its own port, or it runs without one (it logs a warning and goes on).
    worker_metrics_port: int = 9101
    log_level: str = "INFO"
    # "text" for people, "json" for log pipelines: one object per line, with job_id / request_id fields.
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'trainserve.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        return self

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
