"""The FastAPI app: routes (thin: parse, one use case, a schema), the dashboard, and the lease reaper."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Body, Depends, FastAPI, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import checkpoints, datasets, jobs, metrics, workers
from service.auth import authenticate
from service.db import get_read_sessionmaker, get_sessionmaker, session_scope, with_retry
from service.errors import PayloadTooLarge, error_body, install_error_handlers
from service.models import FINISHED_STATUSES
from service.observability import RequestTelemetry, install_collector
from service.predict import PREDICT_OPENAPI, ModelCache, predict
from service.queue import broker_ok, enqueue_training
from service.schemas import (
    CheckpointList,
    DatasetPage,
    DatasetRead,
    ErrorItem,
    Health,
    JobPage,
    JobRead,
    JobStatus,
    MetricsPage,
    PredictResponse,
    ValidationReport,
    WorkerList,
    WorkerRead,
)
from service.settings import Settings, get_settings
from service.spec import SEED_EXAMPLE, JobSpec

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STREAM_POLL_SECONDS = 0.5


class ErrorBody(BaseModel):
    """Every error answer (service.errors renders them); documented so clients and schema checks see it."""

    type: str
    detail: str
    errors: list[ErrorItem]


_ERROR_DESCRIPTIONS = {
    400: "the body could not be parsed at all (undecodable bytes, broken multipart)",
    401: "missing, invalid or revoked API key",
    404: "not found, or owned by another tenant",
    409: "the resource's state forbids it (finished job, no checkpoint yet, corrupt checkpoint)",
    413: "the request body or upload is over its limit",
    422: "the request or the spec is invalid; `errors` holds the JSON path of each problem",
    429: "over a quota; see Retry-After",
    503: "the database is unavailable; see Retry-After",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    # Replacing FastAPI's default 422 schema too: our handler answers {"type", "detail", "errors"} for all of them.
    return {code: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[code]}
            for code in sorted({401, 422, 503, *codes})}


# --- dependencies -------------------------------------------------------------------------------------


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: routes that write commit before they answer (and before enqueueing)."""
    session = (get_read_sessionmaker() if request.method in ("GET", "HEAD") else get_sessionmaker())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_tenant(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> str:
    return authenticate(session, authorization=authorization)


CurrentTenant = Annotated[str, Depends(get_tenant)]


def _split_names(names: list[str] | None) -> list[str] | None:
    if not names:
        return None
    return [n.strip() for item in names for n in item.split(",") if n.strip()] or None


# --- body size ----------------------------------------------------------------------------------------


class BodySizeLimit:
    """Answers 413 before a too-large body is parsed: by Content-Length, or while the body streams in."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self._detail(seen))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            if not started:
                await self._reject(send, seen)

    def _detail(self, size: int) -> str:
        return f"the request body has {size:,} bytes or more, the limit is {self.max_bytes:,} (TRAINSERVE_MAX_BODY_BYTES)"

    async def _reject(self, send: Send, size: int) -> None:
        body = json.dumps(error_body("payload_too_large", self._detail(size), [])).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# --- the reaper ---------------------------------------------------------------------------------------


def send_job(job_id: str, *, queue: str) -> bool:
    """Hand the job to the broker and record that it got there; False (and the job stays unsent) if it is down."""
    try:
        enqueue_training(job_id, queue=queue)
    except Exception as exc:  # the broker is down: the reaper sends it again once it is back
        log.warning("job.enqueue_failed job_id=%s error=%s", job_id, exc)
        return False
    with_retry(lambda s: jobs.mark_enqueued(s, job_id=job_id))
    return True


def reap_once(settings: Settings) -> int:
    # A job just put back by the lease check is also "unsent" until send_job marks it: send it once.
    to_send = dict(with_retry(lambda s: jobs.reap_expired_leases(s, settings=settings)))
    to_send.update(with_retry(jobs.unsent_jobs))
    return sum(send_job(job_id, queue=queue) for job_id, queue in to_send.items())


async def _reaper_loop(settings: Settings) -> None:
    while True:
        await asyncio.sleep(settings.reaper_interval_seconds)
        try:
            await anyio.to_thread.run_sync(reap_once, settings)
        except Exception:
            log.exception("reaper.failed")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Everything imported and built at start-up is never garbage: keep the collector from scanning it again on
    # every collection (a few percent of a small /predict request otherwise).
    gc.freeze()
    task = asyncio.create_task(_reaper_loop(get_settings()))
    try:
        yield
    finally:
        task.cancel()


# --- the app ------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="trainserve",
        version="0.1.0",
        description="Train PyTorch networks described as JSON, follow their metrics, and serve predictions.",
        lifespan=lifespan,
    )
    app.state.model_cache = ModelCache(settings.model_cache_size)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(RequestTelemetry)  # outermost: counts and times every answer, 413s included
    install_collector(settings)
    register_routes(app)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


SPEC_EXAMPLES = {"seed": {"summary": "The seed article's 3-layer regression MLP", "value": SEED_EXAMPLE}}


def register_routes(app: FastAPI) -> None:
    # First: routes are matched in order, and /predict is the one called thousands of times a second.
    # No declared body, header or dependency: service.predict parses and authenticates itself, so a hot model
    # answers with no database session or thread hop; PREDICT_OPENAPI documents what the route reads.
    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, tags=["predict"],
              responses=error_responses(400, 404, 409, 413), openapi_extra=PREDICT_OPENAPI)
    async def post_predict(request: Request) -> Response:
        answer, hit = await predict(await request.body(), authorization=request.headers.get("authorization"),
                                    cache=request.app.state.model_cache, settings=get_settings())
        return Response(answer, media_type="application/json", headers={"X-Model-Cache": "hit" if hit else "miss"})

    @app.get("/", include_in_schema=False, response_model=None)
    def dashboard() -> Response:
        index = STATIC_DIR / "index.html"
        if not index.exists():
            return Response("trainserve API: see /docs", media_type="text/plain")
        return FileResponse(index)

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["health"])
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/metrics", include_in_schema=False, response_model=None)
    def prometheus_metrics() -> Response:
        # Public like /healthz: aggregate counts only, no tenant's data; scraped by Prometheus.
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/workers", response_model=WorkerList, tags=["health"], responses=error_responses())
    def list_workers(session: SessionDep, _tenant: CurrentTenant, settings: SettingsDep) -> WorkerList:
        """Live workers: their queues, device and how many jobs each is training."""
        running = workers.running_jobs_by_worker(session)
        return WorkerList(items=[
            WorkerRead(name=w.name, hostname=w.hostname, queues=list(w.queues), device=w.device,
                       concurrency=w.concurrency, started_at=w.started_at, last_seen_at=w.last_seen_at,
                       running_jobs=running[w.name])
            for w in workers.live_workers(session, settings=settings)])

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def readyz(response: Response) -> Health:
        try:
            with session_scope() as session:
                session.execute(text("SELECT 1"))
            database = "ok"
        except Exception as exc:
            database = f"unavailable: {exc.__class__.__name__}"
        broker = "ok" if broker_ok() else "unavailable"
        ready = database == "ok" and broker == "ok"
        response.status_code = 200 if ready else 503
        return Health(status="ready" if ready else "unavailable", database=database, broker=broker)

    @app.post("/jobs", status_code=201, response_model=JobRead, tags=["jobs"], responses=error_responses(400, 413, 429))
    def create_job(
        session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
        spec: Annotated[JobSpec, Body(openapi_examples=SPEC_EXAMPLES)],
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JobRead:
        job, created = jobs.submit_job(session, tenant=tenant, spec=spec, idempotency_key=idempotency_key,
                                       settings=settings)
        session.commit()  # enqueue after commit, so no worker can see an uncommitted job
        if created:
            if send_job(job.id, queue=job.queue):  # if the broker is down the job is kept and sent later
                session.refresh(job)  # the answer shows it handed to the broker (its waiting reason says so)
        else:
            response.status_code = 200
        return jobs.job_read(session, job)

    @app.post("/jobs/validate", response_model=ValidationReport, tags=["jobs"],
              responses=error_responses(400, 413))
    def validate_job(
        session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
        payload: Annotated[dict[str, Any], Body(openapi_examples=SPEC_EXAMPLES)],
    ) -> dict[str, Any]:
        return jobs.validate_payload(session, tenant=tenant, payload=payload, settings=settings)

    @app.get("/jobs", response_model=JobPage, tags=["jobs"], responses=error_responses())
    def list_jobs(
        session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1)] = 50,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
    ) -> JobPage:
        return jobs.list_jobs(session, tenant=tenant, status=status, limit=min(limit, settings.max_page_size),
                              cursor=cursor, settings=settings)

    @app.get("/jobs/{job_id}", response_model=JobRead, tags=["jobs"], responses=error_responses(404))
    def get_job(session: SessionDep, tenant: CurrentTenant, job_id: str) -> JobRead:
        return jobs.job_read(session, jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id))

    @app.post("/jobs/{job_id}/cancel", response_model=JobRead, tags=["jobs"], responses=error_responses(404, 409))
    def cancel_job(session: SessionDep, tenant: CurrentTenant, job_id: str) -> JobRead:
        job = jobs.cancel_job(session, tenant=tenant, job_id=job_id)
        session.commit()
        return jobs.job_read(session, job)

    @app.delete("/jobs/{job_id}", status_code=204, tags=["jobs"], responses=error_responses(404, 409))
    def delete_job(session: SessionDep, tenant: CurrentTenant, job_id: str) -> Response:
        jobs.delete_job(session, tenant=tenant, job_id=job_id)
        session.commit()
        return Response(status_code=204)

    @app.get("/jobs/{job_id}/metrics", response_model=MetricsPage, tags=["metrics"],
             responses={200: {"content": {"text/csv": {}}}, **error_responses(404)})
    def get_metrics(
        session: SessionDep, tenant: CurrentTenant, job_id: str,
        names: Annotated[list[str] | None, Query()] = None,
        since_step: Annotated[int | None, Query(ge=0)] = None,
        max_points: Annotated[int | None, Query(ge=1, le=100_000)] = None,
        format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
    ) -> Any:
        job = jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id)
        points = metrics.read_points(session, job_id=job.id, names=_split_names(names), since_step=since_step,
                                     max_points=max_points)
        if format == "csv":
            return Response(metrics.points_csv(points), media_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{job.id}-metrics.csv"'})
        last = max((p.step for p in points), default=since_step or 0)
        return MetricsPage(job_id=job.id, status=job.status, last_step=last, points=points)  # type: ignore[arg-type]

    @app.get("/jobs/{job_id}/metrics/stream", tags=["metrics"],
             responses={200: {"content": {"text/event-stream": {}}}, **error_responses(404)})
    def stream_metrics(
        session: SessionDep, tenant: CurrentTenant, job_id: str,
        names: Annotated[list[str] | None, Query()] = None,
        since_step: Annotated[int | None, Query(ge=0)] = None,
    ) -> StreamingResponse:
        job = jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id)
        # End the request's transaction now: the stream outlives the route, and an open transaction would hold
        # SQLite's write lock (or a PostgreSQL connection) for as long as the client listens.
        session.commit()
        return StreamingResponse(_event_stream(job.id, tenant, _split_names(names), since_step),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/jobs/{job_id}/checkpoints", response_model=CheckpointList, tags=["checkpoints"],
             responses=error_responses(404))
    def list_checkpoints(session: SessionDep, tenant: CurrentTenant, job_id: str) -> CheckpointList:
        job = jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id)
        return checkpoints.list_checkpoints(session, job=job)

    @app.get("/jobs/{job_id}/checkpoints/{ckpt}", tags=["checkpoints"], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(404, 409)})
    def download_checkpoint(session: SessionDep, tenant: CurrentTenant, job_id: str, ckpt: str) -> Response:
        job = jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id)
        weights, row = checkpoints.load_weights_verified(
            session, job=job, checkpoint_id=checkpoints.resolve_checkpoint_id(job, ckpt))
        return Response(weights, media_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{job.id}-step{row.step}.safetensors"',
            "X-Checkpoint-Id": row.id, "X-Checkpoint-SHA256": row.weights_sha256})

    @app.post("/datasets", status_code=201, response_model=DatasetRead, tags=["datasets"],
              responses=error_responses(400, 413))
    async def upload_dataset(
        session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
        file: Annotated[UploadFile, File(description="CSV (with a header row), Parquet or NPZ")],
        target: Annotated[list[str], Form(description="target column(s): repeat the field or comma-separate")],
        name: Annotated[str | None, Form(max_length=200)] = None,
    ) -> DatasetRead:
        raw = await file.read(settings.max_dataset_bytes + 1)
        dataset = await anyio.to_thread.run_sync(lambda: datasets.upload_dataset(
            session, tenant=tenant, raw=raw, filename=file.filename or "upload", target=target, name=name,
            settings=settings))
        session.commit()
        return datasets.dataset_read(dataset)

    @app.get("/datasets", response_model=DatasetPage, tags=["datasets"], responses=error_responses())
    def list_datasets(session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
                      limit: Annotated[int, Query(ge=1)] = 50) -> DatasetPage:
        return datasets.list_datasets(session, tenant=tenant, limit=min(limit, settings.max_page_size))

    @app.get("/datasets/{dataset_id}", response_model=DatasetRead, tags=["datasets"], responses=error_responses(404))
    def get_dataset(session: SessionDep, tenant: CurrentTenant, dataset_id: str) -> DatasetRead:
        return datasets.dataset_read(datasets.get_dataset_or_raise(session, tenant=tenant, dataset_id=dataset_id))


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _event_stream(job_id: str, tenant: str, names: list[str] | None,
                        since_step: int | None) -> AsyncIterator[bytes]:
    """Polls the database (the one place every worker writes to) and forwards what is new."""
    after_id = 0
    last_status: tuple[Any, ...] | None = None

    def poll() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        nonlocal after_id
        with session_scope(read_only=True) as session:
            job = jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id)
            points, after_id = metrics.read_new_points(session, job_id=job_id, names=names, since_step=since_step,
                                                        after_id=after_id)
            status = {"status": job.status, "progress": jobs.job_progress(job).model_dump(), "error": job.error}
            return [p.model_dump(mode="json") for p in points], status

    while True:
        try:
            points, status = await anyio.to_thread.run_sync(poll)
        except Exception as exc:
            yield _sse("error", {"detail": str(exc)})
            return
        if points:
            yield _sse("points", points)
        key = (status["status"], status["progress"]["step"])
        if key != last_status:
            last_status = key
            yield _sse("status", status)
        if status["status"] in FINISHED_STATUSES and not points:
            yield _sse("end", {"status": status["status"], "error": status["error"]})
            return
        if not points:
            yield b": keep-alive\n\n"
        await asyncio.sleep(STREAM_POLL_SECONDS)

app = create_app()
