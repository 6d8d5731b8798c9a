"""Export: one self-contained file per checkpoint that runs without trainserve.

The file holds a wrapper module: the training's input normalization (the checkpoint's mean/std), the reshape
from flat rows to the network's input shape, the network, and for classifiers a probabilities output beside the
logits, with a dynamic batch dimension. ``onnx`` is written by ``torch.onnx.export`` (the TorchScript-based
exporter: it needs only the ``onnx`` package and takes well under a second for our nets), ``pt2`` by
``torch.export.export`` + ``torch.export.save``. Exports are CPU-heavy: they run in the route's worker thread,
one at a time, and the last few files are kept (a checkpoint never changes, so neither does its export).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from service.errors import SpecError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.models import Job

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "pt2"]
MEDIA_TYPES: dict[str, str] = {"onnx": "application/octet-stream", "pt2": "application/octet-stream"}
ONNX_OPSET = 17
# The example batch the tracers see; 2, not 1, so no exporter specializes the batch dimension to a constant.
_EXAMPLE_ROWS = 2


class ExportWrapper(nn.Module):
    """Raw rows (batch, features) -> (logits, probabilities) for classifiers, (values,) for regressors."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, *, task: str, input_shape: tuple[int, ...], mean: torch.Tensor | None,
                 std: torch.Tensor | None) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.input_shape = tuple(int(d) for d in input_shape)
        self.normalize = mean is not None and std is not None
        self.register_buffer("mean", (mean if mean is not None else torch.zeros(1)).float().reshape(-1))
        self.register_buffer("std", (std if std is not None else torch.ones(1)).float().reshape(-1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.normalize:
            x = (x - self.mean) / self.std  # the same float32 ops, in the same order, as /predict
        out = self.net(x.reshape(-1, *self.input_shape))
        if self.task == "classification":
            return out, torch.softmax(out, dim=-1)
        if self.task == "binary":
            return out, torch.sigmoid(out)
        return (out.reshape(out.shape[0], -1),)


def output_names(task: str) -> list[str]:
    return ["logits", "probabilities"] if task in ("classification", "binary") else ["values"]


@dataclass(frozen=True)
class ExportSource:
    """What an export needs from a loaded checkpoint (service.predict.LoadedModel carries the same)."""

    key: str  # the checkpoint id: the cache key with the format
    net: nn.Module
    task: str
    input_shape: tuple[int, ...]
    mean: torch.Tensor | None
    std: torch.Tensor | None


def _wrapper(source: ExportSource) -> ExportWrapper:
    return ExportWrapper(source.net, task=source.task, input_shape=source.input_shape, mean=source.mean,
                         std=source.std).eval()


def _n_features(source: ExportSource) -> int:
    n = 1
    for d in source.input_shape:
        n *= int(d)
    return n


def _to_onnx(wrapper: ExportWrapper, example: torch.Tensor) -> bytes:
    names = output_names(wrapper.task)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, once per export
        # A BytesIO is a binary file object, which the annotation (str | PathLike) leaves out.
        torch.onnx.export(wrapper, (example,), buffer,  # type: ignore[arg-type]
                          input_names=["input"], output_names=names,
                          dynamic_axes={name: {0: "batch"} for name in ["input", *names]},
                          opset_version=ONNX_OPSET, dynamo=False)
    return buffer.getvalue()


def _to_pt2(wrapper: ExportWrapper, example: torch.Tensor) -> bytes:
    program = torch.export.export(wrapper, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


_WRITERS = {"onnx": _to_onnx, "pt2": _to_pt2}


def _failing_layer(source: ExportSource, fmt: str) -> str:
    """The JSON path of the first layer that does not export alone (`model` when each one does)."""
    net = source.net
    if not isinstance(net, nn.Sequential):
        return "model"
    x = torch.zeros(_EXAMPLE_ROWS, *source.input_shape)
    for index, layer in enumerate(net):
        try:
            with torch.no_grad():
                out = layer(x)
            single = ExportWrapper(nn.Sequential(layer), task="regression", input_shape=tuple(x.shape[1:]),
                                   mean=None, std=None).eval()
            _WRITERS[fmt](single, x.reshape(x.shape[0], -1))
        except Exception:
            return f"model.layers[{index}]"
        x = out
    return "model"


class ExportCache:
    """(checkpoint id, format) -> file bytes, the newest few (bounded by count and bytes)."""

    def __init__(self, *, max_items: int = 8, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.max_items, self.max_bytes = max_items, max_bytes
        self._lock = threading.Lock()
        # One export at a time: each is CPU-bound and takes the tracer's global state.
        self.exporting = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, str], raw: bytes) -> None:
        with self._lock:
            self._items[key] = raw
            while len(self._items) > self.max_items or sum(map(len, self._items.values())) > self.max_bytes:
                if len(self._items) == 1:
                    break
                self._items.popitem(last=False)


EXPORTS = ExportCache()


def export_checkpoint(source: ExportSource, fmt: ExportFormat, *, cache: ExportCache = EXPORTS) -> bytes:
    """The file's bytes (blocking: call it from a worker thread). A layer that does not export is a 422 at its
    path."""
    key = (source.key, fmt)
    found = cache.get(key)
    if found is not None:
        return found
    with cache.exporting:
        found = cache.get(key)  # another request may have exported it while this one waited
        if found is not None:
            return found
        wrapper = _wrapper(source)
        example = torch.zeros(_EXAMPLE_ROWS, _n_features(source))
        try:
            raw = _WRITERS[fmt](wrapper, example)
        except Exception as exc:
            loc = _failing_layer(source, fmt)
            log.warning("export.failed checkpoint_id=%s format=%s loc=%s error=%s", source.key, fmt, loc, exc)
            raise SpecError(f"{loc} cannot be exported to {fmt}: {exc.__class__.__name__}: {str(exc)[:200]}",
                            [{"loc": loc, "msg": f"cannot be exported to {fmt}: {str(exc)[:200]}"}]) from exc
        cache.put(key, raw)
    log.info("export.done checkpoint_id=%s format=%s bytes=%d", source.key, fmt, len(raw))
    return raw


# --- the use cases -------------------------------------------------------------------------------------


def _source(session: Session, *, job: Job, checkpoint_id: str) -> ExportSource:
    from service.checkpoints import load_weights_verified
    from service.datainfo import DataInfo
    from service.predict import load_model
    from service.spec import JobSpec

    weights, _ = load_weights_verified(session, job=job, checkpoint_id=checkpoint_id)
    loaded = load_model(JobSpec.model_validate(job.spec), DataInfo.from_json(job.data_info), weights)
    return ExportSource(key=checkpoint_id, net=loaded.model, task=loaded.task, input_shape=loaded.input_shape,
                        mean=loaded.mean, std=loaded.std)


def export_job_checkpoint(session: Session, *, tenant: str, job_id: str, ref: str,
                          fmt: ExportFormat) -> tuple[bytes, str]:
    """GET /jobs/{id}/checkpoints/{ckpt}/export: (file bytes, file name)."""
    from service.checkpoints import resolve_checkpoint_id
    from service.jobs import get_job_or_raise

    job = get_job_or_raise(session, tenant=tenant, job_id=job_id)
    checkpoint_id = resolve_checkpoint_id(job, ref)
    cached = EXPORTS.get((checkpoint_id, fmt))
    raw = cached if cached is not None else export_checkpoint(_source(session, job=job, checkpoint_id=checkpoint_id),
                                                              fmt)
    return raw, f"{job.id}-{checkpoint_id}.{fmt}"


def export_model_version(session: Session, *, tenant: str, name: str, version: int,
                         fmt: ExportFormat) -> tuple[bytes, str]:
    """GET /models/{name}/versions/{v}/export: (file bytes, file name)."""
    from service.jobs import get_job_or_raise
    from service.registry import get_version_or_raise

    row = get_version_or_raise(session, tenant=tenant, name=name, version=version)
    cached = EXPORTS.get((row.checkpoint_id, fmt))
    if cached is None:
        job = get_job_or_raise(session, tenant=tenant, job_id=row.job_id)
        cached = export_checkpoint(_source(session, job=job, checkpoint_id=row.checkpoint_id), fmt)
    return cached, f"{name}-v{version}.{fmt}"
