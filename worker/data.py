"""Loads a job's data as tensors: inline arrays, synthetic sets, builtin sets and uploaded datasets.

Also owns what happens to inputs between the raw rows and the network: the validation split, z-score
normalization from the training rows, and the ``data.input_shape`` reshape (``service.inputs.prepare_inputs``
replays the last two for ``/predict``). Shapes and classes always agree with ``service.datainfo.describe_data``: every
load runs it first and reshapes to the shape it reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.datainfo import (
    DataSpecError,
    TaskKind,
    describe_data,
    encode_labels,
    inline_features,
    inline_labels,
    inline_targets,
    resolve_columns,
    task_kind,
)
from service.plan import plan_steps
from service.spec import BuiltinData, DatasetData, InlineData, JobSpec, SyntheticData
from service.tabular import Table

log = logging.getLogger(__name__)

__all__ = ["DatasetLoader", "TaskKind", "TrainData", "load_data"]


@dataclass
class TrainData:
    x_train: torch.Tensor  # (n_train, *input_shape), float32, already normalized when training.normalize
    y_train: torch.Tensor  # int64 labels (n,) for classification; float32 (n, k) otherwise
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    task: TaskKind
    classes: list[str] | None = None  # label names for classification, index i -> classes[i]
    mean: torch.Tensor | None = None  # normalization statistics (per feature), kept for /predict
    std: torch.Tensor | None = None


@dataclass
class _Rows:
    """One set of rows before splitting: x flattened to (n, features), y in its final dtype."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str] | None


DatasetLoader = Callable[[str], Table]


def load_data(spec: JobSpec, *, dataset_loader: DatasetLoader | None = None) -> TrainData:
    """The job's training (and validation) tensors, split, normalized and reshaped as the spec says."""
    data = spec.data
    task = task_kind(spec.loss.type)
    val_rows: _Rows | None = None
    if isinstance(data, DatasetData):
        if dataset_loader is None:
            raise ValueError("a dataset source needs a dataset_loader")
        table = dataset_loader(data.dataset_id)
        info = describe_data(spec, dataset=table.description)
        features, targets = resolve_columns(data, table.description, spec.loss.type)
        rows = _table_rows(table, features, targets, task, classes=None)
        if data.validation_dataset_id is not None:
            val_table = dataset_loader(data.validation_dataset_id)
            _check_validation_columns(val_table, features, targets)
            val_rows = _table_rows(val_table, features, targets, task, classes=rows.classes)
    else:
        info = describe_data(spec)
        if isinstance(data, InlineData):
            rows = _inline_rows(data, task)
        elif isinstance(data, SyntheticData):
            rows = _synthetic_rows(data, task, seed=data.seed if data.seed is not None else spec.training.seed)
        else:
            rows = _builtin_rows(data, task)

    if val_rows is None:
        rows, val_rows = _split(rows, spec)

    mean = std = None
    x_train, x_val = rows.x, None if val_rows is None else val_rows.x
    if spec.training.normalize:
        mean, std = _zscore_stats(x_train)
        x_train = (x_train - mean) / std
        x_val = None if x_val is None else (x_val - mean) / std

    shape = info.input_shape
    log.info(
        "data.loaded source=%s rows=%d train=%d val=%d input_shape=%s task=%s",
        data.source,
        info.n_rows,
        x_train.shape[0],
        0 if x_val is None else x_val.shape[0],
        list(shape),
        task,
    )
    return TrainData(
        x_train=x_train.reshape(x_train.shape[0], *shape),
        y_train=rows.y,
        x_val=None if x_val is None else x_val.reshape(x_val.shape[0], *shape),
        y_val=None if val_rows is None else val_rows.y,
        task=task,
        classes=rows.classes,
        mean=mean,
        std=std,
    )


# --- splitting and normalization ----------------------------------------------------------------------


def _split(rows: _Rows, spec: JobSpec) -> tuple[_Rows, _Rows | None]:
    n_rows = rows.x.shape[0]
    n_val = plan_steps(spec.training, n_rows).n_val
    if n_val == 0:
        return rows, None
    generator = torch.Generator().manual_seed(spec.training.seed)
    perm = torch.randperm(n_rows, generator=generator)
    # Sorted, so both sets keep the data's own row order; only membership is random.
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return (
        _Rows(x=rows.x[train_idx], y=rows.y[train_idx], classes=rows.classes),
        _Rows(x=rows.x[val_idx], y=rows.y[val_idx], classes=rows.classes),
    )


def _zscore_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Accumulate in float64 so large row counts do not lose precision; apply in float32, as /predict does.
    wide = x.double()
    mean = wide.mean(dim=0)
    std = wide.std(dim=0, correction=0)
    std[std == 0] = 1.0
    return mean.float(), std.float()


# --- sources ------------------------------------------------------------------------------------------


def _targets(values: np.ndarray, task: TaskKind, *, classes: list[str] | None) -> tuple[torch.Tensor, list[str] | None]:
    """y in its training dtype: int64 class indices (n,) or float32 (n, k)."""
    if task == "classification":
        if classes is not None:  # already indices into known classes
            return torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1)), classes
        indices, names = encode_labels(values.reshape(-1))
        return torch.from_numpy(indices), names
    y = np.asarray(values, dtype=np.float64)
    return torch.from_numpy(y.reshape(y.shape[0], -1)).float(), None


