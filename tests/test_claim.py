"""A worker's claim of a delivered job (worker.tasks.claim_job), on SQLite and PostgreSQL: a queued job is taken
once, with its lease; every other state the delivery can find (another worker's live lease, a cancel, the attempts
spent, a finished or missing job) takes nothing; `fresh` says whether the job ever ran before."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.models import Job, utcnow
from service.settings import Settings
from service.spec import SEED_EXAMPLE
from tests.conftest import migrated_sessions
from worker.tasks import claim_job

SETTINGS = Settings(lease_seconds=60, max_attempts=3)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, tmp_path_factory, "claim")


def add_job(sessions: sessionmaker[Session], **columns: Any) -> str:
    with sessions() as session, session.begin():
        job = Job(tenant="t", name="claim", spec=SEED_EXAMPLE, report={}, data_info={"input_shape": [32]},
                  last_metrics={"train_loss": 0.5}, **columns)
        session.add(job)
        session.flush()
        return job.id


def claim(sessions: sessionmaker[Session], job_id: str, owner: str) -> Any:
    with sessions() as session, session.begin():
        return claim_job(session, job_id=job_id, owner=owner, settings=SETTINGS)


def row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_a_queued_job_is_claimed_once_with_its_lease(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions)
    before = utcnow()

    got = claim(sessions, job_id, "w1")

    assert got is not None and got.fresh and got.attempts == 1
    assert (got.tenant, got.spec, got.data_info, got.last_metrics, got.sweep_id) == (
        "t", SEED_EXAMPLE, {"input_shape": [32]}, {"train_loss": 0.5}, None)
    job = row(sessions, job_id)
    assert (job.status, job.attempts, job.lease_owner, job.error) == ("running", 1, "w1", None)
    started = job.started_at.replace(tzinfo=before.tzinfo) if job.started_at.tzinfo is None else job.started_at
    assert started >= before - timedelta(seconds=1)
    # A second delivery while w1's lease is live takes nothing and changes nothing.
    assert claim(sessions, job_id, "w2") is None
    assert (row(sessions, job_id).lease_owner, row(sessions, job_id).attempts) == ("w1", 1)


def test_a_job_handed_back_is_claimed_again_but_not_fresh(sessions: sessionmaker[Session]) -> None:
    started = utcnow() - timedelta(minutes=5)
    job_id = add_job(sessions, status="queued", started_at=started, attempts=1)

    got = claim(sessions, job_id, "w2")

    assert got is not None and not got.fresh and got.attempts == 2
    job = row(sessions, job_id)
    assert job.started_at is not None and job.started_at.replace(tzinfo=None) == started.replace(tzinfo=None)


def test_a_running_job_whose_lease_expired_goes_to_the_next_worker(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, status="running", started_at=utcnow() - timedelta(minutes=5), attempts=1,
                     lease_owner="lost", lease_expires_at=utcnow() - timedelta(seconds=1))

    got = claim(sessions, job_id, "w2")

    assert got is not None and not got.fresh and got.attempts == 2
    assert row(sessions, job_id).lease_owner == "w2"


@pytest.mark.parametrize(("columns", "status", "error"), [
    ({"cancel_requested": True}, "cancelled", None),
    ({"attempts": 3}, "failed", "gave up after 3 attempts (TRAINSERVE_MAX_ATTEMPTS=3)"),
    ({"status": "succeeded"}, "succeeded", None),
])
def test_nothing_is_claimed_from_a_job_that_must_not_run(sessions: sessionmaker[Session], columns: dict[str, Any],
                                                         status: str, error: str | None) -> None:
    job_id = add_job(sessions, **columns)

    assert claim(sessions, job_id, "w1") is None

    job = row(sessions, job_id)
    assert (job.status, job.error, job.lease_owner) == (status, error, None)
    assert job.attempts == columns.get("attempts", 0)


def test_a_missing_job_is_not_claimed(sessions: sessionmaker[Session]) -> None:
    assert claim(sessions, "0" * 32, "w1") is None
