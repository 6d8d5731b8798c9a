"""Server-sent events for a job's metrics: polls the database (the one place every worker writes to) and
forwards what is new as `points`, `status`, `end` and `error` events (docs/api.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio

from service import jobs, metrics
from service.db import session_scope
from service.models import FINISHED_STATUSES

STREAM_POLL_SECONDS = 0.5
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def event_stream(job_id: str, tenant: str, names: list[str] | None,
                       since_step: int | None) -> AsyncIterator[bytes]:
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
        except Exception as exc:  # the job was deleted, or the database went away: say so and end the stream
            yield sse("error", {"detail": str(exc)})
            return
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
