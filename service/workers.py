"""The worker registry: workers announce themselves and their queues; queued jobs say what they wait for.

A worker upserts its row at start and every heartbeat, and deletes it when it stops. A row not seen for
TRAINSERVE_LEASE_SECONDS belongs to a worker that died without saying so; it no longer counts as live.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.models import Job, Worker, utcnow
from service.schemas import WorkerList, WorkerRead
from service.settings import Settings


def lease_owner(worker_name: str, unique: str) -> str:
    """Jobs name the worker holding their lease by this prefix, so /workers can tell who runs what."""
    return f"{worker_name}/{unique}"[:100]


def register_worker(session: Session, *, name: str, hostname: str, queues: list[str], device: str,
                    concurrency: int) -> None:
    now = utcnow()
    row = session.get(Worker, name)
    if row is None:
        session.add(Worker(name=name, hostname=hostname, queues=queues, device=device, concurrency=concurrency,
                           started_at=now, last_seen_at=now))
    else:
        row.hostname, row.queues, row.device, row.concurrency = hostname, queues, device, concurrency
        row.started_at = row.last_seen_at = now


def touch_worker(session: Session, *, name: str) -> bool:
    """The worker's heartbeat; False when its row is gone (deleted by hand), so the caller registers again."""
    result = session.execute(update(Worker).where(Worker.name == name).values(last_seen_at=utcnow()))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def deregister_worker(session: Session, *, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))


def live_workers(session: Session, *, settings: Settings) -> list[Worker]:
    cutoff = utcnow() - timedelta(seconds=settings.lease_seconds)
    return list(session.scalars(select(Worker).where(Worker.last_seen_at >= cutoff).order_by(Worker.name)))


def running_jobs_by_worker(session: Session) -> Counter[str]:
    """Worker name -> jobs it is training, from the lease owners (see lease_owner)."""
    owners = session.scalars(select(Job.lease_owner).where(Job.status == "running", Job.lease_owner.is_not(None)))
    return Counter(owner.split("/", 1)[0] for owner in owners if owner)


def worker_list(session: Session, *, settings: Settings) -> WorkerList:
    """GET /workers: the live workers, each with how many jobs it is training."""
    running = running_jobs_by_worker(session)
    return WorkerList(items=[
        WorkerRead(name=w.name, hostname=w.hostname, queues=list(w.queues), device=w.device,
                   concurrency=w.concurrency, started_at=w.started_at, last_seen_at=w.last_seen_at,
                   running_jobs=running[w.name])
        for w in live_workers(session, settings=settings)])


@dataclass
class QueueView:
    """What a queued job's waiting reason needs, read once per request."""

    workers_by_queue: Counter[str] = field(default_factory=Counter)
    running_by_queue: Counter[str] = field(default_factory=Counter)
    queued_by_queue: Counter[str] = field(default_factory=Counter)

    @classmethod
    def read(cls, session: Session, *, settings: Settings) -> QueueView:
        view = cls()
        for worker in live_workers(session, settings=settings):
            view.workers_by_queue.update(set(worker.queues))
        counts = session.execute(select(Job.queue, Job.status, func.count()).where(Job.status.in_(("queued", "running")))
                                 .group_by(Job.queue, Job.status)).all()
        for queue, status, n in counts:
            (view.queued_by_queue if status == "queued" else view.running_by_queue)[queue] += n
        return view

    def waiting_reason(self, job: Job) -> str:
        """Why this queued job has not started."""
        queue = job.queue
        if job.enqueued_at is None:
            return "not yet handed to the broker (it may be unreachable); it is sent again automatically"
        if not self.workers_by_queue[queue]:
            hint = " on a host with a CUDA GPU" if queue == "gpu" else ""
            return (f"no live worker consumes the '{queue}' queue; start one with "
                    f"`trainserve-server worker --queues {queue}`{hint}")
        workers, running, queued = self.workers_by_queue[queue], self.running_by_queue[queue], self.queued_by_queue[queue]
        return (f"waiting for a free worker on the '{queue}' queue: {workers} live worker(s), "
                f"{running} job(s) running there, {queued} queued")


class RecentQueueView:
    """A QueueView reused for up to `max_age` seconds, for an answer that should not pay a read for a hint:
    POST /jobs says what a new job waits for from a view at most that old (GET /jobs/{id} reads afresh).
    One per API process; a stale read is harmless (two threads may both refresh)."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._view: tuple[float, QueueView] | None = None

    def get(self, session: Session, *, settings: Settings) -> QueueView:
        held, now = self._view, time.monotonic()
        if held is not None and now - held[0] < self.max_age:
            return held[1]
        view = QueueView.read(session, settings=settings)
        self._view = (now, view)
        return view


def idle_slots_by_queue(session: Session, *, settings: Settings) -> Counter[str]:
    """Queue -> job slots of live workers consuming it that are running nothing (a worker on two queues counts
    on both: it takes whichever message comes first)."""
    running = running_jobs_by_worker(session)
    idle: Counter[str] = Counter()
    for worker in live_workers(session, settings=settings):
        free = max(0, worker.concurrency - running[worker.name])
        for queue in set(worker.queues):
            idle[queue] += free
    return idle


def unclaimed_jobs(session: Session, *, settings: Settings) -> list[tuple[str, str]]:
    """Queued jobs handed to the broker more than a lease ago that an idle live worker of their queue has not
    claimed: the broker lost their message (a Redis restart without persistence, a lost message file). Oldest
    first, at most as many per queue as there are idle slots; (job_id, queue) pairs to send again. A second
    delivery of a message that did arrive is harmless: the job is claimed once."""
    idle = idle_slots_by_queue(session, settings=settings)
    if not idle:
        return []
    cutoff = utcnow() - timedelta(seconds=settings.lease_seconds)
    rows = session.execute(
        select(Job.id, Job.queue).where(Job.status == "queued", Job.enqueued_at < cutoff, Job.queue.in_(list(idle)))
        .order_by(Job.enqueued_at)
    ).all()
    resend: list[tuple[str, str]] = []
    for row in rows:
        if idle[row.queue] > 0:
            idle[row.queue] -= 1
            resend.append((row.id, row.queue))
    return resend
