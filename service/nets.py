"""Spec → ``nn.Module``: the builder and the static check that runs before anything is queued.

``check_spec`` propagates the per-sample shape through the layer stack from the data's shape without building
anything, and reports per-layer shapes, parameter and FLOP counts, a memory estimate, and every problem as an
``Issue`` with its JSON path. ``build_model`` turns the same walk into an ``nn.Sequential`` of PyTorch's own
modules, seeded so that it equals, weight for weight, the hand-written ``torch.manual_seed(seed);
nn.Sequential(...)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from service.datainfo import DataInfo, TaskKind
from service.datainfo import task_kind as loss_task_kind
from service.plan import StepPlan, plan_steps
from service.spec import (
    CLASSIFICATION_LOSSES,
    SGD,
    Adam,
    AdamW,
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    Flatten,
    InitName,
    JobSpec,
    Layer,
    LayerNorm,
    Linear,
    LogSoftmax,
    MaxPool1d,
    MaxPool2d,
    PReLU,
    ReduceLROnPlateau,
    RMSprop,
    Softmax,
)

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

Shape = tuple[int, ...]

BYTES_PER_VALUE = 4  # float32 weights, grads, optimizer state and activations
KNOWN_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_mae", "val_r2")
_HIGHER_IS_BETTER = frozenset({"val_accuracy", "val_r2"})
_REGRESSION_METRICS = frozenset({"val_mae", "val_r2"})


@dataclass(frozen=True)
class Limits:
    max_parameters: int = 50_000_000
    max_epochs: int = 10_000
    max_steps: int = 10_000_000
    max_rows: int = 1_000_000
    max_layers: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_parameters=settings.max_parameters,
            max_epochs=settings.max_epochs,
            max_steps=settings.max_steps,
            max_rows=settings.max_rows,
            max_layers=settings.max_layers,
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
        """The body of ``POST /jobs/validate`` (docs/api.md), keys in the documented order."""
        return asdict(self)


class ShapeError(ValueError):
    """The layer stack cannot be built for this input shape; ``issues`` says where and why."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(issue) for issue in issues))


def task_kind(spec: JobSpec) -> TaskKind:
    return loss_task_kind(spec.loss.type)


# --- the shape walk -----------------------------------------------------------------------------------


def _shape_text(shape: Sequence[int]) -> str:
    return str(tuple(shape))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class _Step:
    """What one layer does to a sample, given the shape that reaches it."""

    index: int
    layer: Layer
    shape: Shape
    from_data: bool  # no layer before this one computed new values from the data's layout
    sources: list[str | None]  # per dim of `shape`: the spec path that fixed its size, if any
    errors: list[Issue]
    warnings: list[Issue]

    @property
    def loc(self) -> str:
        return f"model.layers[{self.index}]"

    def error(self, field_name: str | None, msg: str) -> None:
        self.errors.append(Issue(f"{self.loc}.{field_name}" if field_name else self.loc, msg))

    def warn(self, field_name: str | None, msg: str) -> None:
        self.warnings.append(Issue(f"{self.loc}.{field_name}" if field_name else self.loc, msg))

    def input_text(self) -> str:
        """How the input reached this layer, for messages: "the data's samples are (64,)"."""
        if self.from_data:
            return f"the data's samples are {_shape_text(self.shape)}"
        return f"the previous layer outputs {_shape_text(self.shape)}"

    def size_text(self, actual: int, unit: str) -> str:
        """The other half of "expected X, ...": "the data has 32 features", "the previous layer outputs 32"."""
        if self.from_data:
            return f"the data has {_plural(actual, unit)}"
        if unit == "feature":
            return f"the previous layer outputs {actual}"
        return f"the previous layer outputs {_plural(actual, unit)}"


@dataclass
class _Out:
    shape: Shape
    kwargs: dict[str, Any]
    params: int = 0
    flops: int = 0
    buffers: int = 0
    sources: list[str | None] | None = None  # None: same as the input's (the layer keeps every dim)


