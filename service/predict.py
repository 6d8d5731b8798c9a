"""Prediction: a bounded LRU cache of loaded models, the checks that keep bad inputs out of them, and POST /predict.

A hot model (a finished job's checkpoint that this process looked up less than `predict_cache_seconds` ago,
asked for with a key accepted as recently) is answered from memory: no database round trip, and for a body
under INLINE_MAX_BYTES no thread hop either. Everything else asks the database in a worker thread, which warms
the caches for the requests after it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import numpy as np
import torch
from fastapi.exceptions import RequestValidationError
from pydantic import Strict, ValidationError
from sqlalchemy.orm import Session

from service.auth import authenticate_recent
from service.checkpoint_format import read_weights
from service.checkpoints import load_weights_verified, resolve_checkpoint_id
from service.datainfo import DataInfo
from service.db import session_scope
from service.errors import SpecError
from service.jobs import get_job_or_raise
from service.models import FINISHED_STATUSES
from service.nets import build_model, task_kind
from service.observability import MODEL_CACHE_HITS, MODEL_CACHE_MISSES, PREDICT_ROWS, PREDICT_SECONDS
from service.schemas import PredictRequest, PredictResponse
from service.settings import Settings
from service.spec import JobSpec

log = logging.getLogger(__name__)

# Bodies from this size (about 750 rows of 784 values, some 50 ms of work) are handled in a worker thread. Not
# smaller ones: parsing holds the GIL, and handing it back and forth with the event loop cost 10-20 % of the
# throughput of 256-row requests (1.4 MB) at concurrency 16 on 2 cores.
INLINE_MAX_BYTES = 4 * 1024 * 1024
# A hot model runs on the event loop only while the forward pass is short (5e8 FLOPs: some 10-20 ms on one core,
# e.g. 256 rows of a 784-512-256-10 MLP); a bigger model or batch would stall every other request meanwhile.
INLINE_MAX_FLOPS = 5e8


@dataclass
class LoadedModel:
    model: torch.nn.Module
    task: str
    classes: list[str] | None
    mean: torch.Tensor | None
    std: torch.Tensor | None
    input_shape: tuple[int, ...]
    flops_per_row: int = 0  # the static check's forward FLOPs per sample: what a request costs to run


def load_model(spec: JobSpec, data: DataInfo, weights: bytes, *, flops_per_row: int = 0) -> LoadedModel:
    state_dict, meta = read_weights(weights)
    model = build_model(spec, data.input_shape)
    model.load_state_dict(state_dict)
    model.eval()
    mean, std = meta.get("mean"), meta.get("std")
    return LoadedModel(
        model=model,
        task=str(meta.get("task") or task_kind(spec)),
        classes=[str(c) for c in meta["classes"]] if meta.get("classes") else None,
        mean=torch.tensor(mean, dtype=torch.float32) if mean is not None else None,
        std=torch.tensor(std, dtype=torch.float32) if std is not None else None,
        input_shape=tuple(data.input_shape),
        flops_per_row=flops_per_row,
    )


@dataclass(frozen=True)
class _Lookup:
    """What a tenant's (job, checkpoint ref) named when the database was last asked, and until when to trust it."""

    checkpoint_id: str
    model_key: str
    expires: float


