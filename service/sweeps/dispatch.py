"""Sending a sweep's new trials to the broker, from whichever process advanced it (API or worker)."""

from __future__ import annotations

import logging

from service.db import with_retry
from service.jobs import mark_enqueued
from service.queue import enqueue_training
from service.settings import Settings
from service.sweeps.core import Send, advance_sweep, running_sweep_ids

log = logging.getLogger(__name__)


def send_trials(send: Send, *, settings: Settings) -> int:
    """After commit: hand each new trial to the broker. One the broker did not take stays queued with no
    enqueued_at, and the API's reaper sends it again."""
    sent = 0
    for job_id, queue in send:
        try:
            enqueue_training(job_id, queue=queue)
        except Exception as exc:
            log.warning("sweep.trial_send_failed job_id=%s error=%s", job_id, exc)
            continue
        with_retry(lambda s: mark_enqueued(s, job_id=job_id))
        sent += 1
    return sent


def advance_and_send(sweep_id: str, *, settings: Settings) -> int:
    """Advance one sweep in its own transaction, then send what it submitted."""
    send = with_retry(lambda s: advance_sweep(s, sweep_id=sweep_id, settings=settings))
    return send_trials(send, settings=settings)


def advance_running_sweeps(settings: Settings) -> int:
    """The reaper's pass: every running sweep asks for what it lacks (nothing stalls if a worker died between a
    trial's end and its advance), and a sweep whose trials have all ended is finished."""
    sent = 0
    for sweep_id in with_retry(running_sweep_ids):
        try:
            sent += advance_and_send(sweep_id, settings=settings)
        except Exception:
            log.exception("sweep.advance_failed sweep_id=%s", sweep_id)
    return sent