@dataclass
class _Walk:
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    reports: list[LayerReport] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    output_shape: Shape | None = None  # None: the walk stopped at a layer it could not get through
    output_sources: list[str | None] = field(default_factory=list)
    buffers: int = 0
    activation_values: int = 0  # values per sample held for backward: the input and every layer's output
    single_value_norms: list[int] = field(default_factory=list)  # BatchNorm layers with one value per channel


def _tuple_arg(step: _Step, field_name: str, value: int | list[int], n: int) -> tuple[int, ...] | None:
    """An int or list argument as the n-tuple PyTorch takes; a list of length 1 repeats for every dim."""
    if isinstance(value, int):
        return (value,) * n
    if len(value) == 1:
        return (value[0],) * n
    if len(value) == n:
        return tuple(value)
    step.error(field_name, f"{step.layer.type} takes {_plural(n, 'value')} here, got {len(value)}: {value}")
    return None


def _rank_hint(step: _Step, want: str) -> str:
    if step.from_data:
        if want == "(C, H, W)" and len(step.shape) == 1 and math.isqrt(step.shape[0]) ** 2 == step.shape[0]:
            side = math.isqrt(step.shape[0])
            return f"set data.input_shape to the shape of one sample, e.g. [1, {side}, {side}]"
        return f"set data.input_shape to the {want} shape of one sample"
    return f"this layer cannot follow a layer that outputs {_shape_text(step.shape)}"


def _linear(step: _Step) -> _Out | None:
    layer = step.layer
    assert isinstance(layer, Linear)
    s = step.shape
    actual = s[-1]
    if layer.in_features is not None and layer.in_features != actual:
        if len(s) == 1:
            step.error("in_features", f"expected {layer.in_features}, {step.size_text(actual, 'feature')}")
        else:
            step.error(
                "in_features",
                f"expected {layer.in_features}, {step.input_text()} (Linear acts on the last dimension, {actual});"
                " add Flatten before Linear",
            )
    out = layer.out_features
    sources = list(step.sources[:-1]) + [f"{step.loc}.out_features"]
    return _Out(
        shape=s[:-1] + (out,),
        kwargs={"in_features": actual, "out_features": out, "bias": layer.bias},
        params=actual * out + (out if layer.bias else 0),
        flops=2 * actual * out * math.prod(s[:-1]),
        sources=sources,
    )


