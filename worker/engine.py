"""The training engine: ``fit()`` runs one job's PyTorch loop and reports through callbacks.

Owns the loop itself (batching, forward/backward/step, gradient clipping, mixed precision), the spec ->
loss / optimizer / scheduler builders, per-step and per-epoch metrics, early stopping, divergence detection,
and the two checkpoint blobs: ``weights`` (a safetensors file ``load_state_dict`` takes as is) and ``state``
(a safetensors file with everything else an exact resume needs). It knows nothing of HTTP, SQL or Celery.

The loop is kept to plain PyTorch and is written for speed: the data sits on the device, batches are views
of a once-per-epoch shuffled copy, nothing syncs with the device per step (losses are kept as tensors and
read in one go when points are flushed), and no callback runs per step except ``should_stop()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from service import spec as S
from service.checkpoint_format import read_state, read_weights, write_state, write_weights
from service.plan import StepPlan, plan_steps
from service.spec import JobSpec, Training
from worker.data import TrainData

log = logging.getLogger(__name__)

STATE_FORMAT = 1

# Points are handed to on_points in batches: at each epoch end, and mid-epoch once this many logged steps
# are waiting or this long has passed, so a long epoch still shows live progress.
FLUSH_EVERY_POINTS = 200
FLUSH_EVERY_S = 1.0
# With checkpoint.every_epochs unset: a checkpoint at the end of an epoch once this long has passed since the last.
AUTO_CHECKPOINT_EVERY_S = 10.0
# Above this size a shuffled copy of the training set per epoch costs too much memory: gather per batch.
MAX_EPOCH_GATHER_BYTES = 1 << 30
EVAL_CHUNK_ROWS = 4096

# Fused kernels (one pass over each parameter's state) are what a hand-tuned loop uses, and 15-25 % faster per
# step than foreach on small CPU models. They are not bit-identical to PyTorch's default Adam: on the seed
# article's example the losses stay within ~2e-7 of the hand-written loop's on typical data, but late, nearly
# converged steps can amplify that (5.5e-6 on one random data set of thirteen tried). False: foreach on CPU,
# bit-identical to the default implementation, slower. CUDA always uses fused (RMSprop has no fused kernel).
FUSED_ON_CPU = True
_FUSABLE = (S.SGD, S.Adam, S.AdamW)


# --- what fit() reports ---------------------------------------------------------------------------------


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
    state: bytes  # safetensors: optimizer, scheduler, RNG and loop state for an exact resume
    metrics: dict[str, float]  # the epoch's metrics: train_loss (epoch mean), val_loss, ...
    monitor: str
    monitor_value: float | None
    is_final: bool


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


def _ignore_points(points: list[Point]) -> None:
    pass


def _ignore_checkpoint(blob: CheckpointBlob) -> None:
    pass


def _never() -> bool:
    return False


# --- builders -------------------------------------------------------------------------------------------


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


def build_optimizer(
    spec: JobSpec, params: Iterable[nn.Parameter], *, device: torch.device | str, fused: bool | None = None
) -> torch.optim.Optimizer:
    """The spec's optimizer on the fastest kernels PyTorch has for it (see ``FUSED_ON_CPU``).

    ``fused=None`` picks: fused on CUDA (and on CPU when ``FUSED_ON_CPU``) for SGD/Adam/AdamW, else foreach.
    """
    cfg = spec.optimizer
    dev = torch.device(device)
    if fused is None:
        fused = dev.type == "cuda" or FUSED_ON_CPU
    impl: dict[str, Any] = {"fused": True} if fused and isinstance(cfg, _FUSABLE) else {"foreach": True}
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
                                   momentum=cfg.momentum, centered=cfg.centered, foreach=True)
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


# --- checkpoint blobs -----------------------------------------------------------------------------------


def pack_weights(model: nn.Module, data: TrainData, *, step: int, epoch: int) -> bytes:
    tensors = dict(model.state_dict())
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


def _pack_state(
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | ReduceLROnPlateau | None,
    order: torch.Generator,
    device: torch.device,
    loop: dict[str, Any],
) -> bytes:
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


def _unpack_state(state: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = read_state(state)
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"training state format {meta.get('format')} is not {STATE_FORMAT}")
    return tensors, meta


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


# --- metrics --------------------------------------------------------------------------------------------


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@torch.no_grad()
def _evaluate(
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


class _StepLosses:
    """The batch losses since the last flush, kept as device tensors so that no step waits on the device."""

    def __init__(self, first_step: int) -> None:
        self.losses: list[torch.Tensor] = []
        self.first_step = first_step  # the step of losses[0]
        self.logged: list[tuple[int, int, float, float]] = []  # (index in losses, step, lr, unix time)
        self.epoch_values: list[float] = []  # every loss of the current epoch read so far, for its mean
        self.last_flush = time.monotonic()

    def due(self) -> bool:
        return len(self.logged) >= FLUSH_EVERY_POINTS or time.monotonic() - self.last_flush >= FLUSH_EVERY_S

    def flush(self, epoch: int, *, lr: float, on_points: Callable[[list[Point]], None]) -> list[Point]:
        """Read the waiting losses in one go and return the points of the logged steps.

        Raises TrainingDiverged naming the first non-finite loss, after handing ``on_points`` the points before it.
        """
        losses, logged, first = self.losses, self.logged, self.first_step
        self.losses, self.logged, self.first_step = [], [], first + len(losses)
        self.last_flush = time.monotonic()
        if not losses:
            return []
        values: list[float] = torch.stack(losses).float().tolist() if len(losses) > 1 else [losses[0].item()]
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        points: list[Point] = []
        for index, step, step_lr, ts in logged:
            if bad is not None and index >= bad:
                break
            when = _utc(ts)
            points.append(Point("train_loss", step, epoch, values[index], when))
            points.append(Point("lr", step, epoch, step_lr, when))
        if bad is not None:
            if points:
                on_points(points)
            raise TrainingDiverged(step=first + bad, epoch=epoch, value=values[bad], lr=lr)
        self.epoch_values.extend(values)
        return points


@dataclass
class _Monitor:
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


def _available_metric(name: str, available: set[str], what: str) -> str:
    if name in available:
        return name
    # The static check rejects these; a job submitted before it existed still runs on the training loss.
    log.warning("engine.monitor_unavailable %s=%s available=%s: using train_loss", what, name, sorted(available))
    return "train_loss"


# --- the loop -------------------------------------------------------------------------------------------


# Below this much work per optimizer step (about 6 x parameters x batch FLOPs), a second CPU thread costs more in
# synchronisation than it saves; above it PyTorch's default thread count is kept.
SINGLE_THREAD_MAX_FLOPS_PER_STEP = 5e7


def cpu_threads_for(model: nn.Module, batch_size: int) -> int:
    """The intra-op thread count fit() trains with on the CPU."""
    flops = 6 * sum(p.numel() for p in model.parameters()) * batch_size
    return 1 if flops < SINGLE_THREAD_MAX_FLOPS_PER_STEP else torch.get_num_threads()


def fit(
    model: nn.Module,
    spec: JobSpec,
    data: TrainData,
    *,
    device: torch.device | str = "cpu",
    on_points: Callable[[list[Point]], None] = _ignore_points,
    on_checkpoint: Callable[[CheckpointBlob], None] = _ignore_checkpoint,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = _never,
    resume: tuple[bytes, bytes] | None = None,
) -> FitResult:
    """Train ``model`` as ``spec`` says on ``data``; report points, checkpoints and progress via the callbacks.

    ``resume`` is the (weights, state) pair of a CheckpointBlob: training continues after its epoch and
    reproduces, bit for bit on CPU, what the uninterrupted run would have done. Raises TrainingDiverged when
    the loss stops being finite. Small CPU models train on one thread (the caller's setting is restored).
    """
    previous = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(cpu_threads_for(model, spec.training.batch_size))
    try:
        return _fit(model, spec, data, device=device, on_points=on_points, on_checkpoint=on_checkpoint,
                    on_progress=on_progress, should_stop=should_stop, resume=resume)
    finally:
        torch.set_num_threads(previous)


def _fit(
    model: nn.Module,
    spec: JobSpec,
    data: TrainData,
    *,
    device: torch.device | str = "cpu",
    on_points: Callable[[list[Point]], None] = _ignore_points,
    on_checkpoint: Callable[[CheckpointBlob], None] = _ignore_checkpoint,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = _never,
    resume: tuple[bytes, bytes] | None = None,
) -> FitResult:
    started = time.monotonic()
    dev = torch.device(device)
    training = spec.training
    use_bf16 = training.precision == "bf16-mixed" and dev.type == "cuda"
    if training.precision == "bf16-mixed" and not use_bf16:
        log.warning("engine.bf16_needs_cuda device=%s: training in float32", dev)
    amp: contextlib.AbstractContextManager[Any] = (
        torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )

    model.to(dev)
    model.train()
    x, y = data.x_train.to(dev), data.y_train.to(dev)
    has_val = data.x_val is not None and data.y_val is not None and len(data.x_val) > 0
    x_val = data.x_val.to(dev) if has_val and data.x_val is not None else None
    y_val = data.y_val.to(dev) if has_val and data.y_val is not None else None
    n = len(x)
    plan = plan_for(training, n, 0 if x_val is None else len(x_val))
    bs, steps_per_epoch = training.batch_size, plan.steps_per_epoch
    log_every = training.log_every_steps or max(1, math.ceil(plan.total_steps / 1000))

    criterion = build_loss(spec, data, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(spec, params, device=dev)
    scheduler = build_scheduler(spec, optimizer, plan)
    step_scheduler = scheduler if scheduler is not None and getattr(spec.scheduler, "interval", "epoch") == "step" else None
    clip = training.grad_clip_norm

    available = {"train_loss", "epoch_time_s", "samples_per_s"}
    if has_val:
        available |= {"val_loss", "val_accuracy"} if data.task != "regression" else {"val_loss", "val_mae", "val_r2"}
    ckpt_policy = training.checkpoint
    ckpt_monitor = _available_metric(ckpt_policy.monitor or ("val_loss" if has_val else "train_loss"), available,
                                     "checkpoint.monitor")
    es = training.early_stopping
    stopper = None if es is None else _Monitor(
        _available_metric(es.monitor, available, "early_stopping.monitor"), es.mode, es.min_delta, es.patience)
    plateau_metric = (
        _available_metric(spec.scheduler.monitor, available, "scheduler.monitor")
        if isinstance(spec.scheduler, S.ReduceLROnPlateau) else None
    )

    # The data order has its own generator so that it depends on the seed alone; Dropout draws from torch's
    # global RNG, which the caller seeded when it built the model. Both are saved in every checkpoint.
    order = torch.Generator().manual_seed(training.seed)
    step, done_epochs = 0, 0
    metrics: dict[str, float] = {}
    if resume is not None:
        weights, state = resume
        tensors, meta = _unpack_state(state)
        model.load_state_dict(load_weights(weights)[0])
        optimizer.load_state_dict(_optimizer_state_dict(tensors, meta))
        if scheduler is not None and meta["scheduler"] is not None:
            scheduler.load_state_dict(meta["scheduler"])
        order.set_state(tensors["rng.data_order"])
        torch.set_rng_state(tensors["rng.torch"])
        if dev.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], dev)
        step, done_epochs, metrics = int(meta["step"]), int(meta["epoch"]), dict(meta["metrics"])
        if stopper is not None and meta.get("stopper"):
            stopper.best, stopper.bad_epochs = meta["stopper"]["best"], int(meta["stopper"]["bad_epochs"])
        if meta.get("status"):  # the checkpoint was the run's last: nothing is left to do
            return FitResult(meta["status"], step, done_epochs, metrics)
        log.info("engine.resumed step=%d epoch=%d", step, done_epochs)

    def loop_state(status: str | None) -> dict[str, Any]:
        return {
            "step": step, "epoch": epoch, "metrics": metrics, "status": status,
            "stopper": None if stopper is None else {"best": stopper.best, "bad_epochs": stopper.bad_epochs},
        }

    # One shuffled copy of the set per epoch, then batches are views; one batch covering every row needs
    # neither a permutation (the mean loss does not depend on row order) nor a copy.
    full_batch = steps_per_epoch == 1
    gather_per_epoch = x.element_size() * x.numel() + y.element_size() * y.numel() <= MAX_EPOCH_GATHER_BYTES
    pending = _StepLosses(first_step=step + 1)
    spec_lr = spec.optimizer.lr
    status: Literal["succeeded", "cancelled", "early_stopped"] = "succeeded"
    epoch = done_epochs
    # Points and progress leave in batches, at most every FLUSH_EVERY_S (and before each checkpoint): with tiny
    # epochs a write per epoch would cost more than the training.
    outbox: list[Point] = []
    last_report = last_checkpoint = time.monotonic()

    def report(epoch: int, *, force: bool) -> None:
        nonlocal outbox, last_report
        if not force and time.monotonic() - last_report < FLUSH_EVERY_S:
            return
        if outbox:
            on_points(outbox)
            outbox = []
        if on_progress is not None:
            on_progress(Progress(epoch, plan.epochs, step, plan.total_steps, time.monotonic() - started))
        last_report = time.monotonic()

    for epoch in range(done_epochs + 1, plan.epochs + 1):
        epoch_start, epoch_start_step = time.monotonic(), step
        xs, ys, perm = x, y, None
        if training.shuffle and not full_batch:
            perm = torch.randperm(n, generator=order).to(dev)
            if gather_per_epoch:
                xs, ys, perm = x[perm], y[perm], None
        for lo in range(0, n, bs):
            if should_stop():
                log.info("engine.cancelled step=%d epoch=%d", step, epoch)
                report(epoch, force=True)  # what finished epochs logged is kept; the cut epoch reports nothing
                return FitResult("cancelled", step, epoch - 1, metrics)
            if full_batch:
                xb, yb = x, y
            elif perm is None:
                xb, yb = xs[lo : lo + bs], ys[lo : lo + bs]
            else:
                idx = perm[lo : lo + bs]
                xb, yb = x[idx], y[idx]
            with amp:
                loss = criterion(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            step += 1
            pending.losses.append(loss.detach())
            if step % log_every == 0:
                # The lr this step used: read before a per-step scheduler moves it.
                pending.logged.append((len(pending.losses) - 1, step, optimizer.param_groups[0]["lr"], time.time()))
                if pending.due():
                    outbox += pending.flush(epoch, lr=spec_lr, on_points=on_points)
                    report(epoch, force=True)
            if step_scheduler is not None:
                step_scheduler.step()
            if step >= plan.total_steps:
                break

        # End of epoch: read the losses, evaluate, update schedulers and stopping, then report.
        points = pending.flush(epoch, lr=spec_lr, on_points=on_points)
        train_s = time.monotonic() - epoch_start
        values, pending.epoch_values = pending.epoch_values, []
        metrics = {"train_loss": math.fsum(values) / len(values)} if values else {}
        if x_val is not None and y_val is not None:
            metrics.update(_evaluate(model, criterion, x_val, y_val, data.task, amp))
        metrics["epoch_time_s"] = time.monotonic() - epoch_start
        metrics["samples_per_s"] = min(n, (step - epoch_start_step) * bs) / train_s if train_s > 0 else 0.0
        now = _utc(time.time())
        points += [Point(name, step, epoch, value, now) for name, value in metrics.items() if name != "train_loss"]

        if scheduler is not None and step_scheduler is None:
            if isinstance(scheduler, ReduceLROnPlateau):
                assert plateau_metric is not None
                scheduler.step(metrics[plateau_metric])
            else:
                scheduler.step()
        if stopper is not None:
            stopper.update(metrics[stopper.name])
            if stopper.bad_epochs >= stopper.patience:
                status = "early_stopped"
                log.info("engine.early_stopped epoch=%d %s best=%s", epoch, stopper.name, stopper.best)

        outbox += points
        last = status == "early_stopped" or step >= plan.total_steps
        every = ckpt_policy.every_epochs
        checkpoint_now = last or (epoch % every == 0 if every is not None
                                  else time.monotonic() - last_checkpoint >= AUTO_CHECKPOINT_EVERY_S)
        # Points up to a checkpoint are stored before it, so a resume from it loses none.
        report(epoch, force=checkpoint_now)
        if checkpoint_now:
            last_checkpoint = time.monotonic()
            on_checkpoint(CheckpointBlob(
                step=step,
                epoch=epoch,
                weights=pack_weights(model, data, step=step, epoch=epoch),
                state=_pack_state(optimizer, scheduler, order, dev, loop_state(status if last else None)),
                metrics=dict(metrics),
                monitor=ckpt_monitor,
                monitor_value=metrics.get(ckpt_monitor),
                is_final=last,
            ))
        if last:
            break
    log.info("engine.finished status=%s steps=%d epochs=%d", status, step, epoch)
    return FitResult(status, step, epoch, metrics)
