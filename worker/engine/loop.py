"""``fit()``: one job's PyTorch loop, read as restore -> epochs (each: steps, evaluate, checkpoint) -> finish.

Written for speed and kept plain: the data sits on the device, batches are views of a once-per-epoch shuffled
copy, nothing syncs with the device per step (losses stay tensors until PointBuffer reads them in one go), and
no callback runs per step except ``should_stop()``. It knows nothing of HTTP, SQL or Celery.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from service import spec as S
from service.spec import JobSpec
from worker.data import TrainData
from worker.engine.builders import build_loss, build_optimizer, build_scheduler, cpu_threads_for, plan_for
from worker.engine.direct import direct_call, grad_clearer
from worker.engine.evaluate import BestWeights, Monitor, available_metric, evaluate
from worker.engine.points import Clock, PointBuffer, utc
from worker.engine.reports import CheckpointBlob, FitResult, Point, Progress
from worker.engine.state import load_weights, pack_state, pack_weights, restore_state

log = logging.getLogger(__name__)

# With checkpoint.every_epochs unset: a checkpoint at the end of an epoch once this long has passed since the last.
AUTO_CHECKPOINT_EVERY_S = 10.0
# Above this size a shuffled copy of the training set per epoch costs too much memory: gather per batch.
MAX_EPOCH_GATHER_BYTES = 1 << 30

Status = Literal["succeeded", "cancelled", "early_stopped"]


def _ignore_points(points: list[Point]) -> None:
    pass


def _ignore_checkpoint(blob: CheckpointBlob) -> None:
    pass


def _never() -> bool:
    return False


@dataclass
class Callbacks:
    on_points: Callable[[list[Point]], None] = _ignore_points
    on_checkpoint: Callable[[CheckpointBlob], None] = _ignore_checkpoint
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] = _never
    points_every_epoch: bool = False  # hand over each epoch's points at its end, however short the epoch


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
    clock: Clock = time.monotonic,
    init_optimizer: Callable[[torch.optim.Optimizer], None] | None = None,
    points_every_epoch: bool = False,
) -> FitResult:
    """Train ``model`` as ``spec`` says on ``data``; report points, checkpoints and progress via the callbacks.

    ``resume`` is the (weights, state) pair of a CheckpointBlob: training continues after its epoch and
    reproduces, bit for bit on CPU, what the uninterrupted run would have done. Raises TrainingDiverged when
    the loss stops being finite. ``clock`` drives the reporting throttles and the time-based checkpoint cadence
    (never the measured metrics), so a test can hold it still. Small CPU models train on one thread unless the
    spec's training.cpu_threads says otherwise (the caller's setting is restored). ``init_optimizer`` gets the
    built optimizer of a fresh (not resumed) run before the first step: a warm start carries a source's optimizer
    state in with it. ``points_every_epoch`` hands each
    epoch's points to ``on_points`` at its end (otherwise points leave at most once a second, so many short epochs
    share one write): a sweep's pruner decides at every epoch end, before the next epoch trains.
    """
    previous = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(cpu_threads_for(model, spec.training.batch_size, spec.training.cpu_threads))
    try:
        run = _Run(model, spec, data, device=torch.device(device), callbacks=Callbacks(
            on_points, on_checkpoint, on_progress, should_stop, points_every_epoch), clock=clock)
        if resume is not None and (finished := run.restore(*resume)) is not None:
            return finished
        if resume is None and init_optimizer is not None:
            init_optimizer(run.optimizer)
        for epoch in range(run.epoch + 1, run.plan.epochs + 1):
            if not run.train_epoch(epoch):
                return run.cancelled()
            if run.end_epoch():
                break
        return run.finish()
    finally:
        torch.set_num_threads(previous)


class _Run:
    """One fit() call's objects and counters; each method is one named part of the loop."""

    def __init__(self, model: nn.Module, spec: JobSpec, data: TrainData, *, device: torch.device,
                 callbacks: Callbacks, clock: Clock) -> None:
        self.model, self.spec, self.data, self.dev, self.cb, self.clock = model, spec, data, device, callbacks, clock
        self.started = time.monotonic()
        training = spec.training
        use_bf16 = training.precision == "bf16-mixed" and device.type == "cuda"
        if training.precision == "bf16-mixed" and not use_bf16:
            log.warning("engine.bf16_needs_cuda device=%s: training in float32", device)
        self.amp: contextlib.AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext())

        model.to(device)
        model.train()
        self.x, self.y = data.x_train.to(device), data.y_train.to(device)
        has_val = data.x_val is not None and data.y_val is not None and len(data.x_val) > 0
        self.x_val = data.x_val.to(device) if has_val and data.x_val is not None else None
        self.y_val = data.y_val.to(device) if has_val and data.y_val is not None else None
        self.plan = plan_for(training, len(self.x), 0 if self.x_val is None else len(self.x_val))
        self.log_every = training.log_every_steps or max(1, math.ceil(self.plan.total_steps / 1000))
        self.full_batch = self.plan.steps_per_epoch == 1  # one batch of every row: no permutation, no copy
        self.gather_per_epoch = (self.x.element_size() * self.x.numel() + self.y.element_size() * self.y.numel()
                                 <= MAX_EPOCH_GATHER_BYTES)

        self.criterion = build_loss(spec, data, device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(spec, self.params)
        self.clear_grads = grad_clearer(self.optimizer)
        self.scheduler = build_scheduler(spec, self.optimizer, self.plan)
        per_step = self.scheduler is not None and getattr(spec.scheduler, "interval", "epoch") == "step"
        self.step_scheduler = self.scheduler if per_step else None
        self._monitors(has_val)
        # The data order has its own generator so that it depends on the seed alone; Dropout draws from torch's
        # global RNG, which the caller seeded when it built the model. Both are saved in every checkpoint.
        self.order = torch.Generator().manual_seed(training.seed)
        self.step = self.epoch = 0
        self.metrics: dict[str, float] = {}
        self.status: Status = "succeeded"
        self.last_checkpoint = clock()
        self.points = PointBuffer(first_step=1, on_points=callbacks.on_points, on_progress=callbacks.on_progress,
                                  clock=clock, wall=time.time)

    def _monitors(self, has_val: bool) -> None:
        spec, data = self.spec, self.data
        available = {"train_loss", "epoch_time_s", "samples_per_s"}
        if has_val:
            available |= {"val_loss", "val_accuracy"} if data.task != "regression" else {"val_loss", "val_mae", "val_r2"}
        policy = spec.training.checkpoint
        self.ckpt_monitor = available_metric(policy.monitor or ("val_loss" if has_val else "train_loss"), available,
                                             "checkpoint.monitor")
        self.best = BestWeights(policy.mode)
        es = spec.training.early_stopping
        self.stopper = None if es is None else Monitor(
            available_metric(es.monitor, available, "early_stopping.monitor"), es.mode, es.min_delta, es.patience)
        self.plateau_metric = (
            available_metric(spec.scheduler.monitor, available, "scheduler.monitor")
            if isinstance(spec.scheduler, S.ReduceLROnPlateau) else None)

    # --- restore ---------------------------------------------------------------------------------------

    def restore(self, weights: bytes, state: bytes) -> FitResult | None:
        """Continue from a checkpoint; a FitResult when it was the run's last and nothing is left to do."""
        self.model.load_state_dict(load_weights(weights)[0])
        meta = restore_state(state, optimizer=self.optimizer, scheduler=self.scheduler, order=self.order,
                             device=self.dev)
        self.step, self.epoch, self.metrics = int(meta["step"]), int(meta["epoch"]), dict(meta["metrics"])
        self.points.first_step = self.step + 1
        if self.stopper is not None and meta.get("stopper"):
            self.stopper.best, self.stopper.bad_epochs = meta["stopper"]["best"], int(meta["stopper"]["bad_epochs"])
        self.best.value = meta.get("best_value")
        if meta.get("status"):
            return FitResult(meta["status"], self.step, self.epoch, self.metrics)
        log.info("engine.resumed step=%d epoch=%d", self.step, self.epoch)
        return None

    # --- one epoch's steps -----------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y, bs = self.x, self.y, self.spec.training.batch_size
        xs, ys, perm = x, y, None
        if self.spec.training.shuffle and not self.full_batch:
            perm = torch.randperm(len(x), generator=self.order).to(self.dev)
            if self.gather_per_epoch:
                xs, ys, perm = x[perm], y[perm], None
        for lo in range(0, len(x), bs):
            if perm is None:
                yield xs[lo : lo + bs], ys[lo : lo + bs]
            else:
                idx = perm[lo : lo + bs]
                yield x[idx], y[idx]

    def train_epoch(self, epoch: int) -> bool:
        """The epoch's optimizer steps; False when ``should_stop`` cut it short."""
        self.epoch, self.epoch_start, self.epoch_start_step = epoch, time.monotonic(), self.step
        clip = self.spec.training.grad_clip_norm
        # model(x), criterion(out, y) and zero_grad(set_to_none=True) as the calls they reduce to (worker.engine.direct)
        forward, loss_of, clear_grads = direct_call(self.model), direct_call(self.criterion), self.clear_grads
        for xb, yb in self._batches():
            if self.cb.should_stop():
                return False
            with self.amp:
                loss = loss_of(forward(xb), yb)
            clear_grads()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
            self.step += 1
            # The lr this step used: read before a per-step scheduler moves it.
            logged = self.step % self.log_every == 0
            self.points.add_loss(loss, step=self.step, lr=self.optimizer.param_groups[0]["lr"] if logged else None)
            if logged and self.points.due():
                self.points.read_losses(epoch, lr=self.spec.optimizer.lr)
                self.points.send(self._progress(), force=False)
            if self.step_scheduler is not None:
                self.step_scheduler.step()
            if self.step >= self.plan.total_steps:
                break
        return True

    # --- the epoch's end: evaluate, schedule, stop, checkpoint -----------------------------------------

    def end_epoch(self) -> bool:
        """Read the losses, evaluate, move schedulers and stopping, report, checkpoint; True when it was the last."""
        epoch = self.epoch
        self.points.read_losses(epoch, lr=self.spec.optimizer.lr)
        train_s = time.monotonic() - self.epoch_start
        mean = self.points.take_epoch_mean()
        metrics = {} if mean is None else {"train_loss": mean}
        if self.x_val is not None and self.y_val is not None:
            metrics.update(evaluate(self.model, self.criterion, self.x_val, self.y_val, self.data.task, self.amp))
        metrics["epoch_time_s"] = time.monotonic() - self.epoch_start
        steps = self.step - self.epoch_start_step
        bs = self.spec.training.batch_size
        metrics["samples_per_s"] = min(len(self.x), steps * bs) / train_s if train_s > 0 else 0.0
        self.metrics = metrics
        now = utc(time.time())
        self.points.add([Point(name, self.step, epoch, value, now) for name, value in metrics.items()
                         if name != "train_loss"])
        self._step_epoch_schedulers()
        last = self.status == "early_stopped" or self.step >= self.plan.total_steps
        every = self.spec.training.checkpoint.every_epochs
        checkpoint_now = last or (epoch % every == 0 if every is not None
                                  else self.clock() - self.last_checkpoint >= AUTO_CHECKPOINT_EVERY_S)
        self.best.offer(self.model, metrics.get(self.ckpt_monitor), epoch=epoch, step=self.step, metrics=metrics,
                        checkpointed_now=checkpoint_now)
        # Packed first, handed over right after the points: the writer then takes points, progress and checkpoint in
        # one transaction. Points up to a checkpoint are stored before it, so a resume from it loses none.
        blobs = self._checkpoint_blobs(last) if checkpoint_now else []
        self.points.send(self._progress(), force=checkpoint_now or self.cb.points_every_epoch)
        for blob in blobs:
            self.cb.on_checkpoint(blob)
        return last

    def _step_epoch_schedulers(self) -> None:
        if self.scheduler is not None and self.step_scheduler is None:
            if isinstance(self.scheduler, ReduceLROnPlateau):
                assert self.plateau_metric is not None
                self.scheduler.step(self.metrics[self.plateau_metric])
            else:
                self.scheduler.step()
        if self.stopper is not None:
            self.stopper.update(self.metrics[self.stopper.name])
            if self.stopper.bad_epochs >= self.stopper.patience:
                self.status = "early_stopped"
                log.info("engine.early_stopped epoch=%d %s best=%s", self.epoch, self.stopper.name, self.stopper.best)

    def _checkpoint_blobs(self, last: bool) -> list[CheckpointBlob]:
        """This epoch's checkpoint, after the held weights of an earlier, better epoch if there are any."""
        self.last_checkpoint = self.clock()
        blobs = []
        held = self.best.take()
        if held is not None:  # an earlier epoch was better than this one: its weights go first, as `best`
            blobs.append(CheckpointBlob(
                step=held.step, epoch=held.epoch, weights=pack_weights(held.state_dict, self.data, step=held.step,
                                                                       epoch=held.epoch),
                state=b"", metrics=held.metrics, monitor=self.ckpt_monitor, monitor_value=held.value,
                is_final=False))
        loop = {
            "step": self.step, "epoch": self.epoch, "metrics": self.metrics, "status": self.status if last else None,
            "stopper": None if self.stopper is None else {"best": self.stopper.best,
                                                          "bad_epochs": self.stopper.bad_epochs},
            "best_value": self.best.value,
        }
        blobs.append(CheckpointBlob(
            step=self.step, epoch=self.epoch,
            weights=pack_weights(self.model, self.data, step=self.step, epoch=self.epoch),
            state=pack_state(self.optimizer, self.scheduler, self.order, self.dev, loop),
            metrics=dict(self.metrics), monitor=self.ckpt_monitor, monitor_value=self.metrics.get(self.ckpt_monitor),
            is_final=last))
        return blobs

    # --- finish ----------------------------------------------------------------------------------------

    def _progress(self) -> Progress:
        return Progress(self.epoch, self.plan.epochs, self.step, self.plan.total_steps,
                        time.monotonic() - self.started)

    def cancelled(self) -> FitResult:
        log.info("engine.cancelled step=%d epoch=%d", self.step, self.epoch)
        # What finished epochs logged is kept; the cut epoch's steps not yet read report nothing.
        self.points.send(self._progress(), force=True)
        return FitResult("cancelled", self.step, self.epoch - 1, self.metrics)

    def finish(self) -> FitResult:
        log.info("engine.finished status=%s steps=%d epochs=%d", self.status, self.step, self.epoch)
        return FitResult(self.status, self.step, self.epoch, self.metrics)
