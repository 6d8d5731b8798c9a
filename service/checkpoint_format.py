"""Checkpoint files: the one place that writes and reads trainserve's safetensors bytes and their metadata.

A checkpoint is two safetensors files. ``weights`` holds the model's ``state_dict`` (``load_state_dict`` takes it
as is) with JSON under the ``trainserve`` metadata key (task, classes, normalization, input shape, step, epoch);
``state`` holds everything else an exact resume needs with JSON under ``trainserve_state``. The worker writes
them, /predict, uploads, the model registry and the benchmarks read them, all through this module.

The layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON header
(``{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}``), then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import safetensors
import safetensors.torch
import torch

WEIGHTS_METADATA_KEY = "trainserve"
STATE_METADATA_KEY = "trainserve_state"
# safetensors itself refuses headers above 100 MB; so do we, before allocating anything for one.
MAX_HEADER_BYTES = 100_000_000

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class CheckpointFormatError(ValueError):
    """The bytes are not a safetensors file (or not the trainserve file they were expected to be)."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str  # the safetensors name: F32, BF16, I64, ...
    shape: tuple[int, ...]


def write_checkpoint(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` (any device; copied to CPU) with string ``metadata``.

    Written directly rather than with ``safetensors.torch.save``, which spends tens of microseconds per tensor
    in numpy glue: on a small model that made a checkpoint cost more than a training step. The bytes read back
    with ``safetensors.torch.load`` (and ``read_checkpoint``).
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    raw: list[torch.Tensor] = []
    offset = 0
    for name, tensor in tensors.items():
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        header[name] = {
            "dtype": _DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + data.numel()],
        }
        offset += data.numel()
        raw.append(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header to keep the data 8-byte aligned
    # join reads the arrays through the buffer protocol: the tensor bytes are copied once, into the result.
    parts: list[bytes | memoryview] = [struct.pack("<Q", len(head)), head]
    parts += [t.numpy().data for t in raw]
    return b"".join(parts)


def _header_length(prefix: bytes, available: int | None) -> int:
    if len(prefix) < 8:
        raise CheckpointFormatError("not a safetensors file: shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES or (available is not None and 8 + length > available):
        raise CheckpointFormatError(f"not a safetensors file: a header of {length} bytes does not fit")
    return int(length)


def _parse_header(head: bytes) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    try:
        header = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"not a safetensors file: its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointFormatError("not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointFormatError("safetensors metadata is not an object of strings")
    try:
        tensors = {name: TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]))
                   for name, info in header.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointFormatError(f"not a safetensors file: a tensor entry lacks {exc}") from exc
    return tensors, metadata


def read_header(raw: bytes | memoryview) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors' names, dtypes and shapes, and the string metadata; reads the header only, not the data."""
    view = memoryview(raw)
    length = _header_length(bytes(view[:8]), len(view))
    return _parse_header(bytes(view[8 : 8 + length]))


def read_header_file(f: BinaryIO) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """``read_header`` for an open file: reads its first bytes, never the tensors."""
    length = _header_length(f.read(8), None)
    head = f.read(length)
    if len(head) != length:
        raise CheckpointFormatError("not a safetensors file: truncated header")
    return _parse_header(head)


def read_checkpoint(raw: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on CPU) and the string metadata."""
    _, metadata = read_header(raw)
    try:
        return safetensors.torch.load(raw), metadata
    except safetensors.SafetensorError as exc:
        raise CheckpointFormatError(f"not a safetensors file: {exc}") from exc


def _json_under(metadata: Mapping[str, str], key: str) -> dict[str, Any]:
    text = metadata.get(key)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"metadata[{key!r}] is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointFormatError(f"metadata[{key!r}] is not a JSON object")
    return value


# --- the two trainserve files ----------------------------------------------------------------------------


def write_weights(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> bytes:
    """A weights file: ``state_dict`` plus ``meta`` (task, classes, mean, std, input_shape, step, epoch) as JSON."""
    return write_checkpoint(state_dict, {WEIGHTS_METADATA_KEY: json.dumps(dict(meta))})


def weights_metadata(raw: bytes | memoryview) -> dict[str, Any]:
    """A weights file's trainserve metadata ({} for a plain safetensors file); reads the header only."""
    return _json_under(read_header(raw)[1], WEIGHTS_METADATA_KEY)


def weights_metadata_file(f: BinaryIO) -> dict[str, Any]:
    """``weights_metadata`` for an open file."""
    return _json_under(read_header_file(f)[1], WEIGHTS_METADATA_KEY)


def read_weights(raw: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A weights file's state_dict (CPU tensors) and its trainserve metadata."""
    tensors, metadata = read_checkpoint(raw)
    return tensors, _json_under(metadata, WEIGHTS_METADATA_KEY)


def write_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> bytes:
    """A training-state file: ``tensors`` plus the loop/optimizer ``meta`` as JSON."""
    return write_checkpoint(tensors, {STATE_METADATA_KEY: json.dumps(dict(meta))})


def read_state(raw: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A training-state file's tensors and meta; an error when the file holds no trainserve state."""
    tensors, metadata = read_checkpoint(raw)
    if STATE_METADATA_KEY not in metadata:
        raise CheckpointFormatError("not a trainserve training state: its safetensors metadata has no loop state")
    return tensors, _json_under(metadata, STATE_METADATA_KEY)
