"""What the static check needs to know about a job's data, computed without loading it.

``describe_data`` answers per request (shapes, rows, classes) from the spec alone, plus an uploaded dataset's
stored description; it never imports torch or sklearn and never loads a big array. The rules that the worker
must apply identically when it does load the data (which columns are features, how labels become class
indices, which loss wants which targets) live here too, so the check and the worker cannot disagree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from service.located import LocatedError
from service.spec import (
    CLASSIFICATION_LOSSES,
    BuiltinData,
    DatasetData,
    InlineData,
    JobSpec,
    SyntheticData,
)

if TYPE_CHECKING:
    from service.tabular import DatasetDescription

log = logging.getLogger(__name__)

TaskKind = Literal["classification", "binary", "regression"]


@dataclass(frozen=True)
class DataInfo:
    input_shape: tuple[int, ...]  # one sample, after data.input_shape reshaping: (32,) or (1, 8, 8)
    n_rows: int  # rows before the validation split
    target_width: int  # columns of y; 1 for a vector of labels
    n_classes: int | None  # distinct class labels when y holds labels (None for real-valued targets)
    looks_unnormalized: bool  # inputs far from zero mean / unit scale (drives a warning)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DataInfo:
        return cls(
            input_shape=tuple(raw["input_shape"]),
            n_rows=int(raw["n_rows"]),
            target_width=int(raw["target_width"]),
            n_classes=raw.get("n_classes"),
            looks_unnormalized=bool(raw.get("looks_unnormalized", False)),
        )


class DataSpecError(LocatedError):
    """A problem with the spec's data, located by JSON path (``data.x[3]``, ``data.input_shape``)."""


@dataclass(frozen=True)
class BuiltinInfo:
    n_rows: int
    n_features: int
    n_classes: int | None  # None: a regression set
    looks_unnormalized: bool


# Measured from the sklearn copies (tests check this table against the loaded arrays).
BUILTIN_INFO: dict[str, BuiltinInfo] = {
    "iris": BuiltinInfo(n_rows=150, n_features=4, n_classes=3, looks_unnormalized=True),
    "wine": BuiltinInfo(n_rows=178, n_features=13, n_classes=3, looks_unnormalized=True),
    "breast_cancer": BuiltinInfo(n_rows=569, n_features=30, n_classes=2, looks_unnormalized=True),
    "digits": BuiltinInfo(n_rows=1797, n_features=64, n_classes=10, looks_unnormalized=True),  # pixels 0..16
    # Features are scaled to unit norm per column (std ~0.05); targets run ~25..346.
    "diabetes": BuiltinInfo(n_rows=442, n_features=10, n_classes=None, looks_unnormalized=True),
}

# Thresholds of the "unnormalized inputs" warning, per feature.
_MAX_ABS_MEAN = 3.0
_MAX_STD = 10.0
_MIN_STD = 0.1


def task_kind(loss_type: str) -> TaskKind:
    """What y must hold for a loss: class indices, 0/1 targets, or real values."""
    if loss_type in CLASSIFICATION_LOSSES:
        return "classification"
    if loss_type == "BCEWithLogitsLoss":
        return "binary"
    return "regression"


def features_look_unnormalized(means: Sequence[float], stds: Sequence[float], *, n_rows: int) -> bool:
    """True when some feature is far from zero mean / unit scale: |mean| > 3, std > 10 or std < 0.1.

    A constant feature (std 0) only counts through its mean: z-scoring cannot rescale it anyway. With a
    single row no spread is known, so only means count.
    """
    for mean, std in zip(means, stds):
        if abs(mean) > _MAX_ABS_MEAN:
            return True
        if n_rows > 1 and std > 0 and (std > _MAX_STD or std < _MIN_STD):
            return True
    return False


def describe_data(spec: JobSpec, *, dataset: DatasetDescription | None = None) -> DataInfo:
    """Shapes, row count and classes of the job's data; raises ``DataSpecError`` with a JSON path."""
    data = spec.data
    task = task_kind(spec.loss.type)
    if isinstance(data, DatasetData) and data.validation_dataset_id and spec.training.validation_split > 0:
        raise DataSpecError(
            "training.validation_split", "give validation_split or data.validation_dataset_id, not both"
        )
    if isinstance(data, InlineData):
        sample_shape, n_rows, target_width, n_classes, unnormalized = _describe_inline(data, task)
    elif isinstance(data, SyntheticData):
        sample_shape, n_rows, target_width, n_classes, unnormalized = _describe_synthetic(data, task)
    elif isinstance(data, BuiltinData):
        info = BUILTIN_INFO[data.name]
        sample_shape, n_rows, target_width = (info.n_features,), info.n_rows, 1
        n_classes = info.n_classes if task == "classification" else (1 if task == "binary" else None)
        unnormalized = info.looks_unnormalized
    else:
        if dataset is None:
            raise DataSpecError("data.dataset_id", f"dataset {data.dataset_id!r} was not found")
        sample_shape, n_rows, target_width, n_classes, unnormalized = _describe_dataset(data, dataset, spec.loss.type)
    input_shape = reshape_for(data.input_shape, n_features=math.prod(sample_shape), default=sample_shape)
    return DataInfo(
        input_shape=input_shape,
        n_rows=n_rows,
        target_width=target_width,
        n_classes=n_classes,
        looks_unnormalized=unnormalized,
    )


