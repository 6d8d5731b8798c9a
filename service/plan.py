"""How a run is laid out in steps: shared by the static check (to report and cap) and the engine (to run)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.spec import Training


@dataclass(frozen=True)
class StepPlan:
    n_train: int
    n_val: int
    steps_per_epoch: int  # the last, partial batch of an epoch is kept
    epochs: int  # epochs started, the last one possibly cut short by max_steps
    total_steps: int


def plan_steps(training: Training, n_rows: int) -> StepPlan:
    n_val = int(n_rows * training.validation_split)
    n_train = n_rows - n_val
    steps_per_epoch = max(1, math.ceil(n_train / training.batch_size))
    if training.epochs is not None:
        total = training.epochs * steps_per_epoch
        if training.max_steps is not None:
            total = min(total, training.max_steps)
    else:
        assert training.max_steps is not None  # Training's validator guarantees one of the two
        total = training.max_steps
    return StepPlan(
        n_train=n_train,
        n_val=n_val,
        steps_per_epoch=steps_per_epoch,
        epochs=math.ceil(total / steps_per_epoch),
        total_steps=total,
    )
