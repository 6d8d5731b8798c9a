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
import numpy as np
import orjson
import torch
from fastapi.exceptions import RequestValidationError
from pydantic import Strict, ValidationError
from sqlalchemy.orm import Session

from service.singleflight import SingleFlight
from service.checkpoint_format import read_weights
from service.checkpoints import load_weights_verified, resolve_checkpoint_id
from service.datainfo import DataInfo
from service.db import session_scope
from service.errors import SpecError
from service.inputs import parse_inputs, prepare_inputs
from service.jobs import get_job_or_raise
from service.models import FINISHED_STATUSES, Job
from service.nets import build_model, check_spec, task_kind
from service.observability import MODEL_CACHE_HITS, MODEL_CACHE_MISSES, PREDICT_ROWS, PREDICT_SECONDS, labelled
from service.schemas import PredictRequest
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


# A PredictResponse as a dict, its fields in the schema's order, never None (run_model leaves out what a task
# does not answer): what _finish encodes.
Answer = dict[str, Any]


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
        # Requests (on the event loop) that find a remembered lookup expired ask the database once between them.
        self.refreshes = SingleFlight()

    def get(self, key: str) -> LoadedModel | None:
        with self._lock:
            item = self._touch(key)
        (MODEL_CACHE_HITS if item is not None else MODEL_CACHE_MISSES).inc()
        return item

    def _touch(self, key: str) -> LoadedModel | None:
        """The cached model, marked most recently used (the caller holds the lock)."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
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
        with self._lock:  # one lock for both lookups: this runs on every hot request
            found = self._lookups.get((tenant, job_id, ref))
            if found is None or found.expires <= time.monotonic():
                return None
            loaded = self._touch(found.model_key)
        (MODEL_CACHE_HITS if loaded is not None else MODEL_CACHE_MISSES).inc()  # as get() counts
        return None if loaded is None else (found.checkpoint_id, loaded)

    def expired(self, tenant: str, job_id: str, ref: str) -> bool:
        """Whether a lookup of this reference was remembered, and its time is up."""
        with self._lock:
            found = self._lookups.get((tenant, job_id, ref))
            return found is not None and found.expires <= time.monotonic()


def run_model(loaded: LoadedModel, x: torch.Tensor) -> dict[str, Any]:
    """`x`: parsed rows, (n, features)."""
    if loaded.mean is not None or len(loaded.input_shape) != 1:  # else prepare_inputs would return x as it is
        x = prepare_inputs(x, mean=loaded.mean, std=loaded.std, input_shape=loaded.input_shape)
    # The answer's tensors are built in inference mode too: on its tensors that skips autograd's bookkeeping.
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


async def predict(raw: bytes, *, tenant: str, cache: ModelCache, settings: Settings) -> tuple[bytes, bool]:
    """POST /predict for `tenant` (whose key service.auth.Authentication has checked, with the same
    TRAINSERVE_PREDICT_CACHE_SECONDS trust): the JSON answer (PredictResponse, None fields left out) and whether
    the model was cached.

    A body under INLINE_MAX_BYTES for a hot model whose forward pass is cheap (INLINE_MAX_FLOPS) and whose
    answer is small (INLINE_MAX_VALUES) is answered on the event loop, as a bare FastAPI handler would; anything
    bigger in a worker thread, so that it does not stall every other request for the whole of its work. Database
    lookups always run in a worker thread.
    """
    if len(raw) >= INLINE_MAX_BYTES:
        big = await _by_job(await anyio.to_thread.run_sync(parse_request, raw), tenant=tenant, settings=settings)
        return await anyio.to_thread.run_sync(lambda: _answer(big, tenant, cache, settings))
    request = parse_request(raw)
    if not isinstance(request, PlainRows):
        request = await _by_job(request, tenant=tenant, settings=settings)
    job_id, rows = resolved(request)
    lookup = (tenant, job_id, request.checkpoint)
    hot = cache.hot(*lookup)
    if hot is None and cache.expired(*lookup) and await cache.refreshes.wait(lookup):
        hot = cache.hot(*lookup)  # remembered by the request that just asked the database
    if hot is not None and _cheap(hot[1], rows=len(rows)):
        return _hot_answer(request, hot, settings)
    if hot is not None:
        return await anyio.to_thread.run_sync(lambda: _hot_answer(request, hot, settings))
    with cache.refreshes.lead(lookup):
        return await anyio.to_thread.run_sync(lambda: _answer(request, tenant, cache, settings))


async def _by_job(request: Body, *, tenant: str, settings: Settings) -> Body:
    """A body naming a model ("name@alias") or sending records, as the (job_id, checkpoint, inputs) it means."""
    if isinstance(request, PlainRows) or (request.model is None and request.records is None
                                          and request.job_id is not None and request.inputs is not None):
        return request  # the common body: nothing to resolve
    return await resolve_predict_request(request, tenant=tenant, ttl=settings.predict_cache_seconds)


def resolved(request: Body) -> tuple[str, list[Any]]:
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


def _hot_answer(request: Body, hot: tuple[str, LoadedModel], settings: Settings) -> tuple[bytes, bool]:
    """The answer from a hot model, from memory alone."""
    started = time.perf_counter()
    checkpoint_id, loaded = hot
    x = _request_tensor(request, input_shape=loaded.input_shape, max_rows=settings.max_predict_rows)
    check_output_size(rows=x.shape[0], outputs_per_row=loaded.outputs_per_row, max_values=settings.max_predict_values)
    return _finish(_respond(loaded, x, job_id=resolved(request)[0], checkpoint_id=checkpoint_id), hit=True,
                   started=started)


def _answer(request: Body, tenant: str, cache: ModelCache, settings: Settings) -> tuple[bytes, bool]:
    """A hot model's answer, else the database's (blocking: for worker threads)."""
    hot = cache.hot(tenant, resolved(request)[0], request.checkpoint)
    if hot is not None:
        return _hot_answer(request, hot, settings)
    started = time.perf_counter()
    response, hit = _predict_from_database(tenant=tenant, request=request, cache=cache, settings=settings)
    return _finish(response, hit=hit, started=started)


def _finish(answer: Answer, *, hit: bool, started: float) -> tuple[bytes, bool]:
    labelled(PREDICT_SECONDS, "hit" if hit else "miss").observe(time.perf_counter() - started)
    PREDICT_ROWS.inc(len(answer["predictions"]))
    # orjson writes the bytes PredictResponse.model_dump_json(exclude_none=True) would (same field order, floats
    # in their shortest form, non-finite ones as null, the same string escapes), ten times faster.
    return orjson.dumps(answer), hit


class NumberRows(PredictRequest):
    """The common body, flat rows of plain numbers, proved so while pydantic parses it: in Rust, almost free,
    where a check of every value in Python costs as much as the forward pass of a big batch."""

    inputs: list[list[Annotated[float, Strict()]]]  # strict: booleans, strings and nulls are not numbers


@dataclass(slots=True)
class PlainRows:
    """The common body, `{"job_id", "checkpoint" (optional), "inputs"}`, with its rows already proved finite
    numbers and converted to float32 (see _plain_body). It reads like the PredictRequest it stands for, without
    the cost of building one on every request."""

    job_id: str
    inputs: list[Any]
    array: np.ndarray  # the rows as float32, two or more dimensions
    checkpoint: str = PredictRequest.model_fields["checkpoint"].default
    model: None = None
    records: None = None


# What the steps after parsing take: a parsed body of any kind.
Body = PredictRequest | PlainRows


_PLAIN_FIELDS = frozenset({"job_id", "checkpoint", "inputs"})


def parse_request(raw: bytes) -> Body:
    """The body. The common one (see _plain_body) is decoded by orjson and numpy; anything else is parsed by
    pydantic's JSON parser (several times faster than json.loads on big batches), first as flat rows of numbers,
    then, failing that (nested rows, bad values, a bad body), as a plain PredictRequest, whose problems answer 422
    exactly like FastAPI's own body validation, or are named by parse_inputs."""
    plain = _plain_body(raw)
    if plain is not None:
        return plain
    try:
        return NumberRows.model_validate_json(raw)
    except ValidationError:
        pass
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _plain_body(raw: bytes) -> PlainRows | None:
    """`{"job_id": str, "checkpoint": str (optional), "inputs": rows of finite numbers}`, decoded by orjson, its rows
    turned into float32 by numpy in C, as a bare FastAPI handler would (for 256 rows of 784 values, 10 ms where
    pydantic's strict parse and then numpy took 16). None for any other body, or any doubt; pydantic then parses
    it as before, so every answer and every 422 stays what it was."""
    # numpy would quietly take a boolean or a numeric string for a number, so the bytes must show neither. "true"
    # holds an "r", "false" and "null" an "l", which no number, field name or hex id holds: two memchr passes
    # (some 40 us for 1.4 MB) rule all three out, and the words themselves are searched only where one is found.
    maybe_null = b"l" in raw
    if (maybe_null or b"r" in raw) and (b"true" in raw or b"false" in raw):
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or not body.keys() <= _PLAIN_FIELDS or type(body.get("job_id")) is not str \
            or type(body.get("checkpoint", "")) is not str or type(body.get("inputs")) is not list:
        return None
    # Every key and the one or two string values hold two quotes each, "inputs" none: any string in the rows, or
    # a quote escaped in an id, adds some.
    if _count_quotes(raw, most=4 * len(body)) != 4 * len(body) - 2:
        return None
    array = _number_array(body["inputs"], maybe_null=maybe_null)
    return None if array is None else PlainRows(array=array, **body)