def _inline_rows(data: InlineData, task: TaskKind) -> _Rows:
    x = torch.from_numpy(inline_features(data.x)).float()
    if task == "classification":
        y, classes = _targets(np.asarray(inline_labels(data.y)), task, classes=None)
    else:
        y, classes = _targets(inline_targets(data.y), task, classes=None)
    return _Rows(x=x.reshape(x.shape[0], -1), y=y, classes=classes)


def _synthetic_rows(data: SyntheticData, task: TaskKind, *, seed: int) -> _Rows:
    n, f = data.n_samples, data.n_features
    if data.kind in ("randn", "regression"):
        if task == "classification":
            raise DataSpecError("data.kind", f"synthetic {data.kind!r} data has real-valued targets, not class labels")
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, f, generator=g)
        if data.kind == "randn":
            y = torch.randn(n, data.n_targets, generator=g)  # the seed article's recipe, bit for bit
        else:
            weights = torch.randn(f, data.n_targets, generator=g)
            y = x @ weights + data.noise * torch.randn(n, data.n_targets, generator=g)
        return _Rows(x=x, y=y, classes=None)
    if data.kind == "classification":
        g = torch.Generator().manual_seed(seed)
        n_classes = data.n_classes
        centers = 3.0 * torch.randn(n_classes, f, generator=g)
        # Balanced classes in a random order: every class appears once n >= n_classes.
        labels = (torch.arange(n) % n_classes)[torch.randperm(n, generator=g)]
        x = centers[labels] + torch.randn(n, f, generator=g)
        label_values = labels.numpy()
    else:
        from sklearn.datasets import make_moons

        n_classes = 2
        moons_x, moons_y = make_moons(n_samples=n, noise=data.noise, random_state=seed % 2**32)
        x = torch.from_numpy(np.asarray(moons_x, dtype=np.float32))
        label_values = np.asarray(moons_y, dtype=np.int64)
    y, classes = _targets(label_values, task, classes=[str(i) for i in range(n_classes)])
    return _Rows(x=x, y=y, classes=classes if task == "classification" else None)


def _builtin_rows(data: BuiltinData, task: TaskKind) -> _Rows:
    from sklearn import datasets  # bundled with scikit-learn: nothing is downloaded

    loaders: dict[str, Callable[[], Any]] = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "diabetes": datasets.load_diabetes,
    }
    bunch = loaders[data.name]()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float64)).float()
    target = np.asarray(bunch.target)
    names = getattr(bunch, "target_names", None)
    if task == "classification":
        if names is None:
            raise DataSpecError("data.name", f"builtin {data.name!r} has real-valued targets, not class labels")
        y, classes = _targets(target, task, classes=[str(name) for name in names])
        return _Rows(x=x, y=y, classes=classes)
    y, _ = _targets(target, task, classes=None)
    return _Rows(x=x, y=y, classes=None)


def _table_rows(
    table: Table, features: list[str], targets: list[str], task: TaskKind, *, classes: list[str] | None
) -> _Rows:
    x_np = np.stack([table.columns[name].astype(np.float64) for name in features], axis=1)
    x = torch.from_numpy(x_np).float()
    if task != "classification":
        y_np = np.stack([table.columns[name].astype(np.float64) for name in targets], axis=1)
        y, _ = _targets(y_np, task, classes=None)
        return _Rows(x=x, y=y, classes=None)
    if classes is None:
        indices, classes = _encode_column(table, targets[0])
        return _Rows(x=x, y=torch.from_numpy(indices), classes=classes)
    # A validation set is mapped by label name onto the training classes, whatever its own codes are.
    names = _label_names(table, targets[0])
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        raise DataSpecError(
            "data.validation_dataset_id",
            f"the validation labels {', '.join(map(repr, unknown[:5]))} are not among the training labels",
        )
    y = torch.tensor([index[n] for n in names], dtype=torch.int64)
    return _Rows(x=x, y=y, classes=classes)


def _encode_column(table: Table, name: str) -> tuple[np.ndarray, list[str]]:
    info = table.description.column(name)
    values = table.columns[name]
    if info is not None and info.categories is not None:
        return values.astype(np.int64), list(info.categories)  # codes already index the sorted categories
    return encode_labels(values)


def _label_names(table: Table, name: str) -> list[str]:
    """Each row's label as the string ``encode_labels`` names it by."""
    info = table.description.column(name)
    values = table.columns[name]
    if info is not None and info.categories is not None:
        return [info.categories[int(code)] for code in values]
    if values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)
    return [str(v) for v in values.tolist()]


def _check_validation_columns(table: Table, features: list[str], targets: list[str]) -> None:
    for name in [*features, *targets]:
        column = table.description.column(name)
        if column is None:
            raise DataSpecError("data.validation_dataset_id", f"the validation dataset has no column {name!r}")
        if name in features and column.dtype == "category":
            raise DataSpecError("data.validation_dataset_id", f"column {name!r} of the validation dataset holds text")
