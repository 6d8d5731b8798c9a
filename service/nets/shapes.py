"""The shape walk: one sample's shape propagated through the layer stack, without building anything.

Each layer's rule returns the output shape, the keyword arguments its PyTorch module takes, and its parameter,
FLOP and buffer counts; problems become ``Issue``s with the JSON path of the argument at fault.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.nets.report import Issue, LayerReport, Shape, plural, shape_text
from service.spec import (
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    Flatten,
    Layer,
    LayerNorm,
    Linear,
    LogSoftmax,
    MaxPool1d,
    MaxPool2d,
    PReLU,
    Softmax,
)


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
            return f"the data's samples are {shape_text(self.shape)}"
        return f"the previous layer outputs {shape_text(self.shape)}"

    def size_text(self, actual: int, unit: str) -> str:
        """The other half of "expected X, ...": "the data has 32 features", "the previous layer outputs 32"."""
        if self.from_data:
            return f"the data has {plural(actual, unit)}"
        if unit == "feature":
            return f"the previous layer outputs {actual}"
        return f"the previous layer outputs {plural(actual, unit)}"


@dataclass
class _Out:
    shape: Shape
    kwargs: dict[str, Any]
    params: int = 0
    flops: int = 0
    buffers: int = 0
    sources: list[str | None] | None = None  # None: same as the input's (the layer keeps every dim)


@dataclass
class Walk:
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
    step.error(field_name, f"{step.layer.type} takes {plural(n, 'value')} here, got {len(value)}: {value}")
    return None


def _rank_hint(step: _Step, want: str) -> str:
    if step.from_data:
        if want == "(C, H, W)" and len(step.shape) == 1 and math.isqrt(step.shape[0]) ** 2 == step.shape[0]:
            side = math.isqrt(step.shape[0])
            return f"set data.input_shape to the shape of one sample, e.g. [1, {side}, {side}]"
        return f"set data.input_shape to the {want} shape of one sample"
    return f"this layer cannot follow a layer that outputs {shape_text(step.shape)}"


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
            shown = str(declared) if isinstance(declared, int) else shape_text(wanted)
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


def walk_layers(layers: Sequence[Layer], input_shape: Shape) -> Walk:
    """Propagate one sample's shape through the stack; stops at the first layer it cannot get through."""
    walk = Walk(activation_values=math.prod(input_shape))
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
