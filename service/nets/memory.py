"""What a job will hold in memory and on disk, estimated from the shape walk before anything is allocated.

A job holds its data (every row's features and targets as tensors), one batch's activations through every layer
(kept for backward, and their gradients), and the parameters, their gradients and the optimizer's state. Each
checkpoint it keeps holds the weights, buffers and optimizer state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.datainfo import DataInfo
from service.nets.report import BYTES_PER_VALUE
from service.nets.shapes import Walk
from service.spec import SGD, Adam, AdamW, JobSpec, RMSprop

LABEL_BYTES = 8  # class labels are int64


@dataclass(frozen=True)
class MemoryEstimate:
    data: int
    activations: int
    state: int  # parameters, gradients, optimizer state and buffers
    widest_layer: int | None  # the layer whose output holds the most values; None: the input itself
    batch: int  # rows per batch the activations were counted for

    @property
    def total(self) -> int:
        return self.data + self.activations + self.state


def optimizer_states(spec: JobSpec) -> int:
    """Values of optimizer state kept per parameter (Adam's two moments, SGD's momentum buffer, ...)."""
    opt = spec.optimizer
    if isinstance(opt, (Adam, AdamW)):
        return 3 if opt.amsgrad else 2
    if isinstance(opt, SGD):
        return 1 if opt.momentum > 0 else 0
    if isinstance(opt, RMSprop):
        return 1 + (opt.momentum > 0) + opt.centered
    return 2


def data_bytes(spec: JobSpec, data: DataInfo) -> int:
    rows = max(data.n_rows, 0)
    features = rows * math.prod(data.input_shape) * BYTES_PER_VALUE
    if spec.loss.type in ("CrossEntropyLoss", "NLLLoss"):
        return features + rows * LABEL_BYTES
    return features + rows * data.target_width * BYTES_PER_VALUE


def estimate_memory(spec: JobSpec, data: DataInfo, walk: Walk, *, params: int, batch: int) -> MemoryEstimate:
    state = BYTES_PER_VALUE * (params * (2 + optimizer_states(spec)) + walk.buffers)
    # Every layer's output is kept for backward, and backward holds a gradient of the same size.
    activations = 2 * BYTES_PER_VALUE * batch * walk.activation_values
    widest: int | None = None
    widest_values = math.prod(data.input_shape)
    for layer in walk.reports:
        if math.prod(layer.output_shape) > widest_values:
            widest, widest_values = layer.index, math.prod(layer.output_shape)
    return MemoryEstimate(data=data_bytes(spec, data), activations=activations, state=state, widest_layer=widest,
                          batch=batch)


# The largest checkpoint a database stores: a checkpoint is one row, and SQLite refuses a row (or a blob) over
# 1,000,000,000 bytes (SQLITE_MAX_LENGTH), PostgreSQL a value or a row over 1 GiB (its allocations' limit). 64 MiB are
# left for what checkpoint_bytes does not count: the files' headers, RNG states, the data order (8 bytes a row).
CHECKPOINT_ROW_MAX_BYTES = 1_000_000_000 - 64 * 2**20


def checkpoint_bytes(spec: JobSpec, walk: Walk, *, params: int) -> int:
    """One checkpoint: the weights and buffers, and the optimizer state an exact resume needs."""
    return BYTES_PER_VALUE * (params * (1 + optimizer_states(spec)) + walk.buffers)


def checkpoints_kept(spec: JobSpec) -> int:
    """The most checkpoints a job keeps at once: the last K, and the best when it is not among them."""
    policy = spec.training.checkpoint
    return policy.keep_last + (1 if policy.keep_best else 0)
