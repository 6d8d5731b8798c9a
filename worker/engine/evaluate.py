"""Epoch-end judgement: validation metrics, the monitored metrics (early stopping), and the best epoch's
weights held until a checkpoint writes them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

EVAL_CHUNK_ROWS = 4096


@torch.no_grad()
def evaluate(
    model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, amp: contextlib.AbstractContextManager[Any]
) -> dict[str, float]:
    """val_loss plus val_accuracy (classifiers) or val_mae and val_r2 (regressors) on the whole validation set."""
    model.eval()
    try:
        with amp:
            outs = [model(x[i : i + EVAL_CHUNK_ROWS]) for i in range(0, len(x), EVAL_CHUNK_ROWS)]
        out = (outs[0] if len(outs) == 1 else torch.cat(outs)).float()
        names = ["val_loss"]
        values = [criterion(out, y).float()]
        if not y.is_floating_point():  # class labels
            names.append("val_accuracy")
            values.append((out.argmax(dim=1) == y).float().mean())
        elif task == "binary":  # logits: positive means class 1
            names.append("val_accuracy")
            values.append(((out > 0) == (y > 0.5)).float().mean())
        else:
            out = out.reshape(y.shape)
            err = out - y
            ss_res = (err * err).sum(dim=0)
            ss_tot = ((y - y.mean(dim=0)) ** 2).sum(dim=0).clamp_min(torch.finfo(torch.float32).tiny)
            names += ["val_mae", "val_r2"]
            values += [err.abs().mean(), (1 - ss_res / ss_tot).mean()]
        return dict(zip(names, torch.stack(values).tolist()))  # one device sync for all of them
    finally:
        model.train()


@dataclass
class Monitor:
    """A monitored metric with its best value so far and the epochs since it last improved."""

    name: str
    mode: Literal["min", "max"]
    min_delta: float
    patience: int
    best: float | None = None
    bad_epochs: int = 0

    def update(self, value: float) -> None:
        improved = (
            self.best is None
            or (self.mode == "min" and value < self.best - self.min_delta)
            or (self.mode == "max" and value > self.best + self.min_delta)
        )
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1


def available_metric(name: str, available: set[str], what: str) -> str:
    if name in available:
        return name
    # The static check rejects these; a job submitted before it existed still runs on the training loss.
    log.warning("engine.monitor_unavailable %s=%s available=%s: using train_loss", what, name, sorted(available))
    return "train_loss"


def improves(value: float | None, best: float | None, mode: Literal["min", "max"]) -> bool:
    """Strictly better, as service.checkpoints judges the job's best checkpoint."""
    if value is None:
        return False
    return best is None or (value < best if mode == "min" else value > best)


@dataclass
class HeldWeights:
    epoch: int
    step: int
    metrics: dict[str, float]
    value: float
    state_dict: dict[str, torch.Tensor]


class BestWeights:
    """The epoch whose checkpoint-monitor value is the best so far, and its weights while no checkpoint has them.

    A copy of the state_dict tensors is taken only when an improving epoch is not itself a checkpoint, and is
    handed to the next checkpoint (and the last): ``best`` then names the best epoch's weights, not the best
    of the epochs that happened to fall on the checkpoint cadence.
    """

    def __init__(self, mode: Literal["min", "max"], value: float | None = None) -> None:
        self.mode, self.value = mode, value
        self.held: HeldWeights | None = None

    def offer(self, model: nn.Module, value: float | None, *, epoch: int, step: int, metrics: Mapping[str, float],
              checkpointed_now: bool) -> None:
        if not improves(value, self.value, self.mode):
            return
        assert value is not None
        self.value = value
        self.held = None if checkpointed_now else HeldWeights(
            epoch, step, dict(metrics), value, {k: t.detach().clone() for k, t in model.state_dict().items()})

    def take(self) -> HeldWeights | None:
        held, self.held = self.held, None
        return held