def reshape_for(input_shape: Sequence[int] | None, *, n_features: int, default: tuple[int, ...]) -> tuple[int, ...]:
    """The per-sample shape after ``data.input_shape``; its product must equal the feature count."""
    if input_shape is None:
        return default
    if math.prod(input_shape) != n_features:
        raise DataSpecError(
            "data.input_shape",
            f"{list(input_shape)} holds {math.prod(input_shape)} values, the data has {n_features} features",
        )
    return tuple(input_shape)


_Described = tuple[tuple[int, ...], int, int, int | None, bool]


# --- synthetic ----------------------------------------------------------------------------------------


def _describe_synthetic(data: SyntheticData, task: TaskKind) -> _Described:
    if data.kind == "moons":
        n_features, target_width, classes = 2, 1, 2
    elif data.kind == "classification":
        n_features, target_width, classes = data.n_features, 1, data.n_classes
    else:
        n_features, target_width, classes = data.n_features, data.n_targets, 0
    if task == "classification":
        n_classes = classes or None
    elif task == "binary":
        n_classes = target_width
    else:
        n_classes = None
    return (n_features,), data.n_samples, target_width, n_classes, False


# --- inline -------------------------------------------------------------------------------------------


def _describe_inline(data: InlineData, task: TaskKind) -> _Described:
    x = inline_features(data.x)
    n_rows = x.shape[0]
    if len(data.y) != n_rows:
        raise DataSpecError("data.y", f"y has {len(data.y)} rows, x has {n_rows}")
    n_classes: int | None
    if task == "classification":
        labels = inline_labels(data.y)
        target_width, n_classes = 1, len(set(labels))
    else:
        y = inline_targets(data.y)
        target_width = y.shape[1]
        n_classes = target_width if task == "binary" else None
    flat = x.reshape(n_rows, -1)
    unnormalized = features_look_unnormalized(flat.mean(axis=0), flat.std(axis=0), n_rows=n_rows)
    return tuple(x.shape[1:]) or (1,), n_rows, target_width, n_classes, unnormalized


def inline_features(x: list[Any]) -> np.ndarray:
    """``data.x`` as a float64 array (n, *sample_shape); ragged, non-numeric or non-finite -> DataSpecError."""
    array = _fast_numeric(x)
    if array is None:
        _check_nested(x, "data.x")
        array = np.asarray(x, dtype=np.float64)  # the walk proved it rectangular and numeric
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.shape[1:] and 0 in array.shape[1:]:
        raise DataSpecError("data.x[0]", "a row must hold at least one value")
    bad = ~np.isfinite(array)
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), array.shape)
        raise DataSpecError("data.x" + "".join(f"[{i}]" for i in index), "not a finite number")
    return array


