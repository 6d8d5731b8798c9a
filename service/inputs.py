"""Inputs for a trained network: rows of numbers as the user sends them → the tensor the network takes.

Two steps, both used by ``/predict``: ``parse_inputs`` proves the rows well-formed (each problem named by its
``inputs[i][j]`` path) and makes an (n, features) float32 tensor; ``prepare_inputs`` replays what training did to
its inputs, the z-score normalization from the training rows and then the ``data.input_shape`` reshape.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from service.errors import SpecError

FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_TYPES = frozenset({int, float})  # exact types: bool, a subclass of int, is not a number here


def prepare_inputs(x: torch.Tensor, *, mean: torch.Tensor | None, std: torch.Tensor | None,
                   input_shape: tuple[int, ...]) -> torch.Tensor:
    """Parsed rows (n, features) → the network's input: the training normalization, then the reshape to
    (n, *input_shape). The statistics were computed in float64 and stored in float32, as training applied them."""
    if mean is not None and std is not None:
        x = (x - mean) / std
    return x.reshape(x.shape[0], *input_shape)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_inputs(inputs: list[Any], *, input_shape: tuple[int, ...], max_rows: int,
                 numbers_checked: bool = False) -> torch.Tensor:
    """Rows of numbers -> a float32 tensor (n, features), where each row holds prod(input_shape) values, flat or
    nested; every problem names its inputs[i][j] path.
    `numbers_checked`: the parser already proved every value a number (see NumberRows)."""
    if not inputs:
        raise SpecError("inputs is empty", [{"loc": "inputs", "msg": "give at least one row"}])
    if len(inputs) > max_rows:
        raise SpecError("too many rows", [{"loc": "inputs", "msg": f"{len(inputs)} rows, the limit is {max_rows}"}])
    width = math.prod(input_shape)
    fast = _plain_tensor(inputs, width, numbers_checked=numbers_checked)
    if fast is not None:
        return fast
    errors: list[dict[str, str]] = []
    rows: list[list[float]] = []
    for i, row in enumerate(inputs):
        flat = _flatten(row)
        if flat is None:
            errors.append({"loc": f"inputs[{i}]", "msg": "expected a list of numbers"})
            continue
        if len(flat) != width:
            errors.append({"loc": f"inputs[{i}]", "msg": f"expected {width} values, got {len(flat)}"})
            continue
        for j, value in enumerate(flat):
            if not _is_number(value):
                errors.append({"loc": f"inputs[{i}][{j}]", "msg": f"not a number: {json.dumps(value)[:40]}"})
            elif not _finite_float32(value):
                errors.append({"loc": f"inputs[{i}][{j}]", "msg": "not a finite number"})
        rows.append(flat)
        if len(errors) >= 20:
            break
    if errors:
        raise SpecError(f"{len(errors)} problem(s) in inputs: " + "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:3]),
                        errors)
    return torch.tensor(rows, dtype=torch.float32)


def _finite_float32(value: float) -> bool:
    """Models run in float32: a value beyond its range would reach them as inf (an int past float64's range
    cannot even be converted)."""
    try:
        return abs(float(value)) <= FLOAT32_MAX  # False for nan and inf too
    except OverflowError:
        return False


def _flatten(row: Any) -> list[Any] | None:
    if not isinstance(row, list):
        return None
    out: list[Any] = []
    for value in row:
        if isinstance(value, list):
            inner = _flatten(value)
            if inner is None:
                return None
            out.extend(inner)
        else:
            out.append(value)
    return out


def _plain_tensor(inputs: list[Any], width: int, *, numbers_checked: bool) -> torch.Tensor | None:
    """The common case, well-formed rows of finite numbers, without a Python loop over every value (numpy
    converts the lists in C); None for anything else, which the checks above then name value by value."""
    # numpy would quietly turn booleans and numeric strings into numbers: they must be ruled out first.
    if not numbers_checked and not _only_numbers(inputs):
        return None
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf and fail the finite check below
            array = np.array(inputs, dtype=np.float32)
    except (ValueError, OverflowError):  # ragged rows, integers too large
        return None
    if array.ndim < 2 or array[0].size != width or not np.isfinite(array).all():
        return None
    return torch.from_numpy(array.reshape(len(inputs), width))


def _only_numbers(values: list[Any]) -> bool:
    """Every leaf of nested lists is an int or a float: one C-level pass (set of types) per list."""
    types = set(map(type, values))
    if types <= _NUMBER_TYPES:
        return True
    return types == {list} and all(_only_numbers(v) for v in values)

