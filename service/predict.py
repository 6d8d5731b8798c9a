"""Prediction: a bounded LRU cache of loaded models, the checks that keep bad inputs out of them, and POST /predict.

A hot model (a finished job's checkpoint that this process looked up less than `predict_cache_seconds` ago,
asked for with a key accepted as recently) is answered from memory: no database round trip, and for a body
under INLINE_MAX_BYTES no thread hop either. Everything else asks the database in a worker thread, which warms
the caches for the requests after it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
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
from service.inputs import parse_inputs, prepare_inputs
from service.jobs import get_job_or_raise
from service.models import FINISHED_STATUSES, Job
from service.nets import build_model, check_spec, task_kind
from service.observability import MODEL_CACHE_HITS, MODEL_CACHE_MISSES, PREDICT_ROWS, PREDICT_SECONDS
from service.schemas import PredictRequest, PredictResponse
from service.registry import resolve_predict_request
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
# ... and only while the answer is small: building and encoding its floats holds the loop as long as the
# forward pass of a big model would (50M values took 24 s), even for a model that computes nothing.
INLINE_MAX_VALUES = 100_000


@dataclass
class LoadedModel:
    model: torch.nn.Module
    task: str
    classes: list[str] | None
    mean: torch.Tensor | None
    std: torch.Tensor | None
    input_shape: tuple[int, ...]
    flops_per_row: int = 0  # the static check's forward FLOPs per sample: what a request costs to run
    outputs_per_row: int = 1  # values the model emits per sample: what an answer costs to build and send


def load_model(spec: JobSpec, data: DataInfo, weights: bytes, *, flops_per_row: int = 0,
               outputs_per_row: int = 1) -> LoadedModel:
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
        outputs_per_row=outputs_per_row,
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
        # One lock per key being loaded, and how many threads hold or wait on it: concurrent misses of one model
        # load it once (the first loads, the others wait and find it cached), misses of others do not wait.
        self._loading: dict[str, tuple[threading.Lock, int]] = {}

    def get(self, key: str) -> LoadedModel | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
        (MODEL_CACHE_HITS if item is not None else MODEL_CACHE_MISSES).inc()
        return item

    def get_or_load(self, key: str, load: Callable[[], LoadedModel]) -> tuple[LoadedModel, bool]:
        """The cached model, else ``load()``'s, loaded once however many threads miss it at the same time.
        Returns the model and whether it came from the cache."""
        item = self.get(key)
        if item is not None:
            return item, True
        with self._load_lock(key):
            with self._lock:
                item = self._items.get(key)  # loaded by the thread this one waited for
            if item is not None:
                return item, True
            item = load()
            self.put(key, item)
            return item, False

    @contextmanager
    def _load_lock(self, key: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._loading.get(key, (threading.Lock(), 0))
            self._loading[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._loading[key]
                if users == 1:
                    del self._loading[key]
                else:
                    self._loading[key] = (lock, users - 1)

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


def run_model(loaded: LoadedModel, x: torch.Tensor) -> dict[str, Any]:
    x = prepare_inputs(x, mean=loaded.mean, std=loaded.std, input_shape=loaded.input_shape)
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


async def predict(raw: bytes, *, authorization: str | None, cache: ModelCache,
                  settings: Settings) -> tuple[str, bool]:
    """POST /predict: the JSON answer (PredictResponse, None fields left out) and whether the model was cached.

    A body under INLINE_MAX_BYTES for a hot model whose forward pass is cheap (INLINE_MAX_FLOPS) and whose
    answer is small (INLINE_MAX_VALUES) is answered on the event loop, as a bare FastAPI handler would; anything
    bigger in a worker thread, so that it does not stall every other request for the whole of its work. Database
    lookups always run in a worker thread.
    """
    tenant = await authenticate_recent(authorization, ttl=settings.predict_cache_seconds)
    if len(raw) >= INLINE_MAX_BYTES:
        big = await _by_job(await anyio.to_thread.run_sync(parse_request, raw), tenant=tenant, settings=settings)
        return await anyio.to_thread.run_sync(lambda: _answer(big, tenant, cache, settings))
    request = await _by_job(parse_request(raw), tenant=tenant, settings=settings)
    job_id, rows = resolved(request)
    hot = cache.hot(tenant, job_id, request.checkpoint)
    if hot is not None and _cheap(hot[1], rows=len(rows)):
        return _hot_answer(request, hot, settings)
    return await anyio.to_thread.run_sync(lambda: _answer(request, tenant, cache, settings, hot=hot))


async def _by_job(request: PredictRequest, *, tenant: str, settings: Settings) -> PredictRequest:
    """A body naming a model ("name@alias") or sending records, as the (job_id, checkpoint, inputs) it means."""
    if request.model is None and request.records is None and request.job_id is not None and request.inputs is not None:
        return request  # the common body: nothing to resolve
    return await resolve_predict_request(request, tenant=tenant, ttl=settings.predict_cache_seconds)


def resolved(request: PredictRequest) -> tuple[str, list[Any]]:
    """(job_id, inputs) of a body _by_job has resolved: a model reference became a job id, records became rows."""
    if request.job_id is None or request.inputs is None:  # _by_job fills both or raises: a bug if reached
        raise TypeError("a /predict body reached the model before its job_id and inputs were resolved")
    return request.job_id, request.inputs


def _cheap(loaded: LoadedModel, *, rows: int) -> bool:
    return loaded.flops_per_row * rows <= INLINE_MAX_FLOPS and loaded.outputs_per_row * rows <= INLINE_MAX_VALUES


def check_output_size(*, rows: int, outputs_per_row: int, max_values: int) -> None:
    """Refuse, before the forward pass, an answer of more than `max_values` values (rows × outputs per row)."""
    if rows * outputs_per_row > max_values:
        raise SpecError("the answer would be too large", [{
            "loc": "inputs",
            "msg": f"{rows:,} rows × {outputs_per_row:,} outputs is {rows * outputs_per_row:,} values, more than the"
                   f" limit of {max_values:,}; send at most {max(max_values // outputs_per_row, 1):,} rows per request",
        }])


def _hot_answer(request: PredictRequest, hot: tuple[str, LoadedModel], settings: Settings) -> tuple[str, bool]:
    """The answer from a hot model, from memory alone."""
    started = time.perf_counter()
    checkpoint_id, loaded = hot
    x = _request_tensor(request, input_shape=loaded.input_shape, max_rows=settings.max_predict_rows)
    check_output_size(rows=x.shape[0], outputs_per_row=loaded.outputs_per_row, max_values=settings.max_predict_values)
    return _finish(_respond(loaded, x, job_id=resolved(request)[0], checkpoint_id=checkpoint_id), hit=True,
                   started=started)


def _answer(request: PredictRequest, tenant: str, cache: ModelCache, settings: Settings, *,
            hot: tuple[str, LoadedModel] | None = None) -> tuple[str, bool]:
    """A hot model's answer, else the database's (blocking: for worker threads). `hot`: already looked up."""
    hot = hot or cache.hot(tenant, resolved(request)[0], request.checkpoint)
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
    return parse_inputs(resolved(request)[1], input_shape=input_shape, max_rows=max_rows,
                        numbers_checked=isinstance(request, NumberRows))


def _predict_from_database(*, tenant: str, request: PredictRequest, cache: ModelCache,
                           settings: Settings) -> tuple[PredictResponse, bool]:
    # Read-only: /predict writes nothing, and on SQLite a read transaction takes no write lock.
    with session_scope(read_only=True) as session:
        return predict_from_database(session, tenant=tenant, request=request, cache=cache, settings=settings)


def _outputs_per_row(job: Job, spec: JobSpec, data: DataInfo) -> int:
    """Values the model emits per sample, from the static check's report (a job's report always has it; older
    rows without one are walked again, which builds nothing)."""
    shape = (job.report or {}).get("output_shape")
    if not shape:
        shape = check_spec(spec, data).output_shape or [1]
    return math.prod(int(size) for size in shape)


def predict_from_database(session: Session, *, tenant: str, request: PredictRequest, cache: ModelCache,
                          settings: Settings) -> tuple[PredictResponse, bool]:
    """Returns the response and whether the model came from the cache; a finished job's lookup is remembered
    for `predict_cache_seconds` so the next requests for it skip the database."""
    job = get_job_or_raise(session, tenant=tenant, job_id=resolved(request)[0])
    checkpoint_id = resolve_checkpoint_id(job, request.checkpoint)
    data = DataInfo.from_json(job.data_info)
    spec = JobSpec.model_validate(job.spec)
    x = _request_tensor(request, input_shape=data.input_shape, max_rows=settings.max_predict_rows)
    outputs = _outputs_per_row(job, spec, data)
    check_output_size(rows=x.shape[0], outputs_per_row=outputs, max_values=settings.max_predict_values)

    def load() -> LoadedModel:
        weights, _ = load_weights_verified(session, job=job, checkpoint_id=checkpoint_id)
        loaded = load_model(spec, data, weights, flops_per_row=int((job.report or {}).get("flops_per_sample") or 0),
                            outputs_per_row=outputs)
        log.info("predict.model_loaded job_id=%s checkpoint_id=%s", job.id, checkpoint_id)
        return loaded

    key = f"{job.id}:{checkpoint_id}"
    loaded, hit = cache.get_or_load(key, load)
    remember_seconds = settings.predict_cache_seconds
    if job.status in FINISHED_STATUSES and remember_seconds > 0:
        cache.remember(tenant, job.id, request.checkpoint, checkpoint_id=checkpoint_id, model_key=key,
                       ttl=remember_seconds)
    return _respond(loaded, x, job_id=job.id, checkpoint_id=checkpoint_id), hit


def _respond(loaded: LoadedModel, x: torch.Tensor, *, job_id: str, checkpoint_id: str) -> PredictResponse:
    # Built from our own lists, already of the schema's types: validating would only copy every row again.
    return PredictResponse.model_construct(job_id=job_id, checkpoint_id=checkpoint_id, **run_model(loaded, x))