def _conv(step: _Step, n: int) -> _Out | None:
    layer = step.layer
    assert isinstance(layer, (Conv1d, Conv2d))
    s = step.shape
    want = "(C, L)" if n == 1 else "(C, H, W)"
    if len(s) != n + 1:
        step.error(None, f"{layer.type} needs samples shaped {want}, but {step.input_text()}; {_rank_hint(step, want)}")
        return None
    channels = s[0]
    if layer.in_channels is not None and layer.in_channels != channels:
        step.error("in_channels", f"expected {layer.in_channels}, {step.size_text(channels, 'channel')}")
    if channels % layer.groups or layer.out_channels % layer.groups:
        step.error(
            "groups",
            f"groups {layer.groups} must divide both in_channels ({channels}) and out_channels ({layer.out_channels})",
        )
    kernel = _tuple_arg(step, "kernel_size", layer.kernel_size, n)
    stride = _tuple_arg(step, "stride", layer.stride, n)
    dilation = _tuple_arg(step, "dilation", layer.dilation, n)
    padding: tuple[int, ...] | str | None
    if layer.padding == "valid":
        padding = (0,) * n
    elif layer.padding == "same":
        padding = "same"
    else:
        padding = _tuple_arg(step, "padding", layer.padding, n)
    if kernel is None or stride is None or dilation is None or padding is None:
        return None
    if padding == "same" and any(st != 1 for st in stride):
        step.error("padding", f"padding \"same\" needs stride 1, got stride {layer.stride}")
        return None
    spatial: list[int] = []
    for dim, size in enumerate(s[1:]):
        if isinstance(padding, str):  # "same": stride 1, output as large as the input
            spatial.append(size)
            continue
        pad = padding[dim]
        span = dilation[dim] * (kernel[dim] - 1) + 1
        if size + 2 * pad < span:
            what = f"kernel {kernel[dim]}" + (f" with dilation {dilation[dim]} (span {span})" if dilation[dim] > 1 else "")
            step.error("kernel_size", f"{what} is larger than the padded input {size + 2 * pad}")
            return None
        spatial.append((size + 2 * pad - span) // stride[dim] + 1)
    out_shape = (layer.out_channels, *spatial)
    per_filter = (channels // layer.groups) * math.prod(kernel)
    return _Out(
        shape=out_shape,
        kwargs={
            "in_channels": channels,
            "out_channels": layer.out_channels,
            "kernel_size": kernel,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "groups": layer.groups,
            "bias": layer.bias,
        },
        params=layer.out_channels * per_filter + (layer.out_channels if layer.bias else 0),
        flops=2 * per_filter * layer.out_channels * math.prod(spatial),
        sources=[f"{step.loc}.out_channels"] + [None] * n,
    )


def _pool(step: _Step, n: int) -> _Out | None:
    layer = step.layer
    assert isinstance(layer, (MaxPool1d, MaxPool2d, AvgPool1d, AvgPool2d))
    s = step.shape
    want = "(C, L)" if n == 1 else "(C, H, W)"
    if len(s) != n + 1:
        step.error(None, f"{layer.type} needs samples shaped {want}, but {step.input_text()}; {_rank_hint(step, want)}")
        return None
    kernel = _tuple_arg(step, "kernel_size", layer.kernel_size, n)
    stride = kernel if layer.stride is None else _tuple_arg(step, "stride", layer.stride, n)
    padding = _tuple_arg(step, "padding", layer.padding, n)
    dilation: tuple[int, ...] | None = (1,) * n  # average pools take no dilation
    if isinstance(layer, (MaxPool1d, MaxPool2d)):
        dilation = _tuple_arg(step, "dilation", layer.dilation, n)
    if kernel is None or stride is None or padding is None or dilation is None:
        return None
    spatial: list[int] = []
    for dim, size in enumerate(s[1:]):
        k, st, pad, dil = kernel[dim], stride[dim], padding[dim], dilation[dim]
        if pad > k // 2:
            step.error("padding", f"padding {pad} is more than half the kernel size {k}")
        span = dil * (k - 1) + 1
        # PyTorch's pooling_output_shape: ceil_mode rounds up (a window may hang past the end), but no window
        # may start in the right padding.
        out = (size + 2 * pad - span + (st - 1 if layer.ceil_mode else 0)) // st + 1
        if layer.ceil_mode and (out - 1) * st >= size + pad:
            out -= 1
        if out < 1:
            what = f"kernel {k}" + (f" with dilation {dil} (span {span})" if dil > 1 else "")
            step.error("kernel_size", f"{what} is larger than the padded input {size + 2 * pad}")
            return None
        spatial.append(out)
    kwargs: dict[str, Any] = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": layer.ceil_mode}
    if isinstance(layer, (MaxPool1d, MaxPool2d)):
        kwargs["dilation"] = dilation
    else:
        kwargs["count_include_pad"] = layer.count_include_pad
    out_shape = (s[0], *spatial)
    return _Out(shape=out_shape, kwargs=kwargs, flops=math.prod(out_shape), sources=[step.sources[0]] + [None] * n)


def _flatten(step: _Step) -> _Out | None:
    layer = step.layer
    assert isinstance(layer, Flatten)
    full = (0, *step.shape)  # the batch dim is dim 0 of what the module sees
    rank = len(full)
    dims: list[int] = []
    for name, value in (("start_dim", layer.start_dim), ("end_dim", layer.end_dim)):
        if not -rank <= value < rank:
            step.error(
                name,
                f"{name} {value} is out of range: the input is (batch, {', '.join(map(str, step.shape))}),"
                f" dims {-rank}..{rank - 1}",
            )
            return None
        dims.append(value % rank)
    start, end = dims
    if start > end:
        step.error("start_dim", f"start_dim ({layer.start_dim}) comes after end_dim ({layer.end_dim})")
        return None
    if start == 0 and end > 0:
        step.error("start_dim", "start_dim 0 would merge the batch dimension into the features; use start_dim=1")
        return None
    if start == 0:  # flatten(0, 0) leaves everything as it is
        return _Out(shape=step.shape, kwargs={"start_dim": layer.start_dim, "end_dim": layer.end_dim})
    lo, hi = start - 1, end  # the merged dims, as indices into the per-sample shape
    merged = step.shape[lo:hi]
    kept = [j for j in range(lo, hi) if step.shape[j] != 1]
    # The merged size is fixed by one layer's argument only when the other merged dims are 1.
    source = step.sources[kept[0]] if len(kept) == 1 else (step.sources[lo] if hi - lo == 1 else None)
    return _Out(
        shape=step.shape[:lo] + (math.prod(merged),) + step.shape[hi:],
        kwargs={"start_dim": layer.start_dim, "end_dim": layer.end_dim},
        sources=list(step.sources[:lo]) + [source] + list(step.sources[hi:]),
    )


def _batch_norm(step: _Step, ranks: tuple[int, ...]) -> _Out | None:
    layer = step.layer
    assert isinstance(layer, (BatchNorm1d, BatchNorm2d))
    s = step.shape
    if len(s) not in ranks:
        want = "(C,) or (C, L)" if isinstance(layer, BatchNorm1d) else "(C, H, W)"
        hint = "use BatchNorm2d" if isinstance(layer, BatchNorm1d) and len(s) == 3 else _rank_hint(step, want)
        step.error(None, f"{layer.type} needs samples shaped {want}, but {step.input_text()}; {hint}")
        return None
    channels = s[0]
    unit = "feature" if len(s) == 1 else "channel"
    if layer.num_features is not None and layer.num_features != channels:
        step.error("num_features", f"expected {layer.num_features}, {step.size_text(channels, unit)}")
    return _Out(
        shape=s,
        kwargs={
            "num_features": channels,
            "eps": layer.eps,
            "momentum": layer.momentum,
            "affine": layer.affine,
            "track_running_stats": layer.track_running_stats,
        },
        params=2 * channels if layer.affine else 0,
        flops=2 * math.prod(s),
        buffers=2 * channels if layer.track_running_stats else 0,
    )


def _layer_norm(step: _Step) -> _Out | None:
    layer = step.layer
    assert isinstance(layer, LayerNorm)
    s = step.shape
    declared = layer.normalized_shape
    if declared is None:
        normalized: Shape = s[-1:]
    else:
        wanted = (declared,) if isinstance(declared, int) else tuple(declared)
        actual = s[-len(wanted):] if len(wanted) <= len(s) else s
        if actual != wanted:
            shown = str(declared) if isinstance(declared, int) else _shape_text(wanted)
            got = step.size_text(s[-1], "feature") if len(s) == 1 and len(wanted) == 1 else step.input_text()
            step.error("normalized_shape", f"expected {shown}, {got}")
            normalized = actual if len(actual) == len(wanted) else s[-1:]
        else:
            normalized = wanted
    size = math.prod(normalized)
    affine = size * (2 if layer.bias else 1) if layer.elementwise_affine else 0
    return _Out(
        shape=s,
        kwargs={
            "normalized_shape": normalized,
            "eps": layer.eps,
            "elementwise_affine": layer.elementwise_affine,
            "bias": layer.bias,
        },
        params=affine,
        flops=2 * math.prod(s),
    )


def _prelu(step: _Step) -> _Out | None:
    layer = step.layer
    assert isinstance(layer, PReLU)
    channels = step.shape[0]
    if layer.num_parameters not in (1, channels):
        step.error("num_parameters", f"expected 1 or {channels} (one per channel), got {layer.num_parameters}")
    return _Out(
        shape=step.shape,
        kwargs={"num_parameters": layer.num_parameters, "init": layer.init},
        params=layer.num_parameters,
        flops=math.prod(step.shape),
    )


def _softmax(step: _Step) -> _Out | None:
    layer = step.layer
    assert isinstance(layer, (Softmax, LogSoftmax))
    rank = len(step.shape) + 1
    if not -rank <= layer.dim < rank:
        step.error(
            "dim",
            f"dim {layer.dim} is out of range: the input is (batch, {', '.join(map(str, step.shape))}),"
            f" dims {-rank}..{rank - 1}",
        )
        return None
    if layer.dim % rank == 0:
        step.warn("dim", "dim 0 is the batch dimension, so this normalizes across samples; use dim=1 or -1")
    return _Out(shape=step.shape, kwargs={"dim": layer.dim}, flops=3 * math.prod(step.shape))


def _elementwise(step: _Step) -> _Out | None:
    layer = step.layer
    kwargs = layer.model_dump(exclude={"type"})
    flops = 0 if layer.type == "Identity" else math.prod(step.shape)
    return _Out(shape=step.shape, kwargs=kwargs, flops=flops)


def _shape_of(step: _Step) -> _Out | None:
    kind = step.layer.type
    if kind == "Linear":
        return _linear(step)
    if kind in ("Conv1d", "Conv2d"):
        return _conv(step, 1 if kind == "Conv1d" else 2)
    if kind in ("MaxPool1d", "AvgPool1d"):
        return _pool(step, 1)
    if kind in ("MaxPool2d", "AvgPool2d"):
        return _pool(step, 2)
    if kind == "Flatten":
        return _flatten(step)
    if kind == "BatchNorm1d":
        return _batch_norm(step, (1, 2))
    if kind == "BatchNorm2d":
        return _batch_norm(step, (3,))
    if kind == "LayerNorm":
        return _layer_norm(step)
    if kind == "PReLU":
        return _prelu(step)
    if kind in ("Softmax", "LogSoftmax"):
        return _softmax(step)
    return _elementwise(step)  # ReLU, LeakyReLU, ELU, GELU, SiLU, Sigmoid, Tanh, Dropout, Identity


_RESHAPING = (Linear, Conv1d, Conv2d, MaxPool1d, MaxPool2d, AvgPool1d, AvgPool2d)


def _walk(layers: Sequence[Layer], input_shape: Shape) -> _Walk:
    """Propagate one sample's shape through the stack; stops at the first layer it cannot get through."""
    walk = _Walk(activation_values=math.prod(input_shape))
    if not input_shape:
        walk.errors.append(Issue("data", "each sample must hold at least one value; set data.input_shape"))
        return walk
    shape = tuple(input_shape)
    sources: list[str | None] = [None] * len(shape)
    from_data = True
    for index, layer in enumerate(layers):
        step = _Step(index, layer, shape, from_data, sources, walk.errors, walk.warnings)
        out = _shape_of(step)
        if out is None:
            return walk
        walk.reports.append(LayerReport(index, layer.type, list(out.shape), out.params, out.flops))
        walk.kwargs.append(out.kwargs)
        walk.buffers += out.buffers
        walk.activation_values += math.prod(out.shape)
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)) and math.prod(shape[1:]) == 1:
            walk.single_value_norms.append(index)
        # Messages say "the data has ..." until a layer that computes new values from the data's layout.
        from_data = from_data and out.shape == shape and not isinstance(layer, _RESHAPING)
        sources = out.sources if out.sources is not None else sources
        shape = out.shape
    walk.output_shape = shape
    walk.output_sources = sources
    return walk


