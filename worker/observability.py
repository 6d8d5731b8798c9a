"""A worker's own Prometheus series, served on TRAINSERVE_WORKER_METRICS_PORT, and its registry heartbeat.

With more than one training process (prefork), prometheus_client's multiprocess mode sums the children's
series; `trainserve-server worker` sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client.
"""

from __future__ import annotations

import logging
import os
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client import multiprocess as prom_multiprocess

from service.db import with_retry
from service.settings import Settings
from service.workers import deregister_worker, register_worker, touch_worker

log = logging.getLogger(__name__)

disable_created_metrics()  # the *_created series double what Prometheus shows and nobody graphs them

JOB_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)

JOBS = Counter("trainserve_worker_jobs_total", "Job deliveries this worker finished, by outcome", ["status"])
JOB_SECONDS = Histogram("trainserve_worker_job_duration_seconds", "Wall time of one delivery of a job",
                        buckets=JOB_SECONDS_BUCKETS)
STEPS = Counter("trainserve_worker_training_steps_total", "Optimizer steps taken")
SAMPLES_PER_SECOND = Gauge("trainserve_worker_training_samples_per_second",
                           "Latest epoch's training samples/s of the job being trained (0 when idle)",
                           multiprocess_mode="livesum")
BUSY = Gauge("trainserve_worker_busy", "Jobs being trained right now", multiprocess_mode="livesum")


def serve_metrics(port: int, *, host: str) -> bool:
    """Start the /metrics HTTP server; a port already taken is a warning, not a reason to stop training."""
    if port <= 0:
        return False
    registry = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
    try:
        if registry is None:
            start_http_server(port, addr=host)
        else:
            start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("worker.metrics_port_unavailable port=%d error=%s: running without /metrics", port, exc)
        return False
    log.info("worker.metrics_serving host=%s port=%d", host, port)
    return True


def describe_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    return f"cuda: {torch.cuda.get_device_name(0)} x{count}"


class Registration(threading.Thread):
    """Keeps this worker's row in the workers table fresh, so the API knows which queues have a live consumer."""

    def __init__(self, *, name: str, hostname: str, queues: list[str], concurrency: int, settings: Settings) -> None:
        super().__init__(name="worker-registration", daemon=True)
        self.worker_name, self.hostname, self.queues = name, hostname, queues
        self.concurrency, self.settings = concurrency, settings
        self.device = describe_device()
        self._stop = threading.Event()

    def register(self) -> None:
        with_retry(lambda s: register_worker(s, name=self.worker_name, hostname=self.hostname, queues=self.queues,
                                             device=self.device, concurrency=self.concurrency))
        log.info("worker.registered name=%s queues=%s device=%s", self.worker_name, ",".join(self.queues),
                 self.device.replace(" ", "_"))

    def run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                if not with_retry(lambda s: touch_worker(s, name=self.worker_name), attempts=2):
                    self.register()
            except Exception as exc:  # the database may be briefly away: the next beat tries again
                log.warning("worker.heartbeat_failed error=%s", exc)

    def stop(self) -> None:
        self._stop.set()
        try:
            with_retry(lambda s: deregister_worker(s, name=self.worker_name), attempts=2)
        except Exception as exc:  # the row then simply goes stale after TRAINSERVE_LEASE_SECONDS
            log.warning("worker.deregister_failed error=%s", exc)
