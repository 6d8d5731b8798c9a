"""The spec language: the JSON a user posts to describe a network, its loss, optimizer, training and data.

Names and argument names are PyTorch's own, so a reader of the seed article recognises every word.
Structure is checked here (pydantic, ``extra="forbid"``, a ``type`` discriminator); shapes are checked by
``service.nets``; state rules by the use cases.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

InitName = Literal["default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform"]
PositiveInt = Annotated[int, Field(ge=1)]
IntOrPair = Union[PositiveInt, Annotated[list[PositiveInt], Field(min_length=1, max_length=2)]]
PaddingArg = Union[Annotated[int, Field(ge=0)], Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=2)], Literal["same", "valid"]]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- layers -------------------------------------------------------------------------------------------


class Linear(StrictModel):
    type: Literal["Linear"]
    in_features: PositiveInt | None = None
    out_features: PositiveInt
    bias: bool = True
    init: InitName | None = None


class _ConvBase(StrictModel):
    in_channels: PositiveInt | None = None
    out_channels: PositiveInt
    kernel_size: IntOrPair
    stride: IntOrPair = 1
    padding: PaddingArg = 0
    dilation: IntOrPair = 1
    groups: PositiveInt = 1
    bias: bool = True
    init: InitName | None = None


class Conv1d(_ConvBase):
    type: Literal["Conv1d"]


class Conv2d(_ConvBase):
    type: Literal["Conv2d"]


class _PoolBase(StrictModel):
    kernel_size: IntOrPair
    stride: IntOrPair | None = None
    padding: Annotated[int, Field(ge=0)] | list[Annotated[int, Field(ge=0)]] = 0
    ceil_mode: bool = False


class MaxPool1d(_PoolBase):
    type: Literal["MaxPool1d"]
    dilation: IntOrPair = 1


class MaxPool2d(_PoolBase):
    type: Literal["MaxPool2d"]
    dilation: IntOrPair = 1


class AvgPool1d(_PoolBase):
    type: Literal["AvgPool1d"]
    count_include_pad: bool = True


class AvgPool2d(_PoolBase):
    type: Literal["AvgPool2d"]
    count_include_pad: bool = True


class Flatten(StrictModel):
    type: Literal["Flatten"]
    start_dim: int = 1
    end_dim: int = -1


class Dropout(StrictModel):
    type: Literal["Dropout"]
    p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5


class _BatchNormBase(StrictModel):
    num_features: PositiveInt | None = None
    eps: Annotated[float, Field(gt=0.0)] = 1e-5
    momentum: Annotated[float, Field(ge=0.0, le=1.0)] | None = 0.1
    affine: bool = True
    track_running_stats: bool = True


class BatchNorm1d(_BatchNormBase):
    type: Literal["BatchNorm1d"]


class BatchNorm2d(_BatchNormBase):
    type: Literal["BatchNorm2d"]


class LayerNorm(StrictModel):
    type: Literal["LayerNorm"]
    normalized_shape: PositiveInt | Annotated[list[PositiveInt], Field(min_length=1, max_length=4)] | None = None
    eps: Annotated[float, Field(gt=0.0)] = 1e-5
    elementwise_affine: bool = True
    bias: bool = True


class ReLU(StrictModel):
    type: Literal["ReLU"]


class LeakyReLU(StrictModel):
    type: Literal["LeakyReLU"]
    negative_slope: float = 0.01


class PReLU(StrictModel):
    type: Literal["PReLU"]
    num_parameters: PositiveInt = 1
    init: float = 0.25


class ELU(StrictModel):
    type: Literal["ELU"]
    alpha: float = 1.0


class GELU(StrictModel):
    type: Literal["GELU"]
    approximate: Literal["none", "tanh"] = "none"


class SiLU(StrictModel):
    type: Literal["SiLU"]


class Sigmoid(StrictModel):
    type: Literal["Sigmoid"]


class Tanh(StrictModel):
    type: Literal["Tanh"]


class Softmax(StrictModel):
    type: Literal["Softmax"]
    dim: int = -1


class LogSoftmax(StrictModel):
    type: Literal["LogSoftmax"]
    dim: int = -1


class Identity(StrictModel):
    type: Literal["Identity"]


Layer = Annotated[
    Union[
        Linear, Conv1d, Conv2d, MaxPool1d, MaxPool2d, AvgPool1d, AvgPool2d, Flatten, Dropout,
        BatchNorm1d, BatchNorm2d, LayerNorm, ReLU, LeakyReLU, PReLU, ELU, GELU, SiLU, Sigmoid, Tanh,
        Softmax, LogSoftmax, Identity,
    ],
    Field(discriminator="type"),
]
LAYER_TYPES: tuple[str, ...] = (
    "Linear", "Conv1d", "Conv2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "Flatten", "Dropout",
    "BatchNorm1d", "BatchNorm2d", "LayerNorm", "ReLU", "LeakyReLU", "PReLU", "ELU", "GELU", "SiLU", "Sigmoid",
    "Tanh", "Softmax", "LogSoftmax", "Identity",
)


class ModelSpec(StrictModel):
    # The length cap is a setting (max_layers) enforced by the static check; this bound only keeps a
    # hostile body from costing parse time.
    layers: Annotated[list[Layer], Field(min_length=1, max_length=100_000)]
    init: InitName = "default"


# --- losses -------------------------------------------------------------------------------------------

Reduction = Literal["mean", "sum"]


class MSELoss(StrictModel):
    type: Literal["MSELoss"]
    reduction: Reduction = "mean"


class L1Loss(StrictModel):
    type: Literal["L1Loss"]
    reduction: Reduction = "mean"


class SmoothL1Loss(StrictModel):
    type: Literal["SmoothL1Loss"]
    reduction: Reduction = "mean"
    beta: Annotated[float, Field(ge=0.0)] = 1.0


class HuberLoss(StrictModel):
    type: Literal["HuberLoss"]
    reduction: Reduction = "mean"
    delta: Annotated[float, Field(gt=0.0)] = 1.0


class BCEWithLogitsLoss(StrictModel):
    type: Literal["BCEWithLogitsLoss"]
    reduction: Reduction = "mean"
    pos_weight: list[Annotated[float, Field(ge=0.0)]] | None = None


class CrossEntropyLoss(StrictModel):
    type: Literal["CrossEntropyLoss"]
    reduction: Reduction = "mean"
    weight: list[Annotated[float, Field(ge=0.0)]] | None = None
    label_smoothing: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class NLLLoss(StrictModel):
    type: Literal["NLLLoss"]
    reduction: Reduction = "mean"
    weight: list[Annotated[float, Field(ge=0.0)]] | None = None


Loss = Annotated[
    Union[MSELoss, L1Loss, SmoothL1Loss, HuberLoss, BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss],
    Field(discriminator="type"),
]
LOSS_TYPES: tuple[str, ...] = (
    "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss",
)
CLASSIFICATION_LOSSES = frozenset({"CrossEntropyLoss", "NLLLoss"})


# --- optimizers ---------------------------------------------------------------------------------------

LearningRate = Annotated[float, Field(gt=0.0, le=1e3)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class _ForeachKernel(StrictModel):
    # PyTorch's own implementation switches; None means what it means in PyTorch (its default choice), so a job
    # trains bit for bit like the same optimizer written by hand.
    foreach: bool | None = None


class _FusableKernel(_ForeachKernel):
    # True: one fused kernel per step, faster (15-25 % per step on small CPU models) but not bit-identical to
    # the default implementation. The documented opt-in.
    fused: bool | None = None

    @model_validator(mode="after")
    def _one_kernel(self) -> Self:
        if self.fused and self.foreach:
            raise ValueError("fused and foreach cannot both be true")
        return self


class SGD(_FusableKernel):
    type: Literal["SGD"]
    lr: LearningRate = 1e-3
    momentum: Annotated[float, Field(ge=0.0)] = 0.0
    dampening: float = 0.0
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGD:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov requires momentum > 0 and dampening = 0")
        return self


class Adam(_FusableKernel):
    type: Literal["Adam"]
    lr: LearningRate = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0.0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    amsgrad: bool = False


class AdamW(_FusableKernel):
    type: Literal["AdamW"]
    lr: LearningRate = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0.0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-2
    amsgrad: bool = False


class RMSprop(_ForeachKernel):  # PyTorch has no fused RMSprop
    type: Literal["RMSprop"]
    lr: LearningRate = 1e-2
    alpha: Annotated[float, Field(ge=0.0)] = 0.99
    eps: Annotated[float, Field(gt=0.0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    momentum: Annotated[float, Field(ge=0.0)] = 0.0
    centered: bool = False


Optimizer = Annotated[Union[SGD, Adam, AdamW, RMSprop], Field(discriminator="type")]
OPTIMIZER_TYPES: tuple[str, ...] = ("SGD", "Adam", "AdamW", "RMSprop")


# --- schedulers ---------------------------------------------------------------------------------------

SchedulerInterval = Literal["epoch", "step"]


class StepLR(StrictModel):
    type: Literal["StepLR"]
    step_size: PositiveInt
    gamma: Annotated[float, Field(gt=0.0)] = 0.1
    interval: SchedulerInterval = "epoch"


class ExponentialLR(StrictModel):
    type: Literal["ExponentialLR"]
    gamma: Annotated[float, Field(gt=0.0)]
    interval: SchedulerInterval = "epoch"


class CosineAnnealingLR(StrictModel):
    type: Literal["CosineAnnealingLR"]
    T_max: PositiveInt | None = None  # None: the whole run, in units of `interval`
    eta_min: Annotated[float, Field(ge=0.0)] = 0.0
    interval: SchedulerInterval = "epoch"


class OneCycleLR(StrictModel):
    type: Literal["OneCycleLR"]
    max_lr: LearningRate
    total_steps: PositiveInt | None = None  # None: the run's total optimizer steps
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: Annotated[float, Field(gt=0.0)] = 25.0
    final_div_factor: Annotated[float, Field(gt=0.0)] = 1e4
    interval: Literal["step"] = "step"


class ReduceLROnPlateau(StrictModel):
    type: Literal["ReduceLROnPlateau"]
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    patience: Annotated[int, Field(ge=0)] = 10
    threshold: Annotated[float, Field(ge=0.0)] = 1e-4
    min_lr: Annotated[float, Field(ge=0.0)] = 0.0
    interval: Literal["epoch"] = "epoch"


Scheduler = Annotated[
    Union[StepLR, ExponentialLR, CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau],
    Field(discriminator="type"),
]
SCHEDULER_TYPES: tuple[str, ...] = ("StepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau")


# --- training -----------------------------------------------------------------------------------------


class EarlyStopping(StrictModel):
    monitor: str = "val_loss"
    patience: Annotated[int, Field(ge=1)] = 5
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    mode: Literal["min", "max"] = "min"


class CheckpointPolicy(StrictModel):
    # None: at the end of an epoch once 10 s have passed since the last checkpoint (and always at the end).
    every_epochs: PositiveInt | None = None
    keep_last: PositiveInt = 3
    keep_best: bool = True
    monitor: str | None = None  # None: val_loss when there is validation data, else train_loss
    mode: Literal["min", "max"] = "min"


class Training(StrictModel):
    epochs: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 32
    shuffle: bool = True
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    validation_split: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    normalize: bool = False
    early_stopping: EarlyStopping | None = None
    grad_clip_norm: Annotated[float, Field(gt=0.0)] | None = None
    log_every_steps: PositiveInt | None = None  # None: about 1,000 points per run at most
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["32", "bf16-mixed"] = "32"
    # Intra-op threads on a CPU, at most the worker's own count. None: one for a small model (where a second
    # thread's synchronisation costs more than it saves), the worker's count for the rest. The count can change
    # a run's floats, so it is chosen by the spec, never by the machine's mood.
    cpu_threads: PositiveInt | None = None

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _default_length(self) -> Training:
        if self.epochs is None and self.max_steps is None:
            self.epochs = 10
        return self


# --- data ---------------------------------------------------------------------------------------------

Number = Union[float, int]


class _DataBase(StrictModel):
    # Reshape each sample, e.g. [1, 8, 8] to feed 64 pixel columns to a Conv2d.
    input_shape: Annotated[list[PositiveInt], Field(min_length=1, max_length=4)] | None = None


class InlineData(_DataBase):
    source: Literal["inline"]
    x: Annotated[list[Any], Field(min_length=1)]
    y: Annotated[list[Any], Field(min_length=1)]


class DatasetData(_DataBase):
    source: Literal["dataset"]
    dataset_id: str
    features: list[str] | None = None  # None: every column that is not a target
    target: str | list[str] | None = None  # None: the target column(s) named at upload
    validation_dataset_id: str | None = None


class BuiltinData(_DataBase):
    source: Literal["builtin"]
    name: Literal["iris", "wine", "breast_cancer", "digits", "diabetes"]


class SyntheticData(_DataBase):
    source: Literal["synthetic"]
    kind: Literal["randn", "regression", "classification", "moons"] = "randn"
    n_samples: PositiveInt = 128
    n_features: PositiveInt = 2
    n_targets: PositiveInt = 1
    n_classes: Annotated[int, Field(ge=2)] = 2
    noise: Annotated[float, Field(ge=0.0)] = 0.1
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None  # None: training.seed


DataSource = Annotated[Union[InlineData, DatasetData, BuiltinData, SyntheticData], Field(discriminator="source")]
DATA_SOURCES: tuple[str, ...] = ("inline", "dataset", "builtin", "synthetic")


# --- warm start -----------------------------------------------------------------------------------------


class InitFrom(StrictModel):
    """Start from another job's checkpoint, or a registered model version ("name@alias" | "name:N" | "name");
    service.warmstart checks it against the source's tensors, worker.warmstart loads it."""

    job_id: Annotated[str, Field(max_length=32)] | None = None
    model: Annotated[str, Field(max_length=200)] | None = None
    # "best" | "latest" | a checkpoint id of job_id; None means "best". A model version pins its own.
    checkpoint: Annotated[str, Field(max_length=32)] | None = None
    strict: bool = True  # false: load the tensors whose shapes match, skip (and report) the rest
    freeze: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1000)] = []  # layer indices
    optimizer_state: bool = False  # carry the optimizer's state when its type and parameters match

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.job_id is None) == (self.model is None):
            raise ValueError("give exactly one of job_id and model")
        if self.model is not None and self.checkpoint is not None:
            raise ValueError("checkpoint goes with job_id: a model version pins its checkpoint")
        return self