# --- the builder --------------------------------------------------------------------------------------


def _init_module(module: nn.Module, init: InitName) -> None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return
    if init == "kaiming_normal":
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
    elif init == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, nonlinearity="relu")
    elif init == "xavier_normal":
        nn.init.xavier_normal_(weight)
    elif init == "xavier_uniform":
        nn.init.xavier_uniform_(weight)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        nn.init.zeros_(bias)


def build_model(spec: JobSpec, input_shape: tuple[int, ...]) -> nn.Sequential:
    """The spec's layers as an ``nn.Sequential`` of PyTorch modules for samples of ``input_shape`` (no batch dim).

    Raises ``ShapeError`` when the stack does not fit the input (``check_spec`` reports the same problems).
    """
    walk = _walk(spec.model.layers, tuple(input_shape))
    if walk.errors or walk.output_shape is None:
        raise ShapeError(walk.errors or [Issue("model.layers", "the layers do not fit the input shape")])
    # Seed right before construction and draw nothing else, so the weights equal a hand-written
    # `torch.manual_seed(seed); nn.Sequential(...)`; custom inits run afterwards, as `model.apply(...)` would.
    torch.manual_seed(spec.training.seed)
    modules = [getattr(nn, layer.type)(**kwargs) for layer, kwargs in zip(spec.model.layers, walk.kwargs)]
    model = nn.Sequential(*modules)
    for layer, module in zip(spec.model.layers, modules):
        if isinstance(layer, (Linear, Conv1d, Conv2d)):
            init = layer.init if layer.init is not None else spec.model.init
            if init != "default":
                _init_module(module, init)
    log.debug("nets.built layers=%d seed=%d", len(modules), spec.training.seed)
    return model


