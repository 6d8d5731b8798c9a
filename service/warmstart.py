"""Warm start's static check: resolve ``init_from`` within the tenant (a job's checkpoint, or a registered model
version), read the source's tensor names and shapes from its safetensors header (never the tensor bytes), and
compare them with the new network's ``state_dict`` built on the meta device (no memory for weights).

The check pins what it resolved (source job id and checkpoint id) in the report's ``init_from``, so the worker
(worker.warmstart) loads exactly the checkpoint that was checked, whatever "best" or an alias names later.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.checkpoint_format import (
    WEIGHTS_METADATA_KEY,
    CheckpointFormatError,
    TensorInfo,
    read_header_file,
)
from service.checkpoints import resolve_checkpoint_id
from service.datainfo import DataInfo
from service.errors import NotFound, SpecError, StateConflict
from service.models import Checkpoint, Job
from service.nets import build_model
from service.schemas import SkippedTensor, WarmStartReport
from service.spec import InitFrom, JobSpec

log = logging.getLogger(__name__)

LOC = "init_from"


class WarmStartError(Exception):
    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg


@dataclass(frozen=True)
class Source:
    job: Job
    checkpoint_id: str
    model: str | None


def tensor_path(name: str) -> str:
    """A state_dict key of the built nn.Sequential ("4.weight") as the spec's path ("model.layers[4].weight")."""
    index, _, rest = name.partition(".")
    return f"model.layers[{index}].{rest}" if index.isdigit() else name


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# --- resolving the source ----------------------------------------------------------------------------------


def resolve_source(session: Session, *, tenant: str, init: InitFrom) -> Source:
    """The (job, checkpoint id) init_from names in this tenant; another tenant's source is "not found"."""
    from service.jobs import get_job_or_raise  # service.jobs calls this module from its static check
    from service.registry import parse_model_ref, resolve_model

    try:
        if init.model is not None:
            version = resolve_model(session, tenant=tenant, ref=parse_model_ref(init.model, loc=f"{LOC}.model"))
            job = get_job_or_raise(session, tenant=tenant, job_id=version.job_id)
            return Source(job, version.checkpoint_id, init.model)
        assert init.job_id is not None
        job = get_job_or_raise(session, tenant=tenant, job_id=init.job_id)
    except NotFound as exc:
        raise WarmStartError(LOC, f"{exc.detail}: init_from names a job or model of this tenant") from exc
    except SpecError as exc:  # a malformed model reference
        raise WarmStartError(exc.errors[0]["loc"] if exc.errors else LOC, exc.detail) from exc
    try:
        checkpoint_id = resolve_checkpoint_id(job, init.checkpoint or "best")
    except StateConflict as exc:
        raise WarmStartError(f"{LOC}.checkpoint", exc.detail) from exc
    return Source(job, checkpoint_id, None)


class _BlobPrefix:
    """A file-like view of a checkpoint's weights column that fetches only the bytes asked for (substr), so
    checkpoint_format's header reader never pulls the tensor bytes out of the database."""

    def __init__(self, session: Session, *, checkpoint_id: str, job_id: str) -> None:
        self.session, self.checkpoint_id, self.job_id, self.offset = session, checkpoint_id, job_id, 0

    def read(self, n: int) -> bytes:
        raw = self.session.scalar(select(func.substr(Checkpoint.weights, self.offset + 1, n))
                                  .where(Checkpoint.id == self.checkpoint_id, Checkpoint.job_id == self.job_id))
        if raw is None:
            raise WarmStartError(LOC, f"checkpoint {self.checkpoint_id} of job {self.job_id} not found")
        data = bytes(raw)
        self.offset += len(data)
        return data


def source_header(session: Session, source: Source) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """The source checkpoint's tensors (name -> dtype, shape) and trainserve metadata, from the header only."""
    try:
        tensors, metadata = read_header_file(_BlobPrefix(session, checkpoint_id=source.checkpoint_id,
                                                          job_id=source.job.id))  # type: ignore[arg-type]
        meta = json.loads(metadata.get(WEIGHTS_METADATA_KEY) or "{}")
    except (CheckpointFormatError, ValueError) as exc:
        raise WarmStartError(LOC, f"checkpoint {source.checkpoint_id} cannot be read: {exc}") from exc
    return tensors, meta if isinstance(meta, dict) else {}


# --- comparing with the new network ------------------------------------------------------------------------


def target_tensors(spec: JobSpec, input_shape: tuple[int, ...]) -> tuple[dict[str, tuple[int, ...]], list[set[str]]]:
    """The new net's state_dict shapes and each layer's parameter names, built on the meta device."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(spec, input_shape)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    params = [{f"{i}.{n}" for n, _ in layer.named_parameters()} for i, layer in enumerate(model)]
    return shapes, params


def compare_tensors(source: dict[str, TensorInfo], target: dict[str, tuple[int, ...]]
                    ) -> tuple[list[str], list[SkippedTensor]]:
    """(names that load, what does not and why), in the new net's order then the source's leftovers."""
    loaded: list[str] = []
    skipped: list[SkippedTensor] = []
    for name, shape in target.items():
        found = source.get(name)
        if found is None:
            skipped.append(SkippedTensor(tensor=tensor_path(name), reason=f"is not in the checkpoint "
                                                                          f"(here {_shape(shape)})"))
        elif tuple(found.shape) != shape:
            skipped.append(SkippedTensor(tensor=tensor_path(name), reason=(
                f"is {_shape(found.shape)} in the checkpoint, {_shape(shape)} here")))
        else:
            loaded.append(name)
    for name, info in source.items():
        if name not in target:
            skipped.append(SkippedTensor(tensor=tensor_path(name), reason=(
                f"is in the checkpoint ({_shape(info.shape)}) but has no place here")))
    return loaded, skipped


def _normalization(spec: JobSpec, meta: dict[str, Any], width: int) -> str:
    """Whose statistics normalize the inputs: the source's when it had any that fit these inputs."""
    mean = meta.get("mean")
    if mean is None:
        return "none"  # the source trained on raw inputs: so does this job
    return "source" if len(mean) == width else "own" if spec.training.normalize else "none"


