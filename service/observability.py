"""What operators see: Prometheus series for the API, request logs, and JSON log lines carrying job ids.

The API's series live in prometheus_client's default registry, served at GET /metrics. Counters and histograms
are observed where things happen (requests, predictions, the model cache); the job, queue and worker gauges
are read from the database and the broker when Prometheus scrapes, so every API replica reports the same truth.
Workers serve their own series (worker.observability) on TRAINSERVE_WORKER_METRICS_PORT.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import current_request_id
from service.models import JOB_STATUSES, Job
from service.settings import Settings

log = logging.getLogger("trainserve.http")

disable_created_metrics()  # the *_created series double what Prometheus shows and nobody graphs them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter("trainserve_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_SECONDS = Histogram("trainserve_http_request_duration_seconds", "HTTP request latency, first byte to last",
                         ["method", "route"], buckets=LATENCY_BUCKETS)
PREDICT_SECONDS = Histogram("trainserve_predict_duration_seconds",
                            "POST /predict: time from a parsed request to its result (model load included on a miss)",
                            ["cache"], buckets=LATENCY_BUCKETS)
PREDICT_ROWS = Counter("trainserve_predict_rows_total", "Rows predicted")
MODEL_CACHE_HITS = Counter("trainserve_model_cache_hits_total", "Predictions served by an already loaded model")
MODEL_CACHE_MISSES = Counter("trainserve_model_cache_misses_total", "Predictions that had to load a checkpoint")

M = TypeVar("M", bound=MetricWrapperBase)
_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}


def labelled(metric: M, *labels: str) -> M:
    """`metric.labels(*labels)`, remembered: labels() takes a lock and builds its key on every call, which a hot
    /predict paid three times. The same child labels() returns, made on first use as before (no series appears
    sooner); the keys are as few as the series prometheus_client keeps anyway."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child  # type: ignore[return-value]  # labels() of an M is an M


# --- HTTP -------------------------------------------------------------------------------------------------


QUIET_ROUTES = frozenset({"/predict", "/metrics", "/healthz", "/readyz"})


def route_label(scope: Scope) -> str:
    """The route's template (/jobs/{job_id}), never the raw path: one series per route, not per job."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    if scope.get("path", "").startswith("/static/"):
        return "/static"
    return "unmatched"


class RequestTelemetry:
    """Pure ASGI middleware: request count and latency per route, a request id, one log line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        # 16 random hex digits, as uuid4().hex[:16] gave, without its system call (an id, not a secret).
        request_id = _clean_request_id(headers.get(b"x-request-id")) or f"{random.getrandbits(64):016x}"
        status = 500
        request_token = current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(request_token)
            elapsed = time.perf_counter() - started
            route, method = route_label(scope), scope.get("method", "")
            if route != "/metrics":  # scrapes would otherwise dominate the request series
                labelled(HTTP_REQUESTS, method, route, str(status)).inc()
                labelled(HTTP_SECONDS, method, route).observe(elapsed)
            # Probes, scrapes and successful predictions are the bulk of the traffic: DEBUG, so that INFO logs
            # stay readable and a hot /predict does not pay for a log line (TRAINSERVE_LOG_LEVEL=DEBUG shows them).
            level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
            if log.isEnabledFor(level):
                job_id = (scope.get("path_params") or {}).get("job_id")
                log.log(level, "http.request method=%s path=%s route=%s status=%d duration_ms=%.1f", method,
                        scope.get("path"), route, status, elapsed * 1000,
                        extra={"request_id": request_id, **({"job_id": job_id} if job_id else {})})


_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


def _clean_request_id(raw: bytes | None) -> str | None:
    # A client's X-Request-ID is echoed into logs and headers: accept only a short, plain token.
    return raw.decode() if raw and _REQUEST_ID.match(raw) else None


# --- gauges read at scrape time ---------------------------------------------------------------------------


class ServiceCollector(Collector):
    """Jobs by status, queue depth per queue, live workers, and the running jobs' training throughput."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        from service.db import session_scope
        from service.queue import QUEUES, broker_queue_sizes
        from service.workers import QueueView

        jobs = GaugeMetricFamily("trainserve_jobs", "Jobs by status", labels=["status"])
        queued = GaugeMetricFamily("trainserve_queue_depth", "Queued jobs waiting for a worker, per queue",
                                   labels=["queue"])
        workers = GaugeMetricFamily("trainserve_workers", "Live workers consuming each queue", labels=["queue"])
        samples = GaugeMetricFamily("trainserve_training_samples_per_second",
                                    "Sum over running jobs of their latest epoch's training samples/s")
        try:
            with session_scope(read_only=True) as session:
                by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
                view = QueueView.read(session, settings=self.settings)  # what waiting reasons are made of
                running = session.scalars(select(Job.last_metrics).where(Job.status == "running")).all()
        except Exception as exc:  # a scrape must answer even while the database is away
            logging.getLogger(__name__).warning("metrics.database_unavailable error=%s", exc)
            return
        for status in JOB_STATUSES:
            jobs.add_metric([status], by_status.get(status, 0))
        for queue in sorted({*QUEUES, *view.queued_by_queue}):
            queued.add_metric([queue], view.queued_by_queue[queue])
            workers.add_metric([queue], view.workers_by_queue[queue])
        samples.add_metric([], sum(float((m or {}).get("samples_per_s", 0.0)) for m in running))
        yield from (jobs, queued, workers, samples)

        sizes = broker_queue_sizes(self.settings)
        if sizes is not None:
            broker = GaugeMetricFamily("trainserve_broker_queue_messages",
                                       "Task messages waiting in the broker, per queue", labels=["queue"])
            for queue, size in sorted(sizes.items()):
                broker.add_metric([queue], size)
            yield broker


_collector: ServiceCollector | None = None


def install_collector(settings: Settings) -> None:
    """Once per process: the collector reads the database, so only the API registers it."""
    global _collector
    if _collector is None:
        _collector = ServiceCollector(settings)
        REGISTRY.register(_collector)