# --- the static check ---------------------------------------------------------------------------------


def _optimizer_states(spec: JobSpec) -> int:
    """Values of optimizer state kept per parameter."""
    opt = spec.optimizer
    if isinstance(opt, (Adam, AdamW)):
        return 3 if opt.amsgrad else 2
    if isinstance(opt, SGD):
        return 1 if opt.momentum > 0 else 0
    if isinstance(opt, RMSprop):
        return 1 + (opt.momentum > 0) + opt.centered
    return 2


def _check_loss(spec: JobSpec, data: DataInfo, walk: _Walk, report: SpecReport) -> None:
    loss = spec.loss
    name = loss.type
    layers = spec.model.layers
    last = len(layers) - 1
    last_type = layers[last].type
    width: int | None = None
    if walk.output_shape is not None:
        if len(walk.output_shape) != 1:
            report.errors.append(
                Issue(
                    f"model.layers[{last}]",
                    f"the output is {_shape_text(walk.output_shape)} per sample, but {name} needs one vector per"
                    " sample; add Flatten",
                )
            )
        else:
            width = walk.output_shape[0]
    width_loc = (walk.output_sources[0] if walk.output_sources and walk.output_sources[0] else None) or "model.layers"

    if name in CLASSIFICATION_LOSSES:
        weight = getattr(loss, "weight", None)
        if data.n_classes is None:
            report.errors.append(
                Issue(
                    "loss",
                    f"{name} needs class labels as targets, but the data's targets are real-valued"
                    f" ({_plural(data.target_width, 'column')}); use a regression loss such as MSELoss,"
                    " or targets that hold class labels",
                )
            )
        else:
            if width is not None and width != data.n_classes:
                what = "logit" if name == "CrossEntropyLoss" else "log-probability"
                report.errors.append(
                    Issue(width_loc, f"{name} needs one {what} per class: expected {data.n_classes}, got {width}")
                )
            if weight is not None and len(weight) != data.n_classes:
                report.errors.append(
                    Issue("loss.weight", f"expected {data.n_classes} class weights, one per class, got {len(weight)}")
                )
        if name == "CrossEntropyLoss" and last_type in ("Softmax", "LogSoftmax"):
            report.warnings.append(
                Issue(
                    f"model.layers[{last}]",
                    f"CrossEntropyLoss already applies log-softmax to the logits; remove this {last_type} layer",
                )
            )
        if name == "NLLLoss" and last_type != "LogSoftmax":
            report.warnings.append(
                Issue(
                    "model.layers",
                    f"NLLLoss expects log-probabilities, but the last layer is {last_type};"
                    " end the model with LogSoftmax or use CrossEntropyLoss",
                )
            )
    elif name == "BCEWithLogitsLoss":
        pos_weight = getattr(loss, "pos_weight", None)
        if width is not None and width != data.target_width:
            report.errors.append(
                Issue(
                    width_loc,
                    f"BCEWithLogitsLoss needs one logit per target column: expected {data.target_width}, got {width}",
                )
            )
        if pos_weight is not None and len(pos_weight) != data.target_width:
            report.errors.append(
                Issue(
                    "loss.pos_weight",
                    f"expected {_plural(data.target_width, 'value')}, one per target column, got {len(pos_weight)}",
                )
            )
        if data.target_width == 1 and data.n_classes is not None and data.n_classes > 2:
            report.errors.append(
                Issue(
                    "loss",
                    f"BCEWithLogitsLoss needs 0/1 targets, but the data has {data.n_classes} classes;"
                    " use CrossEntropyLoss with one logit per class",
                )
            )
        if last_type == "Sigmoid":
            report.warnings.append(
                Issue(f"model.layers[{last}]", "BCEWithLogitsLoss already applies the sigmoid; remove this layer")
            )
    elif width is not None and width != data.target_width:
        report.errors.append(
            Issue(width_loc, f"{name} needs one output per target column: expected {data.target_width}, got {width}")
        )


