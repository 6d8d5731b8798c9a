"""Sending jobs to the broker: a new job after its commit, a job handed back, and the reaper that sends again
what the broker never got and puts back jobs whose worker was lost."""

from __future__ import annotations

import asyncio
import logging
import time

import anyio
from sqlalchemy.orm import Session

from service import jobs, sweeps
from service.db import is_transient, with_retry
from service.queue import enqueue_training
from service.models import utcnow
from service.schemas import JobRead
from service.settings import Settings
from service.spec import JobSpec
from service.workers import RecentQueueView, unclaimed_jobs

log = logging.getLogger(__name__)


def send_job(job_id: str, *, queue: str, settings: Settings | None = None) -> bool:
    """Hand the job to the broker and record that it got there; False (and the job stays unsent) if it is down."""
    try:
        enqueue_training(job_id, queue=queue, settings=settings)
    except Exception as exc:  # the broker is down: the reaper sends it again once it is back
        log.warning("job.enqueue_failed job_id=%s error=%s", job_id, exc)
        return False
    with_retry(lambda s: jobs.mark_enqueued(s, job_id=job_id))
    return True


def submit_and_send(session: Session, *, tenant: str, spec: JobSpec, idempotency_key: str | None,
                    settings: Settings, queue_view: RecentQueueView | None = None,
                    key_digest: str | None = None) -> tuple[JobRead, bool]:
    """POST /jobs: store the job, commit, then send it (enqueue after commit, so no worker can see an
    uncommitted job). Returns the job and whether it is new (False: an idempotent replay).

    The job is stored as sent (enqueued_at) in its own insert, so a send that works costs no second write
    before the worker can claim it; a send the broker refuses clears the mark and the reaper sends it later. (If
    the API dies between the commit and the send, the reaper's unclaimed-job rule sends it after a lease.)
    The answer's waiting reason comes from `queue_view` (a recent view, no read) when given; `key_digest`, the
    hash of the request's key, is checked again as the job is stored (see service.auth.Authentication)."""
    job, created = jobs.submit_job(session, tenant=tenant, spec=spec, idempotency_key=idempotency_key,
                                   settings=settings, enqueued_at=utcnow(), key_digest=key_digest)
    session.commit()
    if created:
        try:
            enqueue_training(job.id, queue=job.queue, settings=settings)
        except Exception as exc:  # the broker is down: the reaper sends it again once it is back
            log.warning("job.enqueue_failed job_id=%s error=%s", job.id, exc)
            job.enqueued_at = None
            session.commit()
    view = queue_view.get(session, settings=settings) if queue_view is not None and job.status == "queued" else None
    return jobs.job_read(session, job, view=view, settings=settings), created


class Reaper:
    """The API's housekeeping pass: put back jobs whose worker was lost, send what the broker never got or lost.

    After a database outage it leaves expired leases alone for one lease period: workers cut off from the database
    kept training and renew their leases as soon as it is back, and must not lose their jobs to a reaper that
    merely saw the outage first (an outage of any length never costs a job an attempt)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._in_outage = False
        self._reap_leases_after = 0.0

    def run_once(self) -> int:
        """One pass; returns how many jobs it sent."""
        try:
            return self._pass()
        except Exception as exc:
            if is_transient(exc) and not self._in_outage:
                self._in_outage = True
                log.warning("reaper.database_unavailable error=%s", exc.__class__.__name__)
            raise

    def _pass(self) -> int:
        settings = self.settings
        to_send = dict(with_retry(jobs.unsent_jobs, attempts=1))
        if self._in_outage:
            self._in_outage = False
            self._reap_leases_after = time.monotonic() + settings.lease_seconds
            log.info("reaper.database_back: expired leases are left to their workers for %d s",
                     settings.lease_seconds)
        if time.monotonic() >= self._reap_leases_after:
            # A job just put back by the lease check is also "unsent" until send_job marks it: send it once.
            to_send.update(with_retry(lambda s: jobs.reap_expired_leases(s, settings=settings)))
        to_send.update(with_retry(lambda s: unclaimed_jobs(s, settings=settings)))
        with_retry(jobs.forget_old_submissions)
        for job_id in to_send:
            log.info("job.resend job_id=%s", job_id)
        sent = sum(send_job(job_id, queue=queue, settings=settings) for job_id, queue in to_send.items())
        # Sweeps go on even if a worker died between a trial's end and asking for the next (or the API restarted).
        return sent + sweeps.advance_running_sweeps(settings)


async def reaper_loop(settings: Settings) -> None:
    """Runs for the API's lifetime (each replica: the row locks keep two from sending one job twice)."""
    reaper = Reaper(settings)
    while True:
        await asyncio.sleep(settings.reaper_interval_seconds)
        try:
            await anyio.to_thread.run_sync(reaper.run_once)
        except Exception as exc:
            if is_transient(exc):  # the database is away: said once by run_once, tried again next pass
                continue
            log.exception("reaper.failed")
