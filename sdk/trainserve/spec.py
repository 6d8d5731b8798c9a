"""Spec builders: Python objects that render to the server's JSON spec language, for people who prefer code.

Names and argument names mirror the server's spec (PyTorch's own). Each builder sends only the arguments
the caller gave, so the server's defaults stay the one source of truth and nothing here can drift from them.
Any part may also be a plain dict, which is sent as is.

    Spec(layers=[Linear(32, 64), ReLU(), Linear(1)], loss=MSELoss(), optimizer=Adam(lr=1e-3),
         training=Training(epochs=100, batch_size=128), data=Synthetic(n_samples=128, n_features=32))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from types import EllipsisType
from typing import Any, ClassVar, Literal

log = logging.getLogger(__name__)

Init = Literal["default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform"]
Reduction = Literal["mean", "sum"]
Interval = Literal["epoch", "step"]
IntOrPair = int | Sequence[int]


def to_jsonable(value: Any) -> Any:
    """Plain JSON data from builders, dicts, tuples, and anything array-like with ``.tolist()`` (numpy)."""
    if isinstance(value, SpecPart):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, (bool, int, float)):
        return value
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def _given(args: dict[str, Any]) -> dict[str, Any]:
    # Builders pass locals(): keep only what the caller set (None and ... mean "the server's default").
    return {k: v for k, v in args.items() if k not in ("self", "__class__") and v is not None and v is not ...}


class SpecPart:
    """One piece of a spec; ``to_dict()`` is the JSON the server reads."""

    tag_key: ClassVar[str | None] = "type"
    tag: ClassVar[str | None] = None

    def __init__(self, **fields: Any) -> None:
        self.fields: dict[str, Any] = fields

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tag_key is not None:
            out[self.tag_key] = self.tag or type(self).__name__
        out.update({k: to_jsonable(v) for k, v in self.fields.items()})
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpecPart) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{type(self).__name__}({args})"


Part = SpecPart | Mapping[str, Any]


# --- layers -------------------------------------------------------------------------------------------


class Linear(SpecPart):
    """``Linear(64)`` sets out_features (in_features comes from the previous layer); ``Linear(32, 64)`` is
    PyTorch's ``(in_features, out_features)``."""

    def __init__(
        self,
        *features: int,
        in_features: int | None = None,
        out_features: int | None = None,
        bias: bool | None = None,
        init: Init | None = None,
    ) -> None:
        if len(features) == 1:
            out_features = features[0]
        elif len(features) == 2:
            in_features, out_features = features
        elif features:
            raise TypeError("Linear takes (out_features) or (in_features, out_features)")
        if out_features is None:
            raise TypeError("Linear needs out_features")
        super().__init__(**_given({"in_features": in_features, "out_features": out_features, "bias": bias, "init": init}))


class _Conv(SpecPart):
    def __init__(
        self,
        *args: Any,
        in_channels: int | None = None,
        out_channels: int | None = None,
        kernel_size: IntOrPair | None = None,
        stride: IntOrPair | None = None,
        padding: IntOrPair | Literal["same", "valid"] | None = None,
        dilation: IntOrPair | None = None,
        groups: int | None = None,
        bias: bool | None = None,
        init: Init | None = None,
    ) -> None:
        # (out_channels, kernel_size), or PyTorch's (in_channels, out_channels, kernel_size).
        if len(args) == 2:
            out_channels, kernel_size = args
        elif len(args) == 3:
            in_channels, out_channels, kernel_size = args
        elif args:
            raise TypeError(f"{type(self).__name__} takes (out_channels, kernel_size) or (in, out, kernel_size)")
        if out_channels is None or kernel_size is None:
            raise TypeError(f"{type(self).__name__} needs out_channels and kernel_size")
        super().__init__(
            **_given(
                {
                    "in_channels": in_channels, "out_channels": out_channels, "kernel_size": kernel_size, "stride": stride,
                    "padding": padding, "dilation": dilation, "groups": groups, "bias": bias, "init": init,
                }
            )
        )


class Conv1d(_Conv):
    pass


class Conv2d(_Conv):
    pass


class MaxPool1d(SpecPart):
    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair | None = None,
        dilation: IntOrPair | None = None,
        ceil_mode: bool | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class MaxPool2d(MaxPool1d):
    pass


class AvgPool1d(SpecPart):
    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair | None = None,
        ceil_mode: bool | None = None,
        count_include_pad: bool | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class AvgPool2d(AvgPool1d):
    pass


class Flatten(SpecPart):
    def __init__(self, start_dim: int | None = None, end_dim: int | None = None) -> None:
        super().__init__(**_given(locals()))


class Dropout(SpecPart):
    def __init__(self, p: float | None = None) -> None:
        super().__init__(**_given(locals()))