def _check_monitors(spec: JobSpec, report: SpecReport) -> None:
    task = task_kind(spec)
    allowed = ["train_loss", "val_loss"]
    if task in ("classification", "binary"):  # binary accuracy thresholds the logits at 0
        allowed.append("val_accuracy")
    elif task == "regression":
        allowed += ["val_mae", "val_r2"]
    has_validation = spec.training.validation_split > 0 or bool(getattr(spec.data, "validation_dataset_id", None))
    monitors: list[tuple[str, str, str]] = []  # (path, metric, mode)
    training = spec.training
    if training.early_stopping is not None:
        monitors.append(("training.early_stopping", training.early_stopping.monitor, training.early_stopping.mode))
    if training.checkpoint.monitor is not None:
        monitors.append(("training.checkpoint", training.checkpoint.monitor, training.checkpoint.mode))
    if isinstance(spec.scheduler, ReduceLROnPlateau):
        monitors.append(("scheduler", spec.scheduler.monitor, spec.scheduler.mode))
    for path, metric, mode in monitors:
        loc = f"{path}.monitor"
        if metric not in KNOWN_METRICS:
            report.errors.append(Issue(loc, f"unknown metric {metric!r}; choose one of {', '.join(allowed)}"))
        elif metric not in allowed:
            kind = "regression losses" if metric in _REGRESSION_METRICS else "classification losses"
            report.errors.append(
                Issue(
                    loc,
                    f"{metric} is only computed for {kind}, and this job uses {spec.loss.type};"
                    f" choose one of {', '.join(allowed)}",
                )
            )
        elif metric.startswith("val_") and not has_validation:
            report.errors.append(
                Issue(
                    loc,
                    f"{metric} needs validation data, but there is none;"
                    " set training.validation_split above 0 or data.validation_dataset_id",
                )
            )
        else:
            better = "max" if metric in _HIGHER_IS_BETTER else "min"
            if mode != better:
                report.warnings.append(
                    Issue(f"{path}.mode", f"{metric} improves as it {'rises' if better == 'max' else 'falls'};"
                          f" mode should be {better!r}, got {mode!r}")
                )


