"""Turning a spec into PyTorch objects: the device, the loss, the optimizer, the LR scheduler, the step plan
and the CPU thread count fit() trains with."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from service import spec as S
from service.plan import StepPlan, plan_steps
from service.spec import JobSpec, Training
from worker.data import TrainData


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error, not a silent CPU run."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but this worker has no CUDA device")
    return device


def _weight_tensor(values: list[float] | None, data: TrainData, what: str) -> torch.Tensor | None:
    if values is None:
        return None
    if data.classes is not None and len(values) != len(data.classes):
        raise ValueError(f"loss.{what} has {len(values)} values but the data has {len(data.classes)} classes")
    return torch.tensor(values, dtype=torch.float32)


def build_loss(spec: JobSpec, data: TrainData, device: torch.device | str) -> nn.Module:
    """The spec's loss as its PyTorch module, with class weights checked against the data's classes."""
    cfg = spec.loss
    loss: nn.Module
    if isinstance(cfg, S.MSELoss):
        loss = nn.MSELoss(reduction=cfg.reduction)
    elif isinstance(cfg, S.L1Loss):
        loss = nn.L1Loss(reduction=cfg.reduction)
    elif isinstance(cfg, S.SmoothL1Loss):
        loss = nn.SmoothL1Loss(reduction=cfg.reduction, beta=cfg.beta)
    elif isinstance(cfg, S.HuberLoss):
        loss = nn.HuberLoss(reduction=cfg.reduction, delta=cfg.delta)
    elif isinstance(cfg, S.BCEWithLogitsLoss):
        pos_weight = None if cfg.pos_weight is None else torch.tensor(cfg.pos_weight, dtype=torch.float32)
        loss = nn.BCEWithLogitsLoss(reduction=cfg.reduction, pos_weight=pos_weight)
    elif isinstance(cfg, S.CrossEntropyLoss):
        loss = nn.CrossEntropyLoss(
            weight=_weight_tensor(cfg.weight, data, "weight"),
            reduction=cfg.reduction,
            label_smoothing=cfg.label_smoothing,
        )
    elif isinstance(cfg, S.NLLLoss):
        loss = nn.NLLLoss(weight=_weight_tensor(cfg.weight, data, "weight"), reduction=cfg.reduction)
    else:  # pragma: no cover - the spec's discriminated union admits nothing else
        raise TypeError(f"unsupported loss {cfg.type}")
    return loss.to(device)


def build_optimizer(spec: JobSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The spec's optimizer, on the implementation its ``foreach``/``fused`` name.

    Unset, they mean what they mean in PyTorch (its default implementation for the device), so a job trains step
    for step like the same optimizer in a hand-written loop; ``fused: true`` is the faster opt-in.
    """
    cfg = spec.optimizer
    impl: dict[str, Any] = {key: value for key in ("foreach", "fused")
                            if (value := getattr(cfg, key, None)) is not None}
    params = list(params)
    if isinstance(cfg, S.Adam):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                amsgrad=cfg.amsgrad, **impl)
    if isinstance(cfg, S.AdamW):
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 amsgrad=cfg.amsgrad, **impl)
    if isinstance(cfg, S.SGD):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, **impl)
    if isinstance(cfg, S.RMSprop):
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, centered=cfg.centered, **impl)
    raise ValueError(f"unsupported optimizer {cfg.type}")  # pragma: no cover


def build_scheduler(
    spec: JobSpec, optimizer: torch.optim.Optimizer, plan: StepPlan
) -> LRScheduler | ReduceLROnPlateau | None:
    """The spec's LR scheduler; lengths left out default to the whole run in units of its ``interval``."""
    cfg = spec.scheduler
    if cfg is None:
        return None
    if isinstance(cfg, S.StepLR):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if isinstance(cfg, S.ExponentialLR):
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    if isinstance(cfg, S.CosineAnnealingLR):
        t_max = cfg.T_max or (plan.epochs if cfg.interval == "epoch" else plan.total_steps)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=cfg.eta_min)
    if isinstance(cfg, S.OneCycleLR):
        total = cfg.total_steps or plan.total_steps
        if total < plan.total_steps:
            # OneCycleLR raises once stepped past its length: say so before training rather than mid-run.
            raise ValueError(f"scheduler.total_steps is {total} but the run takes {plan.total_steps} steps")
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.max_lr, total_steps=total, pct_start=cfg.pct_start,
            anneal_strategy=cfg.anneal_strategy, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
        )
    if isinstance(cfg, S.ReduceLROnPlateau):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.mode, factor=cfg.factor, patience=cfg.patience, threshold=cfg.threshold,
            min_lr=cfg.min_lr,
        )
    raise ValueError(f"unsupported scheduler {cfg.type}")  # pragma: no cover


def plan_for(training: Training, n_train: int, n_val: int) -> StepPlan:
    """The step plan for rows already split: load_data has taken the validation rows out."""
    plan = plan_steps(training.model_copy(update={"validation_split": 0.0}), n_train)
    return dataclasses.replace(plan, n_val=n_val)


# Below this much work per optimizer step (about 6 x parameters x batch FLOPs), a second CPU thread costs more in
# synchronisation than it saves; above it PyTorch's default thread count is kept.
SINGLE_THREAD_MAX_FLOPS_PER_STEP = 5e7


def cpu_threads_for(model: nn.Module, batch_size: int, requested: int | None = None) -> int:
    """The intra-op thread count fit() trains with on the CPU: the spec's training.cpu_threads when it names one,
    never more than the process's own count (a job takes no more cores than its worker has); else one thread for
    a small model, the process's count for the rest."""
    if requested is not None:
        return min(requested, torch.get_num_threads())
    flops = 6 * sum(p.numel() for p in model.parameters()) * batch_size
    return 1 if flops < SINGLE_THREAD_MAX_FLOPS_PER_STEP else torch.get_num_threads()
