"""Spec → ``nn.Module``: the shape walk, the builder and the static check that runs before anything is queued.

``check_spec`` (``rules``) propagates the per-sample shape through the layer stack (``shapes``) from the data's
shape without building anything, and reports per-layer shapes, parameter and FLOP counts, a memory estimate
(``memory``), and every problem as an ``Issue`` with its JSON path. ``build_model`` (``builder``) turns the same
walk into an ``nn.Sequential`` of PyTorch's own modules.
"""

from service.nets.builder import build_model
from service.nets.memory import MemoryEstimate, estimate_memory
from service.nets.report import (
    BYTES_PER_VALUE,
    KNOWN_METRICS,
    Issue,
    LayerReport,
    Limits,
    ShapeError,
    SpecReport,
    task_kind,
)
from service.nets.rules import check_spec

__all__ = [
    "BYTES_PER_VALUE",
    "KNOWN_METRICS",
    "Issue",
    "LayerReport",
    "Limits",
    "MemoryEstimate",
    "ShapeError",
    "SpecReport",
    "build_model",
    "check_spec",
    "estimate_memory",
    "task_kind",
]