# --- the whole spec -----------------------------------------------------------------------------------


class JobSpec(StrictModel):
    name: Annotated[str, Field(max_length=200)] | None = None
    model: ModelSpec
    loss: Loss
    optimizer: Optimizer
    scheduler: Scheduler | None = None
    training: Training = Field(default_factory=Training)
    data: DataSource
    init_from: InitFrom | None = None  # warm start (service.warmstart)


# Every discriminator value; the error handler drops them from pydantic's locations to give JSON paths.
TAG_NAMES = frozenset(LAYER_TYPES + LOSS_TYPES + OPTIMIZER_TYPES + SCHEDULER_TYPES + DATA_SOURCES)

SEED_EXAMPLE: dict[str, Any] = {
    "name": "seed-mlp",
    "model": {
        "layers": [
            {"type": "Linear", "in_features": 32, "out_features": 64},
            {"type": "ReLU"},
            {"type": "Linear", "out_features": 32},
            {"type": "ReLU"},
            {"type": "Linear", "out_features": 1},
        ]
    },
    "loss": {"type": "MSELoss"},
    "optimizer": {"type": "Adam", "lr": 0.001},
    "training": {"epochs": 100, "batch_size": 128, "seed": 0, "log_every_steps": 1},
    "data": {"source": "synthetic", "kind": "randn", "n_samples": 128, "n_features": 32, "n_targets": 1},
}
