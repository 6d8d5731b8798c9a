"""A sweep's search space: JSON paths into the spec, their distributions, and the checks made before any trial.

Space keys are written like error locs (`optimizer.lr`, `model.layers[0].out_channels`); every problem is
reported at `space["KEY"]`, the loc DESIGN.md names.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from service.located import LocatedError

KINDS = ("choice", "uniform", "log_uniform", "int_uniform")
_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")

PathPart = str | int


def space_loc(key: str) -> str:
    return f'space["{key}"]'


class SpaceError(LocatedError):
    """A problem with one space key, located at `space["KEY"]`."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(space_loc(key), msg)
        self.key = key


def parse_path(path: str) -> list[PathPart] | None:
    """'model.layers[0].out_channels' -> ['model', 'layers', 0, 'out_channels']; None if it is not a path."""
    parts: list[PathPart] = []
    pos = 0
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None or (pos == 0 and path.startswith(".")):
            return None
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    return parts or None


def get_at(doc: Any, parts: list[PathPart]) -> Any:
    """The value at a path; KeyError when any part of it is not there."""
    node = doc
    for part in parts:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise KeyError(part)
        elif not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def set_at(doc: Any, parts: list[PathPart], value: Any) -> None:
    node = doc
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def with_params(spec: dict[str, Any], params: dict[str, Any], paths: dict[str, list[PathPart]]) -> dict[str, Any]:
    """A copy of the spec with each space key's value replaced by the trial's."""
    out = copy.deepcopy(spec)
    for key, value in params.items():
        set_at(out, paths[key], value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One space key: where it goes in the spec and what it may take."""

    key: str
    parts: list[PathPart]
    kind: str  # one of KINDS
    values: tuple[Any, ...]  # the choices, or (lo, hi)

    def distribution(self) -> BaseDistribution:
        if self.kind == "choice":
            return CategoricalDistribution(self.values)
        lo, hi = self.values
        if self.kind == "int_uniform":
            return IntDistribution(int(lo), int(hi))
        return FloatDistribution(float(lo), float(hi), log=self.kind == "log_uniform")

    def extremes(self) -> tuple[Any, ...]:
        """The values the create-time check tries: both ends of a range, or every choice (numbers: both ends)."""
        if self.kind != "choice":
            return self.values
        if all(_is_number(v) for v in self.values):
            return (min(self.values), max(self.values))
        return self.values

    def low(self) -> Any:
        return self.extremes()[0]

    def high(self) -> Any:
        return self.extremes()[-1]


def _range(key: str, kind: str, raw: Any) -> tuple[Any, Any]:
    if not (isinstance(raw, list) and len(raw) == 2 and all(_is_number(v) for v in raw)):
        raise SpaceError(key, f"{kind} takes [lo, hi], two numbers")
    lo, hi = raw
    if not all(math.isfinite(v) for v in raw):
        raise SpaceError(key, f"{kind} bounds must be finite")
    if kind == "int_uniform" and not (_is_int(lo) and _is_int(hi)):
        raise SpaceError(key, "int_uniform takes two integers")
    if lo >= hi:
        raise SpaceError(key, f"{kind} needs lo < hi, got [{lo}, {hi}]")
    if kind == "log_uniform" and lo <= 0:
        raise SpaceError(key, f"log_uniform needs 0 < lo < hi, got [{lo}, {hi}]: a log range cannot reach zero")
    return lo, hi


def parse_param(key: str, raw: Any, spec_doc: dict[str, Any] | None) -> Param:
    """One space entry, checked against the spec's field at its path (the spec as dumped, defaults included);
    spec_doc None reads a stored, already checked entry."""
    parts = parse_path(key)
    if parts is None:
        raise SpaceError(key, "not a JSON path; write it like an error loc, e.g. optimizer.lr or "
                              "model.layers[0].out_channels")
    try:
        current = get_at(spec_doc, parts) if spec_doc is not None else None
    except KeyError:
        raise SpaceError(key, "no such path in the spec") from None
    if isinstance(current, (dict, list)):
        raise SpaceError(key, "the path names an object or a list; a space key must name a single value")
    if not (isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in KINDS):
        raise SpaceError(key, f"a distribution is one of {{{', '.join(f'{k!r}: ...' for k in KINDS)}}}")
    kind, body = next(iter(raw.items()))
    if kind == "choice":
        if not isinstance(body, list) or not body:
            raise SpaceError(key, "choice takes a non-empty list of values")
        if any(isinstance(v, (dict, list)) for v in body):
            raise SpaceError(key, "choice values must be numbers, strings, booleans or null")
        if len(set(map(repr, body))) != len(body):
            raise SpaceError(key, "choice values must differ")
        values: tuple[Any, ...] = tuple(body)
        if _is_int(current) and not all(_is_int(v) for v in values):
            raise SpaceError(key, f"{key} is an integer field (now {current}); choose among integers")
    else:
        values = _range(key, kind, body)
        if _is_int(current) and kind != "int_uniform":
            raise SpaceError(key, f"{key} is an integer field (now {current}); use int_uniform or a choice "
                                  "of integers")
    return Param(key=key, parts=parts, kind=kind, values=values)


def grid_size(params: list[Param]) -> int:
    size = 1
    for param in params:
        size *= len(param.values)
    return size


def fractional_probe(param: Param) -> float | None:
    """A value strictly inside a float range that is not an integer, to find integer fields left unset."""
    if param.kind not in ("uniform", "log_uniform"):
        return None
    lo, hi = (float(v) for v in param.values)
    mid = math.sqrt(lo * hi) if param.kind == "log_uniform" else (lo + hi) / 2
    return mid if not mid.is_integer() else (mid + (hi - mid) / 3)
