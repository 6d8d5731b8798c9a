"""service.checkpoint_format: the one reader/writer of checkpoint files."""

from __future__ import annotations

import io

import pytest
import safetensors.torch
import torch

from service import checkpoint_format as cf


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b16": torch.randn(5, generator=g).to(torch.bfloat16),
        "steps": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }


def test_written_files_read_back_with_the_safetensors_library_and_our_reader() -> None:
    tensors = _tensors()
    raw = cf.write_checkpoint(tensors, {"k": "v"})
    theirs = safetensors.torch.load(raw)
    ours, meta = cf.read_checkpoint(raw)
    assert meta == {"k": "v"}
    for name, t in tensors.items():
        assert torch.equal(theirs[name], t) and torch.equal(ours[name], t) and ours[name].dtype == t.dtype


def test_the_header_names_shapes_and_dtypes_without_the_data() -> None:
    raw = cf.write_checkpoint(_tensors(), {"k": "v"})
    infos, meta = cf.read_header(raw)
    assert infos["w"] == cf.TensorInfo("F32", (3, 4)) and infos["b16"] == cf.TensorInfo("BF16", (5,))
    assert infos["scalar"].shape == () and meta == {"k": "v"}
    # The header alone suffices: the tensor bytes may be missing.
    length = int.from_bytes(raw[:8], "little")
    assert cf.read_header(raw[: 8 + length]) == (infos, meta)
    assert cf.read_header_file(io.BytesIO(raw)) == (infos, meta)


def test_weights_metadata_round_trips_as_json() -> None:
    meta = {"task": "multiclass", "classes": ["a", "b"], "mean": None, "input_shape": [4], "step": 3}
    raw = cf.write_weights({"w": torch.ones(2)}, meta)
    assert cf.weights_metadata(raw) == meta
    assert cf.weights_metadata_file(io.BytesIO(raw)) == meta
    tensors, read_meta = cf.read_weights(raw)
    assert read_meta == meta and torch.equal(tensors["w"], torch.ones(2))
    # A plain safetensors file (no trainserve metadata) reads as {}.
    assert cf.weights_metadata(safetensors.torch.save({"w": torch.ones(1)})) == {}


def test_a_state_file_is_told_apart_from_a_weights_file() -> None:
    raw = cf.write_state({"rng": torch.zeros(3, dtype=torch.uint8)}, {"format": 1, "step": 9})
    assert cf.read_state(raw)[1] == {"format": 1, "step": 9}
    with pytest.raises(cf.CheckpointFormatError, match="no loop state"):
        cf.read_state(cf.write_weights({"w": torch.ones(1)}, {}))


@pytest.mark.parametrize("raw", [b"", b"\x01", (10**12).to_bytes(8, "little") + b"{}",
                                 (2).to_bytes(8, "little") + b"[]", (4).to_bytes(8, "little") + b"\xff\xfe{}",
                                 (1).to_bytes(8, "little") + b"{"])
def test_bytes_that_are_not_safetensors_raise_a_format_error(raw: bytes) -> None:
    with pytest.raises(cf.CheckpointFormatError):
        cf.read_header(raw)
    with pytest.raises(ValueError):  # callers that catch ValueError keep working
        cf.read_checkpoint(raw)
