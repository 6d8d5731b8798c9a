"""trainserve: the Python client and CLI for a trainserve server (no torch needed on this side).

    from trainserve import Client
    client = Client()
    job = client.jobs.wait(client.jobs.create("examples/seed_mlp.json").id, progress=True)
"""

from __future__ import annotations

import logging

from trainserve.client import Client, Datasets, Jobs, Models, resolve_api_key, resolve_url, spec_to_body
from trainserve.errors import (
    AuthError,
    Conflict,
    ConnectionFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TrainserveError,
    ValidationError,
    WaitTimeout,
)
from trainserve.models import (
    Best,
    Checkpoint,
    Dataset,
    Job,
    LayerReport,
    MetricPoint,
    Metrics,
    Model,
    ModelSummary,
    ModelVersion,
    Prediction,
    Problem,
    Progress,
    Report,
    WorkerInfo,
)
from trainserve.spec import (
    ELU,
    GELU,
    SGD,
    Adam,
    AdamW,
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BCEWithLogitsLoss,
    Builtin,
    BuiltinData,
    CheckpointPolicy,
    Conv1d,
    Conv2d,
    CosineAnnealingLR,
    CrossEntropyLoss,
    DatasetData,
    DatasetSource,
    Dropout,
    EarlyStopping,
    ExponentialLR,
    Flatten,
    HuberLoss,
    Identity,
    InitFrom,
    Inline,
    InlineData,
    L1Loss,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool1d,
    MaxPool2d,
    MSELoss,
    NLLLoss,
    OneCycleLR,
    PReLU,
    ReduceLROnPlateau,
    ReLU,
    RMSprop,
    Sigmoid,
    SiLU,
    SmoothL1Loss,
    Softmax,
    Spec,
    SpecPart,
    StepLR,
    Synthetic,
    SyntheticData,
    Tanh,
    Training,
)

# --- sweeps and comparing runs ---
from trainserve.models import ComparedJob, Comparison, SeriesPoint, Sweep, SweepBest, SweepTrial  # noqa: E402
from trainserve.sweeps import Sweeps  # noqa: E402

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ELU", "GELU", "SGD", "Adam", "AdamW", "AuthError", "AvgPool1d", "AvgPool2d", "BCEWithLogitsLoss",
    "BatchNorm1d", "BatchNorm2d", "Best", "Builtin", "BuiltinData", "Checkpoint", "CheckpointPolicy", "Client",
    "Conflict", "ConnectionFailed", "Conv1d", "Conv2d", "CosineAnnealingLR", "CrossEntropyLoss", "Dataset",
    "DatasetData", "DatasetSource", "Datasets", "Dropout", "EarlyStopping", "ExponentialLR", "Flatten",
    "HuberLoss", "Identity", "InitFrom", "Inline", "InlineData", "Job", "Jobs", "L1Loss", "LayerNorm", "LayerReport",
    "LeakyReLU", "Linear", "LogSoftmax", "MSELoss", "MaxPool1d", "MaxPool2d", "MetricPoint", "Metrics", "Model", "ModelSummary",
    "ModelVersion", "Models",
    "NLLLoss", "NotFound", "OneCycleLR", "PReLU", "PayloadTooLarge", "Prediction", "Problem", "Progress",
    "RMSprop", "RateLimited", "ReLU", "ReduceLROnPlateau", "Report", "ServerError", "ServiceUnavailable",
    "SiLU", "Sigmoid", "SmoothL1Loss", "Softmax", "Spec", "SpecPart", "StepLR", "Synthetic", "SyntheticData",
    "Tanh", "Training", "TrainserveError", "ValidationError", "WaitTimeout", "WorkerInfo", "resolve_api_key", "resolve_url",
    "spec_to_body",
    # sweeps and comparing runs
    "ComparedJob", "Comparison", "SeriesPoint", "Sweep", "SweepBest", "SweepTrial", "Sweeps",
]