class ModelCache:
    """Checkpoint id -> loaded model, least recently used dropped first. Checkpoints never change, so no TTL.

    Beside the models it remembers, for a while, which checkpoint a finished job's reference names: a finished
    job's best and latest no longer move, and the expiry bounds how long a deleted job keeps answering.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        # At most a few per model (its job's "best", "latest" and id), dropped with the model.
        self._lookups: dict[tuple[str, str, str], _Lookup] = {}
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
                dropped, _ = self._items.popitem(last=False)
                self._lookups = {ref: found for ref, found in self._lookups.items() if found.model_key != dropped}

    def remember(self, tenant: str, job_id: str, ref: str, *, checkpoint_id: str, model_key: str, ttl: float) -> None:
        with self._lock:
            if model_key in self._items:
                self._lookups[(tenant, job_id, ref)] = _Lookup(checkpoint_id, model_key, time.monotonic() + ttl)

    def hot(self, tenant: str, job_id: str, ref: str) -> tuple[str, LoadedModel] | None:
        """The checkpoint id and model a remembered, unexpired lookup names; None means: ask the database."""
        with self._lock:
            found = self._lookups.get((tenant, job_id, ref))
            if found is None or found.expires <= time.monotonic():
                return None
        loaded = self.get(found.model_key)
        return None if loaded is None else (found.checkpoint_id, loaded)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_inputs(inputs: list[Any], *, input_shape: tuple[int, ...], max_rows: int,
                 numbers_checked: bool = False) -> torch.Tensor:
    """Rows of numbers -> a float tensor (n, *input_shape); every problem names its inputs[i][j] path.
    `numbers_checked`: the parser already proved every value a number (see NumberRows)."""
    if not inputs:
        raise SpecError("inputs is empty", [{"loc": "inputs", "msg": "give at least one row"}])
    if len(inputs) > max_rows:
        raise SpecError("too many rows", [{"loc": "inputs", "msg": f"{len(inputs)} rows, the limit is {max_rows}"}])
    width = math.prod(input_shape)
    fast = _plain_tensor(inputs, width, numbers_checked=numbers_checked)
    if fast is not None:
        return fast
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
            elif not _finite_float32(value):
                errors.append({"loc": f"inputs[{i}][{j}]", "msg": "not a finite number"})
        rows.append(flat)
        if len(errors) >= 20:
            break
    if errors:
        raise SpecError(f"{len(errors)} problem(s) in inputs: " + "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:3]),
                        errors)
    return torch.tensor(rows, dtype=torch.float32)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite_float32(value: float) -> bool:
    """Models run in float32: a value beyond its range would reach them as inf (an int past float64's range
    cannot even be converted)."""
    try:
        return abs(float(value)) <= FLOAT32_MAX  # False for nan and inf too
    except OverflowError:
        return False


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


_NUMBER_TYPES = frozenset({int, float})  # exact types: bool, a subclass of int, is not a number here


def _plain_tensor(inputs: list[Any], width: int, *, numbers_checked: bool) -> torch.Tensor | None:
    """The common case, well-formed rows of finite numbers, without a Python loop over every value (numpy
    converts the lists in C); None for anything else, which the checks above then name value by value."""
    # numpy would quietly turn booleans and numeric strings into numbers: they must be ruled out first.
    if not numbers_checked and not _only_numbers(inputs):
        return None
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf and fail the finite check below
            array = np.array(inputs, dtype=np.float32)
    except (ValueError, OverflowError):  # ragged rows, integers too large
        return None
    if array.ndim < 2 or array[0].size != width or not np.isfinite(array).all():
        return None
    return torch.from_numpy(array.reshape(len(inputs), width))


def _only_numbers(values: list[Any]) -> bool:
    """Every leaf of nested lists is an int or a float: one C-level pass (set of types) per list."""
    types = set(map(type, values))
    if types <= _NUMBER_TYPES:
        return True
    return types == {list} and all(_only_numbers(v) for v in values)


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


# The route reads its body and Authorization header itself (FastAPI's handling of a declared header alone cost 8 %
# of a one-row prediction), so it documents them with this: the same schema and header a declared body would give.
PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}},
    "parameters": [{"name": "authorization", "in": "header", "required": False,
                    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Authorization"}}],
}


async def predict(raw: bytes, *, authorization: str | None, cache: ModelCache,
                  settings: Settings) -> tuple[str, bool]:
    """POST /predict: the JSON answer (PredictResponse, None fields left out) and whether the model was cached.

    A body under INLINE_MAX_BYTES for a hot model whose forward pass is cheap (INLINE_MAX_FLOPS) is answered on
    the event loop, as a bare FastAPI handler would; anything bigger in a worker thread, so that it does not
    stall every other request for the whole of its work. Database lookups always run in a worker thread.
    """
    tenant = await authenticate_recent(authorization, ttl=settings.predict_cache_seconds)
    if len(raw) >= INLINE_MAX_BYTES:
        return await anyio.to_thread.run_sync(lambda: _answer(parse_request(raw), tenant, cache, settings))
    request = parse_request(raw)
    hot = cache.hot(tenant, request.job_id, request.checkpoint)
    if hot is not None and hot[1].flops_per_row * len(request.inputs) <= INLINE_MAX_FLOPS:
        return _hot_answer(request, hot, settings)
    return await anyio.to_thread.run_sync(lambda: _answer(request, tenant, cache, settings, hot=hot))


def _hot_answer(request: PredictRequest, hot: tuple[str, LoadedModel], settings: Settings) -> tuple[str, bool]:
    """The answer from a hot model, from memory alone."""
    started = time.perf_counter()
    checkpoint_id, loaded = hot
    x = _request_tensor(request, input_shape=loaded.input_shape, max_rows=settings.max_predict_rows)
    return _finish(_respond(loaded, x, job_id=request.job_id, checkpoint_id=checkpoint_id), hit=True, started=started)


def _answer(request: PredictRequest, tenant: str, cache: ModelCache, settings: Settings, *,
            hot: tuple[str, LoadedModel] | None = None) -> tuple[str, bool]:
    """A hot model's answer, else the database's (blocking: for worker threads). `hot`: already looked up."""
    hot = hot or cache.hot(tenant, request.job_id, request.checkpoint)
    if hot is not None:
        return _hot_answer(request, hot, settings)
    started = time.perf_counter()
    response, hit = _predict_from_database(tenant=tenant, request=request, cache=cache, settings=settings)
    return _finish(response, hit=hit, started=started)


def _finish(response: PredictResponse, *, hit: bool, started: float) -> tuple[str, bool]:
    PREDICT_SECONDS.labels("hit" if hit else "miss").observe(time.perf_counter() - started)
    PREDICT_ROWS.inc(len(response.predictions))
    return response.model_dump_json(exclude_none=True), hit


class NumberRows(PredictRequest):
    """The common body, flat rows of plain numbers, proved so while pydantic parses it: in Rust, almost free,
    where a check of every value in Python costs as much as the forward pass of a big batch."""

    inputs: list[list[Annotated[float, Strict()]]]  # strict: booleans, strings and nulls are not numbers


def parse_request(raw: bytes) -> PredictRequest:
    """The body, parsed by pydantic's JSON parser (several times faster than json.loads on big batches). Anything
    but flat rows of numbers (nested rows, bad values, a bad body) is parsed again as a plain PredictRequest,
    whose problems answer 422 exactly like FastAPI's own body validation, or are named by parse_inputs."""
    try:
        return NumberRows.model_validate_json(raw)
    except ValidationError:
        pass
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _request_tensor(request: PredictRequest, *, input_shape: tuple[int, ...], max_rows: int) -> torch.Tensor:
    return parse_inputs(request.inputs, input_shape=input_shape, max_rows=max_rows,
                        numbers_checked=isinstance(request, NumberRows))