def _check_training(spec: JobSpec, data: DataInfo, plan: StepPlan, walk: _Walk, report: SpecReport) -> None:
    training = spec.training
    if data.n_rows <= 0:
        report.errors.append(Issue("data", "the data has no rows"))
    else:
        if training.validation_split > 0 and plan.n_val == 0:
            report.errors.append(
                Issue(
                    "training.validation_split",
                    f"validation_split {training.validation_split} of {_plural(data.n_rows, 'row')} leaves"
                    " 0 validation rows; use a larger split or more data",
                )
            )
        if plan.n_train <= 0:
            report.errors.append(
                Issue(
                    "training.validation_split",
                    f"validation_split {training.validation_split} of {_plural(data.n_rows, 'row')} leaves"
                    " 0 training rows",
                )
            )
    if training.precision == "bf16-mixed" and training.device == "cpu":
        report.errors.append(
            Issue(
                "training.precision",
                'bf16-mixed is for CUDA, but training.device is "cpu"; use precision "32" or device "cuda"',
            )
        )
    if plan.n_train > 0 and walk.single_value_norms:
        last_batch = plan.n_train % training.batch_size
        if min(training.batch_size, plan.n_train) == 1 or last_batch == 1:
            index = walk.single_value_norms[0]
            report.errors.append(
                Issue(
                    "training.batch_size",
                    f"model.layers[{index}] ({spec.model.layers[index].type}) needs more than 1 sample per batch,"
                    f" but with {_plural(plan.n_train, 'training row')} and batch_size {training.batch_size}"
                    " a batch holds a single row; change batch_size",
                )
            )
    if training.batch_size > plan.n_train > 0:
        report.warnings.append(
            Issue(
                "training.batch_size",
                f"batch_size {training.batch_size} is larger than the {_plural(plan.n_train, 'training row')};"
                f" each epoch is one batch of {plan.n_train}",
            )
        )
    lr = spec.optimizer.lr
    if lr > 1:
        report.warnings.append(Issue("optimizer.lr", f"learning rate {lr} is unusually high (above 1); training may diverge"))
    elif lr < 1e-6:
        report.warnings.append(
            Issue("optimizer.lr", f"learning rate {lr} is unusually low (below 1e-6); the weights will barely move")
        )
    if data.looks_unnormalized and not training.normalize:
        report.warnings.append(
            Issue(
                "training.normalize",
                "the inputs are far from zero mean and unit scale; set training.normalize to true to z-score them",
            )
        )


