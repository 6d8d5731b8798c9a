"""The peers' side of ``bench.predict``: the trainserve checkpoint as a plain ``nn.Sequential``, and one forward.

The floor app and the LitServe app both load the very safetensors file that trainserve's
``GET /jobs/{id}/checkpoints/best`` returned and answer with the same JSON as trainserve's ``/predict``
(predictions as class labels, the classes, the softmax probabilities), so every contender does the same
pre- and post-processing on the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from service.checkpoint_format import weights_metadata_file


def _metadata(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return weights_metadata_file(f)


class Classifier:
    """A Linear/ReLU stack rebuilt from the checkpoint's tensor shapes, plus its class labels."""

    def __init__(self, path: Path) -> None:
        weights = load_file(str(path))
        meta = _metadata(path)
        if meta.get("mean") is not None:
            raise ValueError("the bench model must be trained without training.normalize")
        self.model = self._build(weights).eval()
        self.classes: list[str] = [str(c) for c in meta["classes"]]

    @staticmethod
    def _build(weights: dict[str, torch.Tensor]) -> nn.Sequential:
        # trainserve names the Sequential's children by index ("0.weight", "2.weight", ...), ReLUs between.
        linear_ids = sorted({int(name.split(".")[0]) for name in weights})
        mods: list[nn.Module] = []
        for i, idx in enumerate(linear_ids):
            if i:
                mods.append(nn.ReLU())
            out_f, in_f = weights[f"{idx}.weight"].shape
            mods.append(nn.Linear(in_f, out_f))
        model = nn.Sequential(*mods)
        model.load_state_dict(weights)
        return model

    def predict(self, inputs: list[list[float]]) -> dict[str, Any]:
        """Rows -> the body of trainserve's classification answer, less its job and checkpoint ids."""
        # numpy turns nested lists into floats in C, several times faster than torch.tensor(inputs).
        x = torch.from_numpy(np.array(inputs, dtype=np.float32))
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=-1)
        return {"predictions": [self.classes[i] for i in probs.argmax(dim=-1).tolist()], "classes": self.classes,
                "probabilities": probs.tolist()}