def inline_targets(y: list[Any]) -> np.ndarray:
    """``data.y`` as real-valued float64 targets of shape (n, k)."""
    array = _fast_numeric(y)
    if array is None:
        _check_nested(y, "data.y")
        array = np.asarray(y, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise DataSpecError(
            "data.y[0]", f"each row of y must be a number or a list of numbers, got shape {list(array.shape[1:])}"
        )
    if array.shape[1] == 0:
        raise DataSpecError("data.y[0]", "a row must hold at least one value")
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.unravel_index(int(np.argmax(bad)), array.shape)
        raise DataSpecError(f"data.y[{row}]" + (f"[{col}]" if isinstance(y[0], list) else ""), "not a finite number")
    return array


def inline_labels(y: list[Any]) -> list[int] | list[str]:
    """``data.y`` as class labels: integers or strings, one per row (``[2]`` counts as ``2``)."""
    labels: list[Any] = []
    for i, value in enumerate(y):
        path = f"data.y[{i}]"
        if isinstance(value, list):
            if len(value) != 1:
                raise DataSpecError(
                    path, f"a classification target is one class label per row, got {len(value)} values"
                )
            value, path = value[0], path + "[0]"
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            labels.append(value)
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            labels.append(int(value))
        else:
            raise DataSpecError(path, f"class labels must be integers 0..C-1 or strings, got {_show(value)}")
        if type(labels[-1]) is not type(labels[0]):
            raise DataSpecError(path, f"labels mix numbers and strings: {_show(labels[0])} and {_show(labels[-1])}")
    return labels


def encode_labels(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map raw labels to indices 0..C-1 in sorted order; returns (int64 indices, label names)."""
    array = np.asarray(values)
    if array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0):
        array = array.astype(np.int64)  # 1.0 and 1 are the same class, named "1"
    uniques, indices = np.unique(array, return_inverse=True)
    return indices.astype(np.int64).reshape(-1), [str(u) for u in uniques.tolist()]


def _fast_numeric(values: list[Any]) -> np.ndarray | None:
    # One C-speed conversion for the common, well-formed body; the slow walk only locates errors.
    try:
        array = np.array(values)
    except (ValueError, TypeError, OverflowError):
        return None
    if array.dtype.kind not in "iuf":
        return None
    return array.astype(np.float64, copy=False)


def _shape_of(value: Any) -> tuple[int, ...]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _check_nested(values: list[Any], root: str) -> None:
    """Walk a nested list and raise at the first element that breaks the shape of element 0 or is no number."""
    expected = _shape_of(values[0])
    for i, row in enumerate(values):
        _check_element(row, expected, f"{root}[{i}]", root=root, depth=0)


def _check_element(value: Any, expected: tuple[int, ...], path: str, *, root: str, depth: int) -> None:
    if not expected:
        if isinstance(value, list):
            raise DataSpecError(path, f"expected a number, got a list ({root}{'[0]' * (depth + 1)} is a number)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataSpecError(path, f"expected a number, got {_show(value)}")
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            raise DataSpecError(path, "not a finite number")
        return
    if not isinstance(value, list):
        raise DataSpecError(path, f"expected a list of {expected[0]} values, got {_show(value)}")
    if len(value) != expected[0]:
        if depth == 0:
            row = path[len(root) + 1 : -1]
            raise DataSpecError(path, f"row {row} has {len(value)} values, row 0 has {expected[0]}")
        ref = root + "[0]" * (depth + 1)
        raise DataSpecError(path, f"holds {len(value)} values, {ref} holds {expected[0]}")
    for j, item in enumerate(value):
        _check_element(item, expected[1:], f"{path}[{j}]", root=root, depth=depth + 1)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- uploaded datasets --------------------------------------------------------------------------------


def resolve_columns(data: DatasetData, description: DatasetDescription, loss_type: str) -> tuple[list[str], list[str]]:
    """The (feature, target) columns a job trains on; raises ``DataSpecError`` naming a bad column."""
    names = description.column_names
    available = ", ".join(names)
    if data.target is None:
        targets, target_locs = list(description.target), ["data.target"] * len(description.target)
    elif isinstance(data.target, str):
        targets, target_locs = [data.target], ["data.target"]
    else:
        targets, target_locs = list(data.target), [f"data.target[{i}]" for i in range(len(data.target))]
    if not targets:
        raise DataSpecError("data.target", "name at least one target column")
    for name, loc in zip(targets, target_locs):
        if description.column(name) is None:
            raise DataSpecError(loc, f"no column named {name!r}; the columns are: {available}")

    task = task_kind(loss_type)
    if task == "classification" and len(targets) != 1:
        raise DataSpecError("data.target", f"{loss_type} takes one column of class labels, got {len(targets)}")
    for name, loc in zip(targets, target_locs):
        column = description.column(name)
        assert column is not None  # checked above
        if column.dtype == "category" and task == "regression":
            raise DataSpecError(loc, f"column {name!r} holds text; {loss_type} needs numbers (use CrossEntropyLoss)")
        if column.dtype == "category" and task == "binary" and column.n_unique > 2:
            raise DataSpecError(
                loc, f"column {name!r} holds {column.n_unique} text labels; BCEWithLogitsLoss needs two (0/1)"
            )

    if data.features is None:
        features = [n for n in names if n not in targets]
        feature_locs = ["data.features"] * len(features)
    else:
        features = list(data.features)
        feature_locs = [f"data.features[{i}]" for i in range(len(features))]
    if not features:
        raise DataSpecError("data.features", "no feature columns are left once the targets are set aside")
    for name, loc in zip(features, feature_locs):
        column = description.column(name)
        if column is None:
            raise DataSpecError(loc, f"no column named {name!r}; the columns are: {available}")
        if name in targets:
            raise DataSpecError(loc, f"column {name!r} is also a target")
        if column.dtype == "category":
            raise DataSpecError(
                loc, f"column {name!r} holds text; a text column can be a classification target, not a feature"
            )

    return features, targets


def _describe_dataset(data: DatasetData, description: DatasetDescription, loss_type: str) -> _Described:
    features, targets = resolve_columns(data, description, loss_type)
    task = task_kind(loss_type)
    n_classes: int | None
    if task == "classification":
        column = description.column(targets[0])
        assert column is not None
        target_width, n_classes = 1, column.n_unique
    else:
        target_width = len(targets)
        n_classes = target_width if task == "binary" else None
    means: list[float] = []
    stds: list[float] = []
    for name in features:
        column = description.column(name)
        assert column is not None
        means.append(column.mean or 0.0)
        stds.append(column.std or 0.0)
    unnormalized = features_look_unnormalized(means, stds, n_rows=description.n_rows)
    return (len(features),), description.n_rows, target_width, n_classes, unnormalized
