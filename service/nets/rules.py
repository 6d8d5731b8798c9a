"""The static check that runs before anything is queued: shapes, counts, caps and every problem with its JSON path.

``check_spec`` walks the stack (``service.nets.shapes``) from the data's shape without building anything, then
applies the rules: the loss against the last layer and the targets (``service.nets.loss_rules``), monitored
metrics, training settings, and the caps that keep one job from taking what the service shares (parameters,
epochs, steps, rows, memory, checkpoint bytes, synthetic sizes, conv padding), each naming its figure.
"""

from __future__ import annotations

import logging

from service.datainfo import DataInfo
from service.nets.loss_rules import check_loss
from service.nets.memory import CHECKPOINT_ROW_MAX_BYTES, MemoryEstimate, checkpoint_bytes, checkpoints_kept, \
    estimate_memory, optimizer_states
from service.nets.report import KNOWN_METRICS, Issue, Limits, SpecReport, bytes_text, plural, task_kind
from service.nets.shapes import Walk, walk_layers
from service.plan import StepPlan, plan_steps
from service.spec import Conv1d, Conv2d, JobSpec, ReduceLROnPlateau, SyntheticData

log = logging.getLogger(__name__)

_HIGHER_IS_BETTER = frozenset({"val_accuracy", "val_r2"})
_REGRESSION_METRICS = frozenset({"val_mae", "val_r2"})


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