def _predict_from_database(*, tenant: str, request: PredictRequest, cache: ModelCache,
                           settings: Settings) -> tuple[PredictResponse, bool]:
    # Read-only: /predict writes nothing, and on SQLite a read transaction takes no write lock.
    with session_scope(read_only=True) as session:
        return predict_from_database(session, tenant=tenant, request=request, cache=cache,
                                     max_rows=settings.max_predict_rows,
                                     remember_seconds=settings.predict_cache_seconds)


def predict_from_database(session: Session, *, tenant: str, request: PredictRequest, cache: ModelCache,
                          max_rows: int, remember_seconds: float) -> tuple[PredictResponse, bool]:
    """Returns the response and whether the model came from the cache; a finished job's lookup is remembered
    for `remember_seconds` so the next requests for it skip the database."""
    job = get_job_or_raise(session, tenant=tenant, job_id=request.job_id)
    checkpoint_id = resolve_checkpoint_id(job, request.checkpoint)
    data = DataInfo.from_json(job.data_info)
    x = _request_tensor(request, input_shape=data.input_shape, max_rows=max_rows)
    key = f"{job.id}:{checkpoint_id}"
    loaded = cache.get(key)
    hit = loaded is not None
    if loaded is None:
        weights, _ = load_weights_verified(session, job=job, checkpoint_id=checkpoint_id)
        loaded = load_model(JobSpec.model_validate(job.spec), data, weights,
                            flops_per_row=int((job.report or {}).get("flops_per_sample") or 0))
        cache.put(key, loaded)
        log.info("predict.model_loaded job_id=%s checkpoint_id=%s", job.id, checkpoint_id)
    if job.status in FINISHED_STATUSES and remember_seconds > 0:
        cache.remember(tenant, job.id, request.checkpoint, checkpoint_id=checkpoint_id, model_key=key,
                       ttl=remember_seconds)
    return _respond(loaded, x, job_id=job.id, checkpoint_id=checkpoint_id), hit


def _respond(loaded: LoadedModel, x: torch.Tensor, *, job_id: str, checkpoint_id: str) -> PredictResponse:
    # Built from our own lists, already of the schema's types: validating would only copy every row again.
    return PredictResponse.model_construct(job_id=job_id, checkpoint_id=checkpoint_id, **run_model(loaded, x))
