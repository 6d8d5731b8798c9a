"""Server-sent events for a job's metrics: polls the database (the one place every worker writes to) and
forwards what is new as `points`, `status`, `end` and `error` events (docs/api.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio

from service import jobs, metrics
from service.auth import tenant_of
from service.db import is_transient, session_scope
from service.errors import NotFound, QuotaExceeded, Unauthorized
from service.models import FINISHED_STATUSES

log = logging.getLogger(__name__)

STREAM_POLL_SECONDS = 0.5
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class StreamSlots:
    """Open streams per tenant in this API process: each holds a thread's poll every half second, so they are
    capped (TRAINSERVE_MAX_STREAMS_PER_TENANT) and a tenant past the cap gets 429 before its stream opens."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, tenant: str, *, limit: int) -> None:
        with self._lock:
            if self._open[tenant] >= limit:
                raise QuotaExceeded(f"{self._open[tenant]} metric streams are already open for this tenant "
                                    f"(TRAINSERVE_MAX_STREAMS_PER_TENANT={limit}); close one first", retry_after=5)
            self._open[tenant] += 1

    def release(self, tenant: str) -> None:
        with self._lock:
            self._open[tenant] -= 1
            if self._open[tenant] <= 0:
                del self._open[tenant]

    def open_for(self, tenant: str) -> int:
        with self._lock:
            return self._open[tenant]


def _error_detail(exc: Exception) -> str | None:
    """What the stream's `error` event says; None for an outage, which the stream waits out."""
    if isinstance(exc, Unauthorized):
        return "the API key was revoked"
    if isinstance(exc, NotFound):
        return "job not found (it was deleted)"
    if is_transient(exc):
        return None
    log.exception("stream.failed")
    return "internal error; the stream ended (see the server log)"  # never SQL, parameters or hosts


async def event_stream(job_id: str, tenant: str, names: list[str] | None, since_step: int | None, *,
                       key_digest: str, slots: StreamSlots) -> AsyncIterator[bytes]:
    """The stream's body; releases its slot in `slots` when it ends, however it ends."""
    try:
        async for chunk in _events(job_id, tenant, names, since_step, key_digest=key_digest):
            yield chunk
    finally:
        slots.release(tenant)


async def _events(job_id: str, tenant: str, names: list[str] | None, since_step: int | None, *,
                  key_digest: str) -> AsyncIterator[bytes]:
    after_id = 0
    last_status: tuple[Any, ...] | None = None

    def poll() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        nonlocal after_id
        with session_scope(read_only=True) as session:
            tenant_of(session, key_digest)  # a key revoked while the stream is open ends it
            job = jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id)
            points, after_id = metrics.read_new_points(session, job_id=job_id, names=names, since_step=since_step,
                                                        after_id=after_id)
            status = {"status": job.status, "progress": jobs.job_progress(job).model_dump(), "error": job.error}
            return [p.model_dump(mode="json") for p in points], status

    while True:
        try:
            points, status = await anyio.to_thread.run_sync(poll)
        except Exception as exc:
            detail = _error_detail(exc)
            if detail is not None:
                yield sse("error", {"detail": detail})
                return
            yield b": the database is unavailable; retrying\n\n"  # an outage: the stream waits it out
            await asyncio.sleep(STREAM_POLL_SECONDS * 4)
            continue
        if points:
            yield sse("points", points)
        key = (status["status"], status["progress"]["step"])
        if key != last_status:
            last_status = key
            yield sse("status", status)
        if status["status"] in FINISHED_STATUSES and not points:
            yield sse("end", {"status": status["status"], "error": status["error"]})
            return
        if not points:
            yield b": keep-alive\n\n"
        await asyncio.sleep(STREAM_POLL_SECONDS)