def _check_caps(spec: JobSpec, data: DataInfo, plan: StepPlan, limits: Limits, report: SpecReport) -> None:
    training = spec.training
    if report.total_params > limits.max_parameters:
        report.errors.append(
            Issue(
                "model",
                f"the model has {report.total_params:,} parameters, more than the limit of {limits.max_parameters:,}",
            )
        )
    if training.epochs is not None and training.epochs > limits.max_epochs:
        report.errors.append(
            Issue("training.epochs", f"{training.epochs:,} epochs is more than the limit of {limits.max_epochs:,}")
        )
    if plan.total_steps > limits.max_steps:
        if training.max_steps is not None:
            report.errors.append(
                Issue(
                    "training.max_steps",
                    f"{plan.total_steps:,} optimizer steps is more than the limit of {limits.max_steps:,}",
                )
            )
        else:
            report.errors.append(
                Issue(
                    "training.epochs",
                    f"{training.epochs:,} epochs of {plan.steps_per_epoch:,} steps is {plan.total_steps:,} optimizer"
                    f" steps, more than the limit of {limits.max_steps:,}; lower epochs or raise batch_size",
                )
            )
    if data.n_rows > limits.max_rows:
        report.errors.append(Issue("data", f"the data has {data.n_rows:,} rows, more than the limit of {limits.max_rows:,}"))


def check_spec(spec: JobSpec, data: DataInfo, *, limits: Limits = Limits()) -> SpecReport:
    """The static check: shapes, counts and every problem with its JSON path, without building the model."""
    plan = plan_steps(spec.training, max(data.n_rows, 0))
    report = SpecReport(
        ok=False,
        errors=[],
        warnings=[],
        input_shape=list(data.input_shape),
        output_shape=None,
        layers=[],
        total_params=0,
        trainable_params=0,
        flops_per_sample=0,
        memory_bytes=0,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
    )
    n_layers = len(spec.model.layers)
    if n_layers > limits.max_layers:
        # Refuse before walking, so a hostile 100,000-layer spec costs nothing.
        report.errors.append(
            Issue("model.layers", f"the model has {n_layers:,} layers, more than the limit of {limits.max_layers:,}")
        )
        return report
    try:
        walk = _walk(spec.model.layers, tuple(data.input_shape))
    except Exception as exc:  # the check promises answers, not exceptions; a bug here must not become a 500
        log.exception("nets.check_failed")
        report.errors.append(Issue("model", f"the model could not be checked: {exc}"))
        return report
    report.errors.extend(walk.errors)
    report.warnings.extend(walk.warnings)
    report.layers = walk.reports
    report.output_shape = list(walk.output_shape) if walk.output_shape is not None else None
    report.total_params = report.trainable_params = sum(layer.params for layer in walk.reports)
    report.flops_per_sample = sum(layer.flops for layer in walk.reports)
    batch = min(spec.training.batch_size, plan.n_train) if plan.n_train > 0 else spec.training.batch_size
    state_bytes = BYTES_PER_VALUE * (report.total_params * (2 + _optimizer_states(spec)) + walk.buffers)
    report.memory_bytes = state_bytes + 2 * BYTES_PER_VALUE * batch * walk.activation_values

    _check_loss(spec, data, walk, report)
    _check_monitors(spec, report)
    _check_training(spec, data, plan, walk, report)
    _check_caps(spec, data, plan, limits, report)
    report.ok = not report.errors
    return report
