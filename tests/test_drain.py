"""A worker's warm shutdown (SIGTERM) hands every job it trains back to the queue at the job's next step, whenever
the signal lands relative to the job's start: worker.tasks.drain_all and the registration of a job's heartbeat."""

from __future__ import annotations

import threading

import pytest

from service.settings import Settings
from worker import tasks


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    # drain_all marks the whole process as stopping, for good: each test gets a process that was never told to.
    monkeypatch.setattr(tasks, "_draining", threading.Event())
    monkeypatch.setattr(tasks, "_active_heartbeats", set())


def heartbeat(job_id: str) -> tasks.Heartbeat:
    return tasks.Heartbeat(job_id=job_id, owner="w1", settings=Settings())  # never started: flags only


def test_a_job_training_when_the_worker_is_told_to_stop_is_handed_back() -> None:
    running, other = heartbeat("running"), heartbeat("other")
    tasks._track(running)
    assert not running.stop_training.is_set()
    tasks.drain_all()
    assert running.stop_training.is_set() and running.reason == "drained"
    assert not other.stop_training.is_set()  # only what this process trains


def test_a_job_that_starts_just_after_the_stop_signal_is_handed_back_too() -> None:
    # The signal landed between the job's claim and its heartbeat's registration (seen in CI: the job then
    # trained on for minutes and held the worker's shutdown).
    tasks.drain_all()
    late = heartbeat("late")
    tasks._track(late)
    assert late.stop_training.is_set() and late.reason == "drained"
