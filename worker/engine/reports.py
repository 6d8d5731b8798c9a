"""What fit() reports and returns: points, progress, checkpoint blobs, the result, and divergence."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal


@dataclass(slots=True)
class Point:
    name: str
    step: int  # optimizer steps done; epoch-level points carry the step at the end of their epoch
    epoch: int  # 1-based
    value: float
    time: datetime  # UTC


@dataclass(slots=True)
class Progress:
    epoch: int
    epochs: int
    step: int
    total_steps: int
    elapsed_s: float


@dataclass
class CheckpointBlob:
    step: int
    epoch: int  # epochs completed (the last one possibly cut short by max_steps when is_final)
    weights: bytes  # safetensors: the model's state_dict on CPU, metadata["trainserve"] = JSON for /predict
    # safetensors: optimizer, scheduler, RNG and loop state for an exact resume. Empty for a best-weights blob:
    # the weights of an earlier, better epoch, written at the next checkpoint; nothing resumes from it.
    state: bytes
    metrics: dict[str, float]  # the epoch's metrics: train_loss (epoch mean), val_loss, ...
    monitor: str
    monitor_value: float | None
    is_final: bool

    @property
    def resumable(self) -> bool:
        return bool(self.state)


@dataclass
class FitResult:
    status: Literal["succeeded", "cancelled", "early_stopped"]
    steps: int
    epochs: int
    final_metrics: dict[str, float]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the first bad step and suggests a fix."""

    def __init__(self, *, step: int, epoch: int, value: float, lr: float) -> None:
        self.step, self.epoch, self.value, self.lr = step, epoch, value, lr
        what = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        super().__init__(
            f"loss became {what} at step {step} (epoch {epoch}); try a lower learning rate (optimizer.lr is {lr})"
        )