def _check_training(spec: JobSpec, data: DataInfo, plan: StepPlan, walk: Walk, report: SpecReport) -> None:
    training = spec.training
    if data.n_rows <= 0:
        report.errors.append(Issue("data", "the data has no rows"))
    else:
        if training.validation_split > 0 and plan.n_val == 0:
            report.errors.append(
                Issue(
                    "training.validation_split",
                    f"validation_split {training.validation_split} of {plural(data.n_rows, 'row')} leaves"
                    " 0 validation rows; use a larger split or more data",
                )
            )
        if plan.n_train <= 0:
            report.errors.append(
                Issue(
                    "training.validation_split",
                    f"validation_split {training.validation_split} of {plural(data.n_rows, 'row')} leaves"
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
                    f" but with {plural(plan.n_train, 'training row')} and batch_size {training.batch_size}"
                    " a batch holds a single row; change batch_size",
                )
            )
    if training.batch_size > plan.n_train > 0:
        report.warnings.append(
            Issue(
                "training.batch_size",
                f"batch_size {training.batch_size} is larger than the {plural(plan.n_train, 'training row')};"
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



def _check_sizes(spec: JobSpec, limits: Limits, report: SpecReport) -> None:
    """Per-field caps on the sizes a spec may ask for outright, before any estimate."""
    data = spec.data
    if isinstance(data, SyntheticData):
        for name, value, cap in (
            ("n_features", data.n_features, limits.max_synthetic_features),
            ("n_targets", data.n_targets, limits.max_synthetic_targets),
        ):
            if value > cap:
                report.errors.append(Issue(f"data.{name}", f"{name} {value:,} is more than the limit of {cap:,}"))
    for index, layer in enumerate(spec.model.layers):
        if isinstance(layer, (Conv1d, Conv2d)) and not isinstance(layer.padding, str):
            padding = max([layer.padding] if isinstance(layer.padding, int) else layer.padding)
            if padding > limits.max_conv_padding:
                report.errors.append(
                    Issue(
                        f"model.layers[{index}].padding",
                        f"padding {padding:,} is more than the limit of {limits.max_conv_padding:,}",
                    )
                )


def _memory_loc(memory: MemoryEstimate) -> str:
    """The part of the spec behind the largest share of the estimate: where a fix would start."""
    largest = max(memory.data, memory.activations, memory.state)
    if largest == memory.data:
        return "data"
    if largest == memory.activations:
        return "training.batch_size" if memory.widest_layer is None else f"model.layers[{memory.widest_layer}]"
    return "model"


def _check_memory(spec: JobSpec, memory: MemoryEstimate, checkpoint: int, limits: Limits, report: SpecReport) -> None:
    if memory.total > limits.max_job_memory_bytes:
        report.errors.append(
            Issue(
                _memory_loc(memory),
                f"the job needs an estimated {bytes_text(memory.total)} of memory, more than the limit of"
                f" {bytes_text(limits.max_job_memory_bytes)}: data {bytes_text(memory.data)}, activations of one"
                f" batch of {memory.batch:,} {bytes_text(memory.activations)}, parameters, gradients and"
                f" optimizer state {bytes_text(memory.state)}",
            )
        )
    if checkpoint > CHECKPOINT_ROW_MAX_BYTES:
        # Caught here, not at the first checkpoint, after an epoch of training (a cap an operator raised can allow it).
        report.errors.append(Issue("model", (
            f"one checkpoint of this model holds an estimated {bytes_text(checkpoint)} (weights and"
            f" {optimizer_states(spec)} optimizer value(s) per parameter), more than the"
            f" {bytes_text(CHECKPOINT_ROW_MAX_BYTES)} the database can store as one checkpoint; use a smaller model"
            " or an optimizer that keeps less state")))
    kept = checkpoints_kept(spec)
    if kept * checkpoint > limits.max_checkpoint_bytes_per_job:
        policy = spec.training.checkpoint
        best = " plus the best" if policy.keep_best else ""
        report.errors.append(
            Issue(
                "training.checkpoint.keep_last",
                f"keeping the last {policy.keep_last:,}{best} checkpoints of {bytes_text(checkpoint)} each is"
                f" {bytes_text(kept * checkpoint)}, more than the limit of"
                f" {bytes_text(limits.max_checkpoint_bytes_per_job)}; lower keep_last",
            )
        )


def _empty_report(data: DataInfo, plan: StepPlan) -> SpecReport:
    return SpecReport(
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


def _add_walk(report: SpecReport, walk: Walk) -> None:
    report.errors.extend(walk.errors)
    report.warnings.extend(walk.warnings)
    report.layers = walk.reports
    report.output_shape = list(walk.output_shape) if walk.output_shape is not None else None
    report.total_params = report.trainable_params = sum(layer.params for layer in walk.reports)
    report.flops_per_sample = sum(layer.flops for layer in walk.reports)


def check_spec(spec: JobSpec, data: DataInfo, *, limits: Limits = Limits()) -> SpecReport:
    """The static check: shapes, counts and every problem with its JSON path, without building the model."""
    plan = plan_steps(spec.training, max(data.n_rows, 0))
    report = _empty_report(data, plan)
    n_layers = len(spec.model.layers)
    if n_layers > limits.max_layers:
        # Refuse before walking, so a hostile 100,000-layer spec costs nothing.
        report.errors.append(
            Issue("model.layers", f"the model has {n_layers:,} layers, more than the limit of {limits.max_layers:,}")
        )
        return report
    try:
        walk = walk_layers(spec.model.layers, tuple(data.input_shape))
    except Exception as exc:  # the check promises answers, not exceptions; a bug here must not become a 500
        log.exception("nets.check_failed")
        report.errors.append(Issue("model", f"the model could not be checked: {exc}"))
        return report
    _add_walk(report, walk)
    batch = min(spec.training.batch_size, plan.n_train) if plan.n_train > 0 else spec.training.batch_size
    memory = estimate_memory(spec, data, walk, params=report.total_params, batch=batch)
    report.memory_bytes = memory.total

    check_loss(spec, data, walk, report)
    _check_monitors(spec, report)
    _check_training(spec, data, plan, walk, report)
    _check_caps(spec, data, plan, limits, report)
    _check_sizes(spec, limits, report)
    _check_memory(spec, memory, checkpoint_bytes(spec, walk, params=report.total_params), limits, report)
    report.ok = not report.errors
    return report
