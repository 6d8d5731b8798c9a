"""What the static check answers: the caps it applies, each problem with its JSON path, and the report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.datainfo import TaskKind
from service.datainfo import task_kind as loss_task_kind
from service.spec import JobSpec

if TYPE_CHECKING:
    from service.settings import Settings

Shape = tuple[int, ...]

BYTES_PER_VALUE = 4  # float32 weights, grads, optimizer state and activations
KNOWN_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_mae", "val_r2")


@dataclass(frozen=True)
class Limits:
    max_parameters: int = 50_000_000
    max_epochs: int = 10_000
    max_steps: int = 10_000_000
    max_rows: int = 1_000_000
    max_layers: int = 256
    max_job_memory_bytes: int = 8 * 2**30
    max_checkpoint_bytes_per_job: int = 8 * 2**30
    max_synthetic_features: int = 100_000
    max_synthetic_targets: int = 10_000
    max_conv_padding: int = 1_024

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_parameters=settings.max_parameters,
            max_epochs=settings.max_epochs,
            max_steps=settings.max_steps,
            max_rows=settings.max_rows,
            max_layers=settings.max_layers,
            max_job_memory_bytes=settings.max_job_memory_bytes,
            max_checkpoint_bytes_per_job=settings.max_checkpoint_bytes_per_job,
            max_synthetic_features=settings.max_synthetic_features,
            max_synthetic_targets=settings.max_synthetic_targets,
            max_conv_padding=settings.max_conv_padding,
        )


@dataclass
class Issue:
    loc: str  # a JSON path into the spec, e.g. "model.layers[2].in_features"
    msg: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.msg}"


@dataclass
class LayerReport:
    index: int
    type: str
    output_shape: list[int]
    params: int
    flops: int


@dataclass
class SpecReport:
    ok: bool
    errors: list[Issue]
    warnings: list[Issue]
    input_shape: list[int]
    output_shape: list[int] | None
    layers: list[LayerReport]
    total_params: int
    trainable_params: int
    flops_per_sample: int
    memory_bytes: int
    steps_per_epoch: int
    total_steps: int

    def to_json(self) -> dict[str, Any]:
        """The body of ``POST /jobs/validate`` (docs/api.md), keys in the documented order.

        Written out rather than ``dataclasses.asdict``, which deep-copies every value: on the submit path that
        was a fifth of a millisecond per job for the seed example's report."""
        return {
            "ok": self.ok,
            "errors": [{"loc": i.loc, "msg": i.msg} for i in self.errors],
            "warnings": [{"loc": i.loc, "msg": i.msg} for i in self.warnings],
            "input_shape": list(self.input_shape),
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "layers": [{"index": r.index, "type": r.type, "output_shape": list(r.output_shape), "params": r.params,
                        "flops": r.flops} for r in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "flops_per_sample": self.flops_per_sample,
            "memory_bytes": self.memory_bytes,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
        }


class ShapeError(ValueError):
    """The layer stack cannot be built for this input shape; ``issues`` says where and why."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(issue) for issue in issues))


def task_kind(spec: JobSpec) -> TaskKind:
    return loss_task_kind(spec.loss.type)


# --- wording shared by every rule -----------------------------------------------------------------------


def shape_text(shape: Sequence[int]) -> str:
    return str(tuple(shape))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def bytes_text(n: int) -> str:
    """A byte count as people read it, exact figure first: "10,000,000,000 bytes (9.3 GiB)"."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.1f} {unit})"
    return f"{n:,} bytes"
