"""Export: every file runs outside trainserve (onnxruntime; torch.export.load) and answers what /predict
answers, for a model of each layer type in the spec vocabulary and each kind of output."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import LiveServer

# float32 throughout; runtimes may fuse or reorder ops (e.g. BatchNorm folded into a conv, softmax's
# max-subtraction), which moves results by a few ulps: 1e-5 absolute holds that, and nothing larger.
TOL = 1e-5


def spec(name: str, layers: list[dict[str, Any]], loss: str, data: dict[str, Any],
         normalize: bool = True) -> dict[str, Any]:
    return {"name": name, "model": {"layers": layers}, "loss": {"type": loss},
            "optimizer": {"type": "Adam", "lr": 0.01},
            "training": {"epochs": 2, "batch_size": 64, "validation_split": 0.2, "normalize": normalize, "seed": 0},
            "data": data}


ACTIVATIONS = [{"type": t} for t in ("ReLU", "LeakyReLU", "PReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh",
                                     "Identity")]
MODELS = {
    # Every 1-d layer and activation, BatchNorm1d/LayerNorm/Dropout in eval mode; Softmax and LogSoftmax last.
    "mlp": spec("mlp", [{"type": "Linear", "out_features": 16}, {"type": "BatchNorm1d"}, *ACTIVATIONS,
                        {"type": "Dropout", "p": 0.2}, {"type": "Linear", "out_features": 8}, {"type": "LayerNorm"},
                        {"type": "GELU", "approximate": "tanh"}, {"type": "Linear", "out_features": 3},
                        {"type": "Softmax"}, {"type": "LogSoftmax"}],
                "NLLLoss", {"source": "builtin", "name": "iris"}),
    "conv1d": spec("conv1d", [{"type": "Conv1d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                              {"type": "MaxPool1d", "kernel_size": 2}, {"type": "AvgPool1d", "kernel_size": 2},
                              {"type": "ReLU"}, {"type": "Flatten"}, {"type": "Linear", "out_features": 10}],
                   "CrossEntropyLoss", {"source": "builtin", "name": "digits", "input_shape": [1, 64]}),
    "conv2d": spec("conv2d", [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                              {"type": "BatchNorm2d"}, {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2},
                              {"type": "AvgPool2d", "kernel_size": 2}, {"type": "Flatten"},
                              {"type": "Linear", "out_features": 10}],
                   "CrossEntropyLoss", {"source": "builtin", "name": "digits", "input_shape": [1, 8, 8]}),
    "binary": spec("binary", [{"type": "Linear", "out_features": 8}, {"type": "Tanh"},
                              {"type": "Linear", "out_features": 1}],
                   "BCEWithLogitsLoss", {"source": "builtin", "name": "breast_cancer"}),
    "regression": spec("regression", [{"type": "Linear", "out_features": 8}, {"type": "ELU"},
                                      {"type": "Linear", "out_features": 1}],
                       "MSELoss", {"source": "builtin", "name": "diabetes"}, normalize=False),
}
WIDTH = {"mlp": 4, "conv1d": 64, "conv2d": 64, "binary": 30, "regression": 10}


@pytest.fixture(scope="module")
def trained(embedded_server: LiveServer) -> dict[str, dict[str, Any]]:
    with embedded_server.client() as c:
        ids = {}
        for name, body in MODELS.items():
            response = c.post("/jobs", json=body)
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]
    jobs = {name: embedded_server.wait_for_job(job_id) for name, job_id in ids.items()}
    for job in jobs.values():
        assert job["status"] == "succeeded", job
    return jobs


def rows(name: str, n: int = 5) -> list[list[float]]:
    rng = np.random.default_rng(7)
    scale = {"conv1d": 8.0, "conv2d": 8.0, "regression": 0.05}.get(name, 3.0)
    return (rng.random((n, WIDTH[name])) * scale).round(3).tolist()


def expected(c: Any, job: dict[str, Any], x: list[list[float]]) -> tuple[np.ndarray, np.ndarray | None]:
    """/predict's answer as (probabilities or values, None) arrays to compare outputs with."""
    answer = c.post("/predict", json={"job_id": job["id"], "inputs": x}).json()
    if "probabilities" in answer:
        return np.asarray(answer["probabilities"], dtype=np.float64), np.asarray(answer["predictions"], dtype=object)
    return np.asarray(answer["predictions"], dtype=np.float64), None