def _check_freeze(init: InitFrom, params: list[set[str]], errors: list[dict[str, str]]) -> None:
    for j, index in enumerate(init.freeze):
        if index >= len(params):
            errors.append({"loc": f"{LOC}.freeze[{j}]",
                           "msg": f"layer {index} does not exist: the model has {len(params)} layers"})
        elif not params[index]:
            errors.append({"loc": f"{LOC}.freeze[{j}]", "msg": f"model.layers[{index}] has no parameters to freeze"})
    if init.freeze and all(i in init.freeze for i, names in enumerate(params) if names):
        errors.append({"loc": f"{LOC}.freeze", "msg": "every layer with parameters is frozen: nothing would train"})


def _check_optimizer_state(session: Session, source: Source, spec: JobSpec, init: InitFrom,
                           input_shape: tuple[int, ...]) -> str | None:
    """Why the source's optimizer state cannot carry over, or None when it can: the same optimizer type over
    the same trainable parameters (names and shapes, in the optimizer's order)."""
    source_spec = JobSpec.model_validate(source.job.spec)
    if source_spec.optimizer.type != spec.optimizer.type:
        return f"the source trained with {source_spec.optimizer.type}, this job with {spec.optimizer.type}"
    state_bytes = session.scalar(select(func.length(Checkpoint.state)).where(Checkpoint.id == source.checkpoint_id))
    if not state_bytes:
        return (f"checkpoint {source.checkpoint_id} holds weights only (an earlier epoch's best); "
                "use checkpoint \"latest\" to carry the optimizer state")
    source_frozen = set(source_spec.init_from.freeze) if source_spec.init_from else set()
    theirs, _ = trainable(source_spec, tuple(source.job.data_info["input_shape"]), source_frozen)
    mine, _ = trainable(spec, input_shape, set(init.freeze))
    if theirs != mine:
        return "the trainable parameters (names, shapes, frozen layers) differ from the source's"
    return None


def trainable(spec: JobSpec, input_shape: Iterable[int], frozen: set[int]) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
    """A net's trainable parameters in the optimizer's order (name, shape), and their count of values."""
    shapes, params = target_tensors(spec, tuple(input_shape))
    names = {n for i, layer in enumerate(params) if i not in frozen for n in layer}
    ordered = [(n, s) for n, s in shapes.items() if n in names]
    return ordered, sum(math.prod(s) for _, s in ordered)


def check_warm_start(session: Session, *, tenant: str, spec: JobSpec, data: DataInfo,
                     report: dict[str, Any]) -> dict[str, Any]:
    """The static check's init_from part: adds errors (422 per problem) or the report's ``init_from``."""
    init = spec.init_from
    if init is None or not report.get("ok"):
        return report
    errors: list[dict[str, str]] = []
    try:
        source = resolve_source(session, tenant=tenant, init=init)
        tensors, meta = source_header(session, source)
    except WarmStartError as exc:
        return {**report, "ok": False, "errors": [*report["errors"], {"loc": exc.loc, "msg": exc.msg}]}
    shapes, params = target_tensors(spec, data.input_shape)
    loaded, skipped = compare_tensors(tensors, shapes)
    if init.strict:
        errors += [{"loc": LOC, "msg": f"{s.tensor} {s.reason}"} for s in skipped]
    elif not loaded:
        errors.append({"loc": LOC, "msg": "no tensor of the checkpoint fits this network: nothing would load"})
    _check_freeze(init, params, errors)
    if init.optimizer_state and not errors:
        why = _check_optimizer_state(session, source, spec, init, data.input_shape)
        if why is not None:
            errors.append({"loc": f"{LOC}.optimizer_state", "msg": why})
    if errors:
        return {**report, "ok": False, "errors": [*report["errors"], *errors]}
    warm = WarmStartReport(job_id=source.job.id, checkpoint_id=source.checkpoint_id, model=source.model,
                           loaded=[tensor_path(n) for n in loaded], skipped=skipped, frozen=sorted(set(init.freeze)),
                           normalization=_normalization(spec, meta, math.prod(data.input_shape)),  # type: ignore[arg-type]
                           optimizer_state=init.optimizer_state)
    warnings = list(report.get("warnings") or [])
    if skipped:
        warnings.append({"loc": LOC, "msg": f"{len(skipped)} tensor(s) do not load and start fresh: "
                                            + ", ".join(s.tensor for s in skipped[:5])})
    frozen = sum(math.prod(shapes[n]) for i in warm.frozen for n in params[i])
    log.info("warmstart.checked source_job=%s checkpoint=%s loaded=%d skipped=%d", source.job.id,
             source.checkpoint_id, len(loaded), len(skipped))
    return {**report, "warnings": warnings, "init_from": warm.model_dump(mode="json"),
            "trainable_params": int(report.get("trainable_params") or 0) - frozen}
