"""Where a training job meets its sweep: pruning decisions at epoch ends, and asking for the next trials once a
trial has ended. A job that is not a sweep trial (or whose sweep has no pruner) pays one indexed read."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from sqlalchemy import select

from service import sweeps
from service.db import with_retry
from service.models import FINISHED_STATUSES, Job
from service.settings import Settings
from worker.engine import Point
from worker.recorder import BackgroundWriter
from worker.writes import write_until_done

log = logging.getLogger(__name__)

OnPoints = Callable[[list[Point]], None]


class PruneWatch:
    """Wraps fit()'s on_points: after an epoch's points are written (in the writer's order), asks the sweep's
    pruner; a pruned trial is told to stop, and ends with status `pruned`."""

    def __init__(self, *, job_id: str, on_points: OnPoints, writer: BackgroundWriter, stop: Callable[[], None]):
        self.job_id, self.on_points, self.writer, self.stop = job_id, on_points, writer, stop
        self.pruned = False

    def __call__(self, points: list[Point]) -> None:
        self.on_points(points)
        # Every epoch end carries an epoch_time_s point, beside the objective's value for that epoch.
        epochs = sorted({p.epoch for p in points if p.name == "epoch_time_s"})
        if not epochs or self.pruned:
            return
        # Decided before training goes on (the epoch's points stored first), so a pruned trial stops at the
        # next step however fast it trains; only sweep trials with a pruner wait for this read.
        self.writer.flush()
        for epoch in epochs:
            decide = partial(sweeps.should_prune, job_id=self.job_id, epoch=epoch)
            if write_until_done(lambda session, _retry: decide(session), what="pruning decision"):
                self.pruned = True
                self.stop()
                return


def watch_pruning(job_id: str, on_points: OnPoints, *, writer: BackgroundWriter, sweep_id: str | None,
                  stop: Callable[[], None]) -> OnPoints:
    """on_points itself, or wrapped in a PruneWatch when the job is a trial of a sweep with a pruner (a job of no
    sweep is known from its claimed row: no query)."""
    if sweep_id is None or write_until_done(
            lambda s, _retry: sweeps.pruning_metric(s, job_id=job_id), what="pruner") is None:
        return on_points
    return PruneWatch(job_id=job_id, on_points=on_points, writer=writer, stop=stop)


def after_job(job_id: str, status: str | None, *, settings: Settings) -> None:
    """A trial has ended: its sweep asks for the next trials (or finishes). Never fails the task: the API's
    reaper advances running sweeps too."""
    if status not in FINISHED_STATUSES:
        return
    try:
        sweep_id = with_retry(lambda s: s.scalar(select(Job.sweep_id).where(Job.id == job_id)))
        if sweep_id is not None:
            sweeps.advance_and_send(sweep_id, settings=settings)
    except Exception:
        log.exception("sweep.advance_failed job_id=%s", job_id)