def compare(name: str, outputs: list[np.ndarray], want: np.ndarray) -> None:
    if name == "regression":
        np.testing.assert_allclose(outputs[0], want, atol=TOL, rtol=0)
        return
    probabilities = outputs[1]
    if name == "binary":  # /predict answers [1 - p, p]; the file gives p, beside the logit
        probabilities = np.concatenate([1 - probabilities, probabilities], axis=1)
    np.testing.assert_allclose(probabilities, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_export_runs_in_onnxruntime_like_predict(embedded_server: LiveServer,
                                                      trained: dict[str, dict[str, Any]], name: str) -> None:
    job = trained[name]
    with embedded_server.client() as c:
        response = c.get(f"/jobs/{job['id']}/checkpoints/best/export", params={"format": "onnx"})
        assert response.status_code == 200, response.text
        session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
        for n in (1, 7):  # a dynamic batch dimension
            x = rows(name, n)
            want, _ = expected(c, job, x)
            outputs = session.run(None, {"input": np.asarray(x, dtype=np.float32)})
            assert [o.name for o in session.get_outputs()] == (["values"] if name == "regression"
                                                               else ["logits", "probabilities"])
            compare(name, outputs, want)


@pytest.mark.parametrize("name", list(MODELS))
def test_pt2_export_loads_with_torch_export_like_predict(embedded_server: LiveServer,
                                                         trained: dict[str, dict[str, Any]], name: str) -> None:
    job = trained[name]
    with embedded_server.client() as c:
        response = c.get(f"/jobs/{job['id']}/checkpoints/latest/export", params={"format": "pt2"})
        assert response.status_code == 200, response.text
        program = torch.export.load(io.BytesIO(response.content)).module()
        for n in (1, 6):
            x = rows(name, n)
            want, _ = expected_latest(c, job, x)
            with torch.no_grad():
                outputs = [o.numpy() for o in program(torch.tensor(x, dtype=torch.float32))]
            compare(name, outputs, want)


def expected_latest(c: Any, job: dict[str, Any], x: list[list[float]]) -> tuple[np.ndarray, np.ndarray | None]:
    answer = c.post("/predict", json={"job_id": job["id"], "checkpoint": "latest", "inputs": x}).json()
    key = "probabilities" if "probabilities" in answer else "predictions"
    return np.asarray(answer[key], dtype=np.float64), None


def test_model_version_export_and_bad_format(embedded_server: LiveServer, trained: dict[str, dict[str, Any]]) -> None:
    job = trained["mlp"]
    with embedded_server.client() as c:
        c.post("/models", json={"name": "export-mlp", "job_id": job["id"]}).raise_for_status()
        response = c.get("/models/export-mlp/versions/1/export", params={"format": "onnx"})
        assert response.status_code == 200
        assert 'filename="export-mlp-v1.onnx"' in response.headers["content-disposition"]
        bad = c.get("/models/export-mlp/versions/1/export", params={"format": "tflite"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == "format"
        assert c.get("/models/export-mlp/versions/2/export").status_code == 404


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_exported_file_takes_any_batch_size(fmt: str, task: str) -> None:
    """One row and three rows through the same file: the batch dimension is dynamic in both formats."""
    from torch import nn

    from service.export import ExportCache, ExportSource, export_checkpoint

    torch.manual_seed(0)
    if task == "classification":
        net: nn.Module = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        shape: tuple[int, ...] = (4,)
    else:
        net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16, 1))
        shape = (1, 4, 4)
    net.eval()
    width = int(np.prod(shape))
    source = ExportSource(key=f"{task}-{fmt}", net=net, task=task, input_shape=shape,
                          mean=torch.full((width,), 0.5), std=torch.full((width,), 2.0))
    raw = export_checkpoint(source, fmt, cache=ExportCache())  # type: ignore[arg-type]
    for batch in (1, 3):
        x = torch.rand(batch, width)
        with torch.no_grad():
            want = net(((x - 0.5) / 2.0).reshape(-1, *shape)).numpy()
        if fmt == "onnx":
            session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
            got = session.run(None, {"input": x.numpy()})[0]
        else:
            with torch.no_grad():
                got = torch.export.load(io.BytesIO(raw)).module()(x)[0].numpy()
        assert got.shape == (batch, want.shape[1])
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
