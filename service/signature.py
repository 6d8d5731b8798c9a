"""Signatures: what a checkpoint takes (values per row, feature names) and gives (classes or values, names).

Feature names come from the data the job trained on: an uploaded dataset's feature columns, or a builtin data
set's own names (scikit-learn's ``feature_names``). Class names come from the checkpoint's own metadata, so a
signature always agrees with what /predict answers for that checkpoint.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.checkpoint_format import weights_metadata
from service.checkpoints import resolve_checkpoint_id
from service.datainfo import DataInfo, resolve_columns, task_kind
from service.errors import CheckpointNotFound, SpecError
from service.models import Checkpoint, Dataset, Job
from service.schemas import Signature, SignatureInputs, SignatureOutputs
from service.spec import BuiltinData, DatasetData, JobSpec
from service.tabular import DatasetDescription

log = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def builtin_feature_names(name: str) -> tuple[str, ...] | None:
    """scikit-learn's own names for a builtin set's columns (bundled files: nothing is downloaded)."""
    from sklearn import datasets  # imported here: only signatures of builtin jobs need it

    loader = getattr(datasets, f"load_{name}", None)
    names = getattr(loader(), "feature_names", None) if loader is not None else None
    return tuple(str(n) for n in names) if names is not None else None


def _columns(session: Session, job: Job, spec: JobSpec) -> tuple[list[str] | None, list[str] | None]:
    """(feature names, target names) of the job's data, where it has names."""
    data = spec.data
    if isinstance(data, BuiltinData):
        names = builtin_feature_names(data.name)
        return (list(names) if names else None), (["target"] if task_kind(spec.loss.type) == "regression"
                                                        else None)
    if isinstance(data, DatasetData):
        row = session.scalar(select(Dataset.description).where(Dataset.id == data.dataset_id,
                                                               Dataset.tenant == job.tenant))
        if row is None:  # deleted since: the shapes still hold, the names are gone
            return None, None
        columns, targets = resolve_columns(data, DatasetDescription.from_json(row), spec.loss.type)
        return columns, targets
    return None, None


def job_features(session: Session, job: Job) -> list[str] | None:
    """The job's feature names (the order /predict's rows take them in), or None where the data had none."""
    return _columns(session, job, JobSpec.model_validate(job.spec))[0]


def build_signature(session: Session, *, job: Job, checkpoint_meta: dict[str, Any]) -> Signature:
    spec = JobSpec.model_validate(job.spec)
    info = DataInfo.from_json(job.data_info)
    features, targets = _columns(session, job, spec)
    width = math.prod(info.input_shape)
    if features is not None and len(features) != width:
        features = None  # a reshape or an NPZ array column: the names do not map onto the values one to one
    task = str(checkpoint_meta.get("task") or task_kind(spec.loss.type))
    classes = checkpoint_meta.get("classes")
    kind: Literal["classes", "values"] = "classes" if task in ("classification", "binary") else "values"
    if kind == "classes" and not classes:
        n = int(info.n_classes or 0)
        classes = ["0", "1"] if task == "binary" and n <= 1 else [str(i) for i in range(n)] or None
    return Signature(
        inputs=SignatureInputs(shape=[width], features=features),
        outputs=SignatureOutputs(kind=kind, classes=[str(c) for c in classes] if kind == "classes" and classes
                                 else None, targets=targets),
    )


def checkpoint_meta(session: Session, *, job: Job, checkpoint_id: str) -> dict[str, Any]:
    """The checkpoint's trainserve metadata (header only); 404 when the job has no such checkpoint."""
    raw = session.scalar(select(Checkpoint.weights).where(Checkpoint.id == checkpoint_id,
                                                          Checkpoint.job_id == job.id))
    if raw is None:
        raise CheckpointNotFound(job.id, checkpoint_id)
    return weights_metadata(raw)


def checkpoint_signature(session: Session, *, job: Job, ref: str) -> Signature:
    """GET /jobs/{id}/checkpoints/{ckpt}/signature."""
    checkpoint_id = resolve_checkpoint_id(job, ref)
    return build_signature(session, job=job, checkpoint_meta=checkpoint_meta(session, job=job,
                                                                             checkpoint_id=checkpoint_id))


def records_to_rows(records: list[Any], features: list[str] | None) -> list[list[Any]]:
    """`records` ([{feature: value}]) -> rows in the signature's feature order; each problem names its path."""
    if features is None:
        raise SpecError("this model's data had no feature names: send rows as inputs",
                        [{"loc": "records", "msg": "the model has no named features; use inputs"}])
    known = set(features)
    errors: list[dict[str, str]] = []
    rows: list[list[Any]] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            errors.append({"loc": f"records[{i}]", "msg": "expected an object of feature: value"})
            continue
        for name in features:
            if name not in record:
                errors.append({"loc": f"records[{i}][{_quote(name)}]", "msg": f"missing feature {name!r}"})
        for name in record:
            if name not in known:
                errors.append({"loc": f"records[{i}][{_quote(name)}]",
                               "msg": f"unknown feature {name!r}; the features are: {', '.join(features)}"})
        rows.append([record.get(name) for name in features])
        if len(errors) >= 20:
            break
    if errors:
        raise SpecError(f"{len(errors)} problem(s) in records: " + "; ".join(
            f"{e['loc']}: {e['msg']}" for e in errors[:3]), errors)
    return rows


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
