"""The live progress bar shown by ``jobs.wait(progress=True)``, ``jobs.stream_metrics`` and the CLI.

Drawn with rich on stderr so stdout stays clean for ``--json`` and piped output.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from trainserve.models import Job

log = logging.getLogger(__name__)


class JobProgress:
    """A one-line bar: job, status, epoch, step of total, loss and ETA; feed it jobs or single values."""

    def __init__(self, job_id: str, *, console: Console | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("epoch {task.fields[epoch]}"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task: TaskID | None = None
        self._job_id = job_id
        self._loss = "-"
        self._epoch = "-"
        self._status = "queued"

    def __enter__(self) -> Self:
        if self.enabled:
            self._bar.start()
            self._task = self._bar.add_task(
                f"job {self._job_id[:8]}", total=None, status=self._status, epoch=self._epoch, loss=self._loss
            )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self._bar.stop()

    def update_job(self, job: Job) -> None:
        """Redraw from a job's progress, status and last train_loss."""
        p = job.progress
        if p.epochs:
            self._epoch = f"{p.epoch}/{p.epochs}"
        elif p.epoch:
            self._epoch = str(p.epoch)
        loss = job.last_metrics.get("train_loss")
        if loss is not None:
            self._loss = f"{loss:.4g}"
        self._status = job.status
        self._draw(step=p.step, total=p.total_steps)

    def update(
        self,
        *,
        step: int | None = None,
        total: int | None = None,
        epoch: int | None = None,
        epochs: int | None = None,
        loss: float | None = None,
        status: str | None = None,
    ) -> None:
        """Redraw from the pieces a metrics stream delivers one at a time."""
        if epoch is not None:
            self._epoch = f"{epoch}/{epochs}" if epochs else str(epoch)
        if loss is not None:
            self._loss = f"{loss:.4g}"
        if status is not None:
            self._status = status
        self._draw(step=step, total=total)

    def _draw(self, *, step: int | None, total: int | None) -> None:
        if not self.enabled or self._task is None:
            return
        if total:
            self._bar.update(self._task, total=total)
        if step is not None:
            self._bar.update(self._task, completed=step)
        self._bar.update(self._task, status=self._status, epoch=self._epoch, loss=self._loss)
