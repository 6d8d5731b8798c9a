"""Prediction: a bounded LRU cache of loaded models and the checks that keep bad inputs out of them."""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from sqlalchemy.orm import Session

from service.checkpoints import load_weights_verified, resolve_checkpoint_id
from service.datainfo import DataInfo
from service.errors import SpecError
from service.jobs import get_job_or_raise
from service.nets import build_model, task_kind
from service.observability import MODEL_CACHE_HITS, MODEL_CACHE_MISSES, PREDICT_ROWS, PREDICT_SECONDS
from service.schemas import PredictRequest, PredictResponse
from service.spec import JobSpec

log = logging.getLogger(__name__)

METADATA_KEY = "trainserve"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    task: str
    classes: list[str] | None
    mean: torch.Tensor | None
    std: torch.Tensor | None
    input_shape: tuple[int, ...]


def safetensors_metadata(raw: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    return dict(header.get("__metadata__") or {})


def load_model(spec: JobSpec, data: DataInfo, weights: bytes) -> LoadedModel:
    meta = json.loads(safetensors_metadata(weights).get(METADATA_KEY, "{}"))
    model = build_model(spec, data.input_shape)
    model.load_state_dict(load_safetensors(weights))
    model.eval()
    mean, std = meta.get("mean"), meta.get("std")
    return LoadedModel(
        model=model,
        task=str(meta.get("task") or task_kind(spec)),
        classes=[str(c) for c in meta["classes"]] if meta.get("classes") else None,
        mean=torch.tensor(mean, dtype=torch.float32) if mean is not None else None,
        std=torch.tensor(std, dtype=torch.float32) if std is not None else None,
        input_shape=tuple(data.input_shape),
    )


class ModelCache:
    """Checkpoint id -> loaded model, least recently used dropped first. Checkpoints never change, so no TTL."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> LoadedModel | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
        (MODEL_CACHE_HITS if item is not None else MODEL_CACHE_MISSES).inc()
        return item

    def put(self, key: str, item: LoadedModel) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_inputs(inputs: list[Any], *, input_shape: tuple[int, ...], max_rows: int) -> torch.Tensor:
    """Rows of numbers -> a float tensor (n, *input_shape); every problem names its inputs[i][j] path."""
    if not inputs:
        raise SpecError("inputs is empty", [{"loc": "inputs", "msg": "give at least one row"}])
    if len(inputs) > max_rows:
        raise SpecError("too many rows", [{"loc": "inputs", "msg": f"{len(inputs)} rows, the limit is {max_rows}"}])
    width = math.prod(input_shape)
    errors: list[dict[str, str]] = []
    rows: list[list[float]] = []
    for i, row in enumerate(inputs):
        flat = _flatten(row)
        if flat is None:
            errors.append({"loc": f"inputs[{i}]", "msg": "expected a list of numbers"})
            continue
        if len(flat) != width:
            errors.append({"loc": f"inputs[{i}]", "msg": f"expected {width} values, got {len(flat)}"})
            continue
        for j, value in enumerate(flat):
            if not _is_number(value):
                errors.append({"loc": f"inputs[{i}][{j}]", "msg": f"not a number: {json.dumps(value)[:40]}"})
            elif not math.isfinite(value):
                errors.append({"loc": f"inputs[{i}][{j}]", "msg": "not a finite number"})
        rows.append(flat)
        if len(errors) >= 20:
            break
    if errors:
        raise SpecError(f"{len(errors)} problem(s) in inputs: " + "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:3]),
                        errors)
    return torch.tensor(rows, dtype=torch.float32)


def _flatten(row: Any) -> list[Any] | None:
    if not isinstance(row, list):
        return None
    out: list[Any] = []
    for value in row:
        if isinstance(value, list):
            inner = _flatten(value)
            if inner is None:
                return None
            out.extend(inner)
        else:
            out.append(value)
    return out


def run_model(loaded: LoadedModel, x: torch.Tensor) -> dict[str, Any]:
    if loaded.mean is not None and loaded.std is not None:
        x = (x - loaded.mean) / loaded.std
    x = x.reshape(x.shape[0], *loaded.input_shape)
    with torch.inference_mode():
        out = loaded.model(x).float()
    if loaded.task == "classification":
        probs = torch.softmax(out, dim=-1)
        classes = loaded.classes or [str(i) for i in range(out.shape[-1])]
        return {"predictions": [classes[i] for i in probs.argmax(dim=-1).tolist()], "classes": classes,
                "probabilities": probs.tolist()}
    if loaded.task == "binary":
        probs = torch.sigmoid(out)
        if out.shape[-1] == 1:
            classes = loaded.classes or ["0", "1"]
            p = probs[:, 0]
            return {"predictions": [classes[int(v > 0.5)] for v in p.tolist()], "classes": classes,
                    "probabilities": torch.stack([1 - p, p], dim=1).tolist()}
        return {"predictions": (probs > 0.5).int().tolist(), "probabilities": probs.tolist()}
    return {"predictions": out.reshape(out.shape[0], -1).tolist()}


def predict(session: Session, *, tenant: str, request: PredictRequest, cache: ModelCache,
            max_rows: int) -> tuple[PredictResponse, bool]:
    """Returns the response and whether the model came from the cache."""
    started = time.perf_counter()
    job = get_job_or_raise(session, tenant=tenant, job_id=request.job_id)
    checkpoint_id = resolve_checkpoint_id(job, request.checkpoint)
    data = DataInfo.from_json(job.data_info)
    x = parse_inputs(request.inputs, input_shape=data.input_shape, max_rows=max_rows)
    key = f"{job.id}:{checkpoint_id}"
    loaded = cache.get(key)
    hit = loaded is not None
    if loaded is None:
        weights, _ = load_weights_verified(session, job=job, checkpoint_id=checkpoint_id)
        loaded = load_model(JobSpec.model_validate(job.spec), data, weights)
        cache.put(key, loaded)
        log.info("predict.model_loaded job_id=%s checkpoint_id=%s", job.id, checkpoint_id)
    result = run_model(loaded, x)
    PREDICT_SECONDS.labels("hit" if hit else "miss").observe(time.perf_counter() - started)
    PREDICT_ROWS.inc(x.shape[0])
    return PredictResponse(job_id=job.id, checkpoint_id=checkpoint_id, **result), hit
