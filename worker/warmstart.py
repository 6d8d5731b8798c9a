"""Warm start in the worker: load exactly what service.warmstart checked and pinned in the job's report.

A fresh run loads the matching tensors of the source checkpoint over the seeded build (so the same source,
spec and seed give the same weights), trains on inputs normalized with the SOURCE's statistics (its checkpoints
store them, so /predict on this job reads inputs as the source did), freezes the listed layers, and may carry
the source's optimizer state. A resumed run (a lost worker) continues from its own checkpoint: it re-freezes and
re-normalizes, but loads nothing from the source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import nn

from service.checkpoint_format import read_state, read_weights, weights_metadata
from service.checkpoints import sha256
from service.models import Checkpoint, Job
from service.schemas import WarmStartReport
from service.spec import JobSpec
from service.tabular import Table
from service.warmstart import tensor_path
from worker.data import TrainData, load_data
from worker.engine.state import _optimizer_state_dict
from worker.writes import write_until_done

log = logging.getLogger(__name__)


class WarmStartFailed(RuntimeError):
    """The pinned source is gone or changed since the job was checked."""


@dataclass
class WarmStart:
    """What a run takes from its init_from source; an empty one (no init_from) changes nothing."""

    report: WarmStartReport | None = None
    weights: dict[str, torch.Tensor] | None = None  # None on a resumed run: its own checkpoint wins
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    optimizer_state: bytes | None = None

    @classmethod
    def prepare(cls, job_id: str, spec: JobSpec, *, resume: tuple[bytes, bytes] | None) -> WarmStart:
        if spec.init_from is None:
            return cls()
        # However long the database is away: an outage never fails a job.
        return write_until_done(lambda session, _retry: _read_source(session, job_id, spec, resume=resume),
                                what="warm start")

    def load_data(self, spec: JobSpec, *, dataset_loader: Callable[[str], Table]) -> TrainData:
        """The job's data, normalized with the source's statistics (or left raw when the source trained raw)."""
        if self.report is None or self.report.normalization == "own":
            return load_data(spec, dataset_loader=dataset_loader)
        raw = spec.model_copy(update={"training": spec.training.model_copy(update={"normalize": False})})
        data = load_data(raw, dataset_loader=dataset_loader)
        if self.mean is None or self.std is None:
            return data
        data.x_train = _normalize(data.x_train, self.mean, self.std)
        data.x_val = None if data.x_val is None else _normalize(data.x_val, self.mean, self.std)
        data.mean, data.std = self.mean, self.std  # written into every checkpoint, read back by /predict
        return data

    def apply(self, model: nn.Sequential) -> nn.Sequential:
        """Load the checked tensors over the seeded build (fresh runs only), then freeze the listed layers."""
        if self.report is None:
            return model
        if self.weights is not None:
            wanted = set(self.report.loaded)
            tensors = {name: t for name, t in self.weights.items() if tensor_path(name) in wanted}
            if len(tensors) != len(wanted):
                raise WarmStartFailed(f"checkpoint {self.report.checkpoint_id} no longer holds the tensors checked")
            model.load_state_dict(tensors, strict=False)
            log.info("warmstart.loaded source_job=%s checkpoint=%s tensors=%d skipped=%d", self.report.job_id,
                     self.report.checkpoint_id, len(tensors), len(self.report.skipped))
        for index in self.report.frozen:
            for param in model[index].parameters():
                param.requires_grad_(False)  # fit() hands the optimizer trainable parameters only
        return model

    def init_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Carry the source's optimizer state (its moments, step counts), keeping this job's hyperparameters."""
        if self.optimizer_state is None:
            return
        tensors, meta = read_state(self.optimizer_state)
        saved = _optimizer_state_dict(tensors, meta)
        groups = optimizer.state_dict()["param_groups"]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, values in saved["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and (
                        index >= len(params) or value.shape != params[index].shape):
                    raise WarmStartFailed(f"the source's optimizer state {key} of parameter {index} does not fit")
        # Only the state: lr, betas, weight decay (and a scheduler's initial_lr) stay this spec's.
        optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})
        log.info("warmstart.optimizer_state params=%d", len(saved["state"]))


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # As load_data and /predict do it: per flattened feature, then back to the sample shape.
    flat = x.reshape(x.shape[0], -1)
    return ((flat - mean) / std).reshape(x.shape)


def _stats(meta: dict[str, object]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    mean, std = meta.get("mean"), meta.get("std")
    if mean is None or std is None:
        return None, None
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _read_source(session: Session, job_id: str, spec: JobSpec, *,
                 resume: tuple[bytes, bytes] | None) -> WarmStart:
    found = session.scalar(select(Job.report).where(Job.id == job_id))
    if not found or not found.get("init_from"):
        raise WarmStartFailed(f"job {job_id} has init_from but no checked source in its report")
    report = WarmStartReport.model_validate(found["init_from"])
    if resume is not None:  # the job's own checkpoint holds the weights and the statistics it trains with
        mean, std = _stats(weights_metadata(resume[0]))
        return WarmStart(report, None, mean, std)
    ckpt = session.scalar(select(Checkpoint).where(Checkpoint.id == report.checkpoint_id,
                                                   Checkpoint.job_id == report.job_id))
    if ckpt is None:
        raise WarmStartFailed(f"init_from: checkpoint {report.checkpoint_id} of job {report.job_id} no longer "
                              "exists (deleted since this job was checked)")
    if sha256(ckpt.weights) != ckpt.weights_sha256:
        raise WarmStartFailed(f"init_from: checkpoint {ckpt.id} is corrupt (SHA-256 mismatch)")
    weights, meta = read_weights(ckpt.weights)
    mean, std = _stats(meta) if report.normalization == "source" else (None, None)
    state = None
    if report.optimizer_state and spec.init_from is not None and spec.init_from.optimizer_state:
        if not ckpt.state or sha256(ckpt.state) != ckpt.state_sha256:
            raise WarmStartFailed(f"init_from: checkpoint {ckpt.id} has no readable optimizer state")
        state = bytes(ckpt.state)
    return WarmStart(report, weights, mean, std, state)
