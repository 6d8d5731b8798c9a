"""The training engine: ``fit()`` runs one job's PyTorch loop and reports through callbacks.

- ``loop``: ``fit()`` itself, restore -> epochs (steps, evaluate, checkpoint) -> finish.
- ``builders``: spec -> device, loss, optimizer, LR scheduler, step plan, CPU threads.
- ``points``: the one owner of buffered points and the reporting throttles.
- ``evaluate``: validation metrics, early stopping's monitor, the best epoch's weights.
- ``state``: packing a run into checkpoint files (service.checkpoint_format) and back.
- ``reports``: what fit() reports and returns.

It knows nothing of HTTP, SQL or Celery.
"""

from worker.engine.builders import (
    SINGLE_THREAD_MAX_FLOPS_PER_STEP,
    build_loss,
    build_optimizer,
    build_scheduler,
    cpu_threads_for,
    plan_for,
    resolve_device,
)
from worker.engine.loop import AUTO_CHECKPOINT_EVERY_S, MAX_EPOCH_GATHER_BYTES, fit
from worker.engine.points import FLUSH_EVERY_POINTS, FLUSH_EVERY_S, PointBuffer
from worker.engine.reports import CheckpointBlob, FitResult, Point, Progress, TrainingDiverged
from worker.engine.state import load_weights, pack_state, pack_weights, restore_state

__all__ = [
    "AUTO_CHECKPOINT_EVERY_S",
    "FLUSH_EVERY_POINTS",
    "FLUSH_EVERY_S",
    "MAX_EPOCH_GATHER_BYTES",
    "SINGLE_THREAD_MAX_FLOPS_PER_STEP",
    "CheckpointBlob",
    "FitResult",
    "Point",
    "PointBuffer",
    "Progress",
    "TrainingDiverged",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "cpu_threads_for",
    "fit",
    "load_weights",
    "pack_state",
    "pack_weights",
    "plan_for",
    "resolve_device",
    "restore_state",
]
