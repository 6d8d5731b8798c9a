"""Packing a run into checkpoint files and back: the weights file /predict loads, and the state file an exact
resume needs (optimizer, scheduler, RNGs, loop counters). The bytes are service.checkpoint_format's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from service.checkpoint_format import read_state, read_weights, write_state, write_weights
from worker.data import TrainData

STATE_FORMAT = 1
Scheduler = LRScheduler | ReduceLROnPlateau


def pack_weights(model: nn.Module | Mapping[str, torch.Tensor], data: TrainData, *, step: int, epoch: int) -> bytes:
    """A weights file of ``model`` (or a state_dict kept earlier) with what /predict needs to use it."""
    tensors = dict(model.state_dict() if isinstance(model, nn.Module) else model)
    meta = {
        "task": data.task,
        "classes": data.classes,
        "mean": None if data.mean is None else data.mean.flatten().tolist(),
        "std": None if data.std is None else data.std.flatten().tolist(),
        "input_shape": list(data.x_train.shape[1:]),
        "step": step,
        "epoch": epoch,
    }
    return write_weights(tensors, meta)


def load_weights(weights: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's state_dict (CPU tensors) and its trainserve metadata (task, classes, mean, std, ...)."""
    return read_weights(weights)


def pack_state(optimizer: torch.optim.Optimizer, scheduler: Scheduler | None, order: torch.Generator,
               device: torch.device, loop: dict[str, Any]) -> bytes:
    """A state file: optimizer tensors and scalars, scheduler, both RNGs, and the loop's counters ``loop``."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}  # non-tensor optimizer state (e.g. SGD's momentum_buffer=None)
    for index, per_param in opt["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.data_order"] = order.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {
        "format": STATE_FORMAT,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        **loop,
    }
    return write_state(tensors, meta)


def restore_state(state: bytes, *, optimizer: torch.optim.Optimizer, scheduler: Scheduler | None,
                  order: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Load a state file into the optimizer, scheduler and RNGs; return the loop's counters."""
    tensors, meta = read_state(state)
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"training state format {meta.get('format')} is not {STATE_FORMAT}")
    optimizer.load_state_dict(_optimizer_state_dict(tensors, meta))
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    order.set_state(tensors["rng.data_order"])
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return meta


def _optimizer_state_dict(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (Adam's betas) into lists: give PyTorch back the types it wrote.
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
