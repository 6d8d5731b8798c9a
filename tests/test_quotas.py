"""Submission quotas hold: deleting jobs does not reset the per-minute count (a job deleted within the window leaves a submission row), and parallel submissions on
PostgreSQL cannot pass the running-job cap (count-then-insert runs under a per-tenant lock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service.db import is_transient
from service.errors import JobNotFound, QuotaExceeded
from service.jobs import (
    QUOTA_WINDOW,
    cancel_job,
    delete_job,
    forget_old_submissions,
    get_job_or_raise,
    list_jobs,
    submit_job,
)
from service.models import Job, Submission, utcnow
from service.settings import Settings
from service.spec import SEED_EXAMPLE, JobSpec
from tests.conftest import PG_ADMIN_URL, migrated_sessions

SPEC = JobSpec.model_validate(SEED_EXAMPLE)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, tmp_path_factory, "quotas")


def _submit(sessions: sessionmaker[Session], settings: Settings, tenant: str = "t") -> str:
    with sessions() as session:
        job, created = submit_job(session, tenant=tenant, spec=SPEC, idempotency_key=None, settings=settings)
        session.commit()
        assert created
        return job.id


def test_deleting_jobs_does_not_reset_the_per_minute_count(sessions: sessionmaker[Session]) -> None:
    settings = Settings(max_submissions_per_minute=3, max_running_jobs_per_tenant=100)
    for _ in range(3):
        job_id = _submit(sessions, settings)
        with sessions() as session:
            cancel_job(session, tenant="t", job_id=job_id)
            delete_job(session, tenant="t", job_id=job_id)
            session.commit()
        with sessions() as session, pytest.raises(JobNotFound):
            get_job_or_raise(session, tenant="t", job_id=job_id)  # deleted is deleted for the tenant
    with sessions() as session:
        assert list_jobs(session, tenant="t", status=None, limit=10, cursor=None, settings=settings).items == []
    with pytest.raises(QuotaExceeded, match="3 jobs submitted in the last minute, the limit is 3"):
        _submit(sessions, settings)
    _submit(sessions, settings, tenant="other")  # another tenant's count is its own


def test_submissions_older_than_the_window_stop_counting_and_the_reaper_forgets_them(
        sessions: sessionmaker[Session]) -> None:
    settings = Settings(max_submissions_per_minute=2, max_running_jobs_per_tenant=100)
    with sessions() as session:  # two submissions from just over a minute ago
        old = utcnow() - QUOTA_WINDOW - (QUOTA_WINDOW / 60)
        session.add_all([Submission(tenant="t", created_at=old), Submission(tenant="t", created_at=old)])
        session.commit()
    _submit(sessions, settings)
    _submit(sessions, settings)  # the two old ones did not count
    with pytest.raises(QuotaExceeded, match="2 jobs submitted in the last minute"):
        _submit(sessions, settings)
    with sessions() as session:
        assert forget_old_submissions(session) == 2
        session.commit()
        assert session.scalar(select(func.count()).select_from(Submission)) == 0


@pytest.mark.postgres
@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "libpq-without-pipeline"])
def test_parallel_submissions_never_pass_the_running_job_cap(sessions: sessionmaker[Session], pipelined: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # On PostgreSQL the lock and the counts go out in one round trip where libpq can pipeline, one each otherwise.
    monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: pipelined))
    settings = Settings(max_running_jobs_per_tenant=3, max_submissions_per_minute=1000)
    n = 16
    start = threading.Barrier(n)
    outcomes: list[str] = []

    def submit() -> None:
        start.wait()
        try:
            _submit(sessions, settings)
            outcomes.append("created")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with sessions() as session:
        queued = session.scalar(select(func.count()).select_from(Job).where(Job.tenant == "t"))
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * (n - 3)
    assert queued == 3


@pytest.mark.postgres
@pytest.mark.parametrize("sessions", ["postgres"], indirect=True)  # PostgreSQL's pipelined quota read
def test_a_connection_lost_during_the_quota_read_is_a_transient_database_error(
        sessions: sessionmaker[Session]) -> None:
    # What the API answers 503 with Retry-After for (service.db.is_transient), never a 500.
    with sessions() as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until it has ended
        with pytest.raises(DBAPIError) as lost:
            submit_job(session, tenant="t", spec=SPEC, idempotency_key=None, settings=Settings())
        assert is_transient(lost.value)
    _submit(sessions, Settings())  # the pool hands out a working connection next


@pytest.mark.postgres
@pytest.mark.parametrize("sessions", ["postgres"], indirect=True)  # SQLite's writers never overlap
def test_a_submission_that_loses_an_idempotency_race_answers_with_the_winners_job(
        sessions: sessionmaker[Session]) -> None:
    # The loser read no job under its key (the winner had not committed), waited for the tenant's quota lock, and
    # its INSERT meets the winner's row: it answers with that job, not an error, and stores nothing.
    settings = Settings(max_running_jobs_per_tenant=100, max_submissions_per_minute=1000)
    winner = sessions()
    won, created = submit_job(winner, tenant="t", spec=SPEC, idempotency_key="k", settings=settings)
    assert created
    winner_pid = winner.execute(text("SELECT pg_backend_pid()")).scalar_one()
    answers: list[tuple[str, bool]] = []

    def lose() -> None:
        with sessions() as session:
            job, was_created = submit_job(session, tenant="t", spec=SPEC, idempotency_key="k", settings=settings)
            session.commit()
            answers.append((job.id, was_created))

    loser = threading.Thread(target=lose)
    loser.start()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        deadline = time.monotonic() + 30
        while not admin.execute("SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                (winner_pid,)).fetchone():
            assert time.monotonic() < deadline, "the second submission never waited for the first one's lock"
            time.sleep(0.01)
    winner.commit()
    winner.close()
    loser.join(timeout=30)
    assert answers == [(won.id, False)]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.tenant == "t")) == 1
