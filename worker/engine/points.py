"""The one owner of fit()'s buffered points: step losses still on the device, points read but not yet handed
to ``on_points`` (the outbox), and the throttles that decide when they leave.

Per step the loop only appends a loss tensor, so no step waits on the device. Losses are read in one go at an
epoch's end, or mid-epoch once FLUSH_EVERY_POINTS logged steps are waiting (so few tensors pile up) or FLUSH_EVERY_S
has passed, so a long epoch still shows live progress. Points and progress leave at most every FLUSH_EVERY_S (and
always before a checkpoint, so a resume from it loses none): each hand-over is a database write, which with short
epochs or a point every step would cost more than training.
When a loss is not finite, every point before it, held ones included, is handed over before the error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

import torch

from worker.engine.reports import Point, Progress, TrainingDiverged

FLUSH_EVERY_POINTS = 200
FLUSH_EVERY_S = 1.0

Clock = Callable[[], float]


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


class PointBuffer:
    def __init__(self, *, first_step: int, on_points: Callable[[list[Point]], None],
                 on_progress: Callable[[Progress], None] | None, clock: Clock, wall: Clock) -> None:
        self.on_points, self.on_progress, self.clock, self.wall = on_points, on_progress, clock, wall
        self.losses: list[torch.Tensor] = []  # every step's loss since the last read
        self.first_step = first_step  # the step of losses[0]
        self.logged: list[tuple[int, int, float, float]] = []  # (index in losses, step, lr, unix time)
        self.epoch_values: list[float] = []  # every loss of the current epoch read so far, for its mean
        self.outbox: list[Point] = []
        self.last_read = self.last_send = clock()

    def add_loss(self, loss: torch.Tensor, *, step: int, lr: float | None) -> None:
        """One step's loss; ``lr`` (the lr that step used) when the step is logged as points."""
        self.losses.append(loss.detach())
        if lr is not None:
            self.logged.append((len(self.losses) - 1, step, lr, self.wall()))

    def due(self) -> bool:
        """Whether the waiting losses should be read mid-epoch."""
        return len(self.logged) >= FLUSH_EVERY_POINTS or self.clock() - self.last_read >= FLUSH_EVERY_S

    def read_losses(self, epoch: int, *, lr: float) -> None:
        """Read the waiting losses in one go; the logged steps' points join the outbox.

        Raises TrainingDiverged naming the first non-finite loss, after handing ``on_points`` every point before it.
        """
        losses, logged, first = self.losses, self.logged, self.first_step
        self.losses, self.logged, self.first_step = [], [], first + len(losses)
        self.last_read = self.clock()
        if not losses:
            return
        values: list[float] = torch.stack(losses).float().tolist() if len(losses) > 1 else [losses[0].item()]
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        for index, step, step_lr, ts in logged:
            if bad is not None and index >= bad:
                break
            when = utc(ts)
            self.outbox += (Point("train_loss", step, epoch, values[index], when), Point("lr", step, epoch, step_lr, when))
        if bad is not None:
            self._hand_over_points()
            raise TrainingDiverged(step=first + bad, epoch=epoch, value=values[bad], lr=lr)
        self.epoch_values.extend(values)

    def add(self, points: list[Point]) -> None:
        self.outbox += points

    def take_epoch_mean(self) -> float | None:
        """The mean of the epoch's losses (all read by now), and a fresh start for the next epoch."""
        values, self.epoch_values = self.epoch_values, []
        return math.fsum(values) / len(values) if values else None

    def send(self, progress: Progress, *, force: bool) -> None:
        """Hand over the outbox and ``progress``, unless not forced and the last send was under FLUSH_EVERY_S ago."""
        if not force and self.clock() - self.last_send < FLUSH_EVERY_S:
            return
        self._hand_over_points()
        if self.on_progress is not None:
            self.on_progress(progress)
        self.last_send = self.clock()

    def _hand_over_points(self) -> None:
        if self.outbox:
            points, self.outbox = self.outbox, []
            self.on_points(points)
