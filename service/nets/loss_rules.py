"""The rules that tie the last layer to the loss and the targets: one logit per class for CrossEntropyLoss,
raw logits for BCEWithLogitsLoss, one output per target column for regression losses."""

from __future__ import annotations

from dataclasses import dataclass

from service.datainfo import DataInfo
from service.nets.report import Issue, SpecReport, plural, shape_text
from service.nets.shapes import Walk
from service.spec import CLASSIFICATION_LOSSES, JobSpec


@dataclass(frozen=True)
class _Output:
    """What the model emits per sample, as the loss rules need it."""

    width: int | None  # None: unknown (the walk stopped) or not one vector per sample
    width_loc: str  # the spec path that fixed the width, for "expected N, got M" messages
    last: int  # index of the last layer
    last_type: str


def check_loss(spec: JobSpec, data: DataInfo, walk: Walk, report: SpecReport) -> None:
    out = _output(spec, walk, report)
    name = spec.loss.type
    if name in CLASSIFICATION_LOSSES:
        _check_classification(spec, data, out, report)
    elif name == "BCEWithLogitsLoss":
        _check_bce(spec, data, out, report)
    elif out.width is not None and out.width != data.target_width:
        report.errors.append(
            Issue(out.width_loc, f"{name} needs one output per target column: expected {data.target_width}, got {out.width}")
        )


def _output(spec: JobSpec, walk: Walk, report: SpecReport) -> _Output:
    layers = spec.model.layers
    last = len(layers) - 1
    width: int | None = None
    if walk.output_shape is not None:
        if len(walk.output_shape) != 1:
            report.errors.append(
                Issue(
                    f"model.layers[{last}]",
                    f"the output is {shape_text(walk.output_shape)} per sample, but {spec.loss.type} needs one vector"
                    " per sample; add Flatten",
                )
            )
        else:
            width = walk.output_shape[0]
    width_loc = (walk.output_sources[0] if walk.output_sources and walk.output_sources[0] else None) or "model.layers"
    return _Output(width=width, width_loc=width_loc, last=last, last_type=layers[last].type)


def _check_classification(spec: JobSpec, data: DataInfo, out: _Output, report: SpecReport) -> None:
    name = spec.loss.type
    weight = getattr(spec.loss, "weight", None)
    if data.n_classes is None:
        report.errors.append(
            Issue(
                "loss",
                f"{name} needs class labels as targets, but the data's targets are real-valued"
                f" ({plural(data.target_width, 'column')}); use a regression loss such as MSELoss,"
                " or targets that hold class labels",
            )
        )
    else:
        if out.width is not None and out.width != data.n_classes:
            what = "logit" if name == "CrossEntropyLoss" else "log-probability"
            report.errors.append(
                Issue(out.width_loc, f"{name} needs one {what} per class: expected {data.n_classes}, got {out.width}")
            )
        if weight is not None and len(weight) != data.n_classes:
            report.errors.append(
                Issue("loss.weight", f"expected {data.n_classes} class weights, one per class, got {len(weight)}")
            )
    if name == "CrossEntropyLoss" and out.last_type in ("Softmax", "LogSoftmax"):
        report.warnings.append(
            Issue(
                f"model.layers[{out.last}]",
                f"CrossEntropyLoss already applies log-softmax to the logits; remove this {out.last_type} layer",
            )
        )
    if name == "NLLLoss" and out.last_type != "LogSoftmax":
        report.warnings.append(
            Issue(
                "model.layers",
                f"NLLLoss expects log-probabilities, but the last layer is {out.last_type};"
                " end the model with LogSoftmax or use CrossEntropyLoss",
            )
        )


def _check_bce(spec: JobSpec, data: DataInfo, out: _Output, report: SpecReport) -> None:
    pos_weight = getattr(spec.loss, "pos_weight", None)
    if out.width is not None and out.width != data.target_width:
        report.errors.append(
            Issue(
                out.width_loc,
                f"BCEWithLogitsLoss needs one logit per target column: expected {data.target_width}, got {out.width}",
            )
        )
    if pos_weight is not None and len(pos_weight) != data.target_width:
        report.errors.append(
            Issue(
                "loss.pos_weight",
                f"expected {plural(data.target_width, 'value')}, one per target column, got {len(pos_weight)}",
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
    if out.last_type == "Sigmoid":
        report.warnings.append(
            Issue(f"model.layers[{out.last}]", "BCEWithLogitsLoss already applies the sigmoid; remove this layer")
        )