def _count_quotes(raw: bytes, *, most: int) -> int:
    """The double quotes in `raw`, counted up to `most` (find is a memchr: one quick pass over a big body)."""
    count, at = 0, raw.find(b'"')
    while at >= 0 and count < most:
        count += 1
        at = raw.find(b'"', at + 1)
    return count


def _number_array(rows: list[Any], *, maybe_null: bool) -> np.ndarray | None:
    """Rows of numbers (nested lists of one shape, no strings or booleans among them) as a float32 array of two or
    more dimensions, each value converted as the pydantic path converts it (a Python float, then float32); None
    for ragged rows, objects, values past float32's range, or (where `maybe_null`) nulls. orjson itself never
    gives an infinite or nan float."""
    try:
        with np.errstate(over="raise"):  # past float32's range: refused here, named by parse_inputs
            array = np.array(rows, dtype=np.float32)
    except (ValueError, TypeError, OverflowError, FloatingPointError):
        return None
    if array.ndim < 2 or (maybe_null and not np.isfinite(array).all()):  # numpy makes a null nan
        return None
    return array


def _request_tensor(request: Body, *, input_shape: tuple[int, ...], max_rows: int) -> torch.Tensor:
    width = math.prod(input_shape)
    if isinstance(request, PlainRows) and len(request.array) <= max_rows:
        array = request.array
        if array.ndim == 2 and array.shape[1] == width:  # flat rows: already (n, features)
            return torch.from_numpy(array)
        if array[0].size == width:
            return torch.from_numpy(array.reshape(len(array), width))
    # Anything else is named, problem by problem, by parse_inputs (too many rows, the wrong width...).
    return parse_inputs(resolved(request)[1], input_shape=input_shape, max_rows=max_rows,
                        numbers_checked=isinstance(request, (NumberRows, PlainRows)))


def _predict_from_database(*, tenant: str, request: Body, cache: ModelCache,
                           settings: Settings) -> tuple[Answer, bool]:
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


def predict_from_database(session: Session, *, tenant: str, request: Body, cache: ModelCache,
                          settings: Settings) -> tuple[Answer, bool]:
    """Returns the answer and whether the model came from the cache; a finished job's lookup is remembered
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


def _respond(loaded: LoadedModel, x: torch.Tensor, *, job_id: str, checkpoint_id: str) -> Answer:
    # Built from our own lists, already of the schema's types: validating would only copy every row again.
    return {"job_id": job_id, "checkpoint_id": checkpoint_id, **run_model(loaded, x)}