class BatchNorm1d(SpecPart):
    """``momentum=None`` is PyTorch's cumulative average, so "not given" is ``...`` here."""

    def __init__(
        self,
        num_features: int | None = None,
        *,
        eps: float | None = None,
        momentum: float | None | EllipsisType = ...,
        affine: bool | None = None,
        track_running_stats: bool | None = None,
    ) -> None:
        fields = _given({"num_features": num_features, "eps": eps, "affine": affine, "track_running_stats": track_running_stats})
        if momentum is not ...:
            fields["momentum"] = momentum
        super().__init__(**fields)


class BatchNorm2d(BatchNorm1d):
    pass


class LayerNorm(SpecPart):
    def __init__(
        self,
        normalized_shape: int | Sequence[int] | None = None,
        *,
        eps: float | None = None,
        elementwise_affine: bool | None = None,
        bias: bool | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class ReLU(SpecPart):
    def __init__(self) -> None:
        super().__init__()


class LeakyReLU(SpecPart):
    def __init__(self, negative_slope: float | None = None) -> None:
        super().__init__(**_given(locals()))


class PReLU(SpecPart):
    def __init__(self, num_parameters: int | None = None, init: float | None = None) -> None:
        super().__init__(**_given(locals()))


class ELU(SpecPart):
    def __init__(self, alpha: float | None = None) -> None:
        super().__init__(**_given(locals()))


class GELU(SpecPart):
    def __init__(self, approximate: Literal["none", "tanh"] | None = None) -> None:
        super().__init__(**_given(locals()))


class SiLU(ReLU):
    pass


class Sigmoid(ReLU):
    pass


class Tanh(ReLU):
    pass


class Identity(ReLU):
    pass


class Softmax(SpecPart):
    def __init__(self, dim: int | None = None) -> None:
        super().__init__(**_given(locals()))


class LogSoftmax(Softmax):
    pass


# --- losses -------------------------------------------------------------------------------------------


class MSELoss(SpecPart):
    def __init__(self, reduction: Reduction | None = None) -> None:
        super().__init__(**_given(locals()))


class L1Loss(MSELoss):
    pass


class SmoothL1Loss(SpecPart):
    def __init__(self, reduction: Reduction | None = None, beta: float | None = None) -> None:
        super().__init__(**_given(locals()))


class HuberLoss(SpecPart):
    def __init__(self, reduction: Reduction | None = None, delta: float | None = None) -> None:
        super().__init__(**_given(locals()))


class BCEWithLogitsLoss(SpecPart):
    def __init__(self, reduction: Reduction | None = None, pos_weight: Sequence[float] | None = None) -> None:
        super().__init__(**_given(locals()))


class CrossEntropyLoss(SpecPart):
    def __init__(
        self,
        weight: Sequence[float] | None = None,
        label_smoothing: float | None = None,
        reduction: Reduction | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class NLLLoss(SpecPart):
    def __init__(self, weight: Sequence[float] | None = None, reduction: Reduction | None = None) -> None:
        super().__init__(**_given(locals()))


# --- optimizers ---------------------------------------------------------------------------------------


class SGD(SpecPart):
    def __init__(
        self,
        lr: float | None = None,
        momentum: float | None = None,
        dampening: float | None = None,
        weight_decay: float | None = None,
        nesterov: bool | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class Adam(SpecPart):
    def __init__(
        self,
        lr: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        weight_decay: float | None = None,
        amsgrad: bool | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class AdamW(Adam):
    pass


class RMSprop(SpecPart):
    def __init__(
        self,
        lr: float | None = None,
        alpha: float | None = None,
        eps: float | None = None,
        weight_decay: float | None = None,
        momentum: float | None = None,
        centered: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


# --- schedulers ---------------------------------------------------------------------------------------


class StepLR(SpecPart):
    def __init__(self, step_size: int, gamma: float | None = None, interval: Interval | None = None) -> None:
        super().__init__(**_given(locals()))


class ExponentialLR(SpecPart):
    def __init__(self, gamma: float, interval: Interval | None = None) -> None:
        super().__init__(**_given(locals()))


class CosineAnnealingLR(SpecPart):
    def __init__(
        self, T_max: int | None = None, eta_min: float | None = None, interval: Interval | None = None
    ) -> None:
        super().__init__(**_given(locals()))


class OneCycleLR(SpecPart):
    def __init__(
        self,
        max_lr: float,
        total_steps: int | None = None,
        pct_start: float | None = None,
        anneal_strategy: Literal["cos", "linear"] | None = None,
        div_factor: float | None = None,
        final_div_factor: float | None = None,
        interval: Literal["step"] | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class ReduceLROnPlateau(SpecPart):
    def __init__(
        self,
        monitor: str | None = None,
        mode: Literal["min", "max"] | None = None,
        factor: float | None = None,
        patience: int | None = None,
        threshold: float | None = None,
        min_lr: float | None = None,
        interval: Literal["epoch"] | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


# --- training -----------------------------------------------------------------------------------------


class EarlyStopping(SpecPart):
    tag_key = None

    def __init__(
        self,
        monitor: str | None = None,
        patience: int | None = None,
        min_delta: float | None = None,
        mode: Literal["min", "max"] | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class CheckpointPolicy(SpecPart):
    tag_key = None

    def __init__(
        self,
        every_epochs: int | None = None,
        keep_last: int | None = None,
        keep_best: bool | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class Training(SpecPart):
    tag_key = None

    def __init__(
        self,
        epochs: int | None = None,
        *,
        max_steps: int | None = None,
        batch_size: int | None = None,
        shuffle: bool | None = None,
        seed: int | None = None,
        validation_split: float | None = None,
        normalize: bool | None = None,
        early_stopping: EarlyStopping | Mapping[str, Any] | None = None,
        grad_clip_norm: float | None = None,
        log_every_steps: int | None = None,
        checkpoint: CheckpointPolicy | Mapping[str, Any] | None = None,
        device: Literal["auto", "cpu", "cuda"] | None = None,
        precision: Literal["32", "bf16-mixed"] | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


# --- data ---------------------------------------------------------------------------------------------


class InlineData(SpecPart):
    """``x`` and ``y`` as nested lists or numpy arrays (sent with ``.tolist()``)."""

    tag_key = "source"
    tag = "inline"

    def __init__(self, x: Any, y: Any, *, input_shape: Sequence[int] | None = None) -> None:
        super().__init__(**_given(locals()))


class DatasetData(SpecPart):
    tag_key = "source"
    tag = "dataset"

    def __init__(
        self,
        dataset_id: str,
        *,
        features: Sequence[str] | None = None,
        target: str | Sequence[str] | None = None,
        validation_dataset_id: str | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class BuiltinData(SpecPart):
    tag_key = "source"
    tag = "builtin"

    def __init__(
        self,
        name: Literal["iris", "wine", "breast_cancer", "digits", "diabetes"],
        *,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


class SyntheticData(SpecPart):
    tag_key = "source"
    tag = "synthetic"

    def __init__(
        self,
        kind: Literal["randn", "regression", "classification", "moons"] | None = None,
        *,
        n_samples: int | None = None,
        n_features: int | None = None,
        n_targets: int | None = None,
        n_classes: int | None = None,
        noise: float | None = None,
        seed: int | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(**_given(locals()))


# Short names for the data sources, as people say them.
Inline = InlineData
DatasetSource = DatasetData
Builtin = BuiltinData
Synthetic = SyntheticData


# --- warm start ---------------------------------------------------------------------------------------


class InitFrom(SpecPart):
    """Start from another job's checkpoint (``job_id``, ``checkpoint`` best|latest|id) or a registered model
    (``model="name@alias"``): matching tensors load, ``freeze`` lists layer indices that do not train."""

    tag_key = None

    def __init__(
        self,
        job_id: str | None = None,
        *,
        model: str | None = None,
        checkpoint: str | None = None,
        strict: bool | None = None,
        freeze: Sequence[int] | None = None,
        optimizer_state: bool | None = None,
    ) -> None:
        if (job_id is None) == (model is None):
            raise TypeError("give exactly one of job_id and model")
        if freeze is not None:
            freeze = list(freeze)
        super().__init__(**_given(locals()))


# --- the whole spec -----------------------------------------------------------------------------------


class Spec(SpecPart):
    """A whole job spec; ``to_dict()`` gives the body of ``POST /jobs``."""

    tag_key = None

    def __init__(
        self,
        *,
        layers: Sequence[Part],
        loss: Part,
        optimizer: Part,
        data: Part,
        training: Part | None = None,
        scheduler: Part | None = None,
        name: str | None = None,
        init: Init | None = None,
        init_from: InitFrom | Mapping[str, Any] | None = None,
    ) -> None:
        self.layers = list(layers)
        self.init = init
        super().__init__(**_given({"name": name, "loss": loss, "optimizer": optimizer, "scheduler": scheduler,
                                   "training": training, "data": data, "init_from": init_from}))

    def to_dict(self) -> dict[str, Any]:
        model: dict[str, Any] = {"layers": [to_jsonable(layer) for layer in self.layers]}
        if self.init is not None:
            model["init"] = self.init
        out = {k: to_jsonable(v) for k, v in self.fields.items()}
        # Keep the familiar key order: name, model, loss, optimizer, ...
        ordered = {"name": out.pop("name")} if "name" in out else {}
        return {**ordered, "model": model, **out}

    def to_json(self, **dumps_kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **dumps_kwargs)

    def __repr__(self) -> str:
        return f"Spec({self.to_dict()!r})"
