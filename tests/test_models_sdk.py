"""The registry and warm start from the SDK and CLI on a live server: register, alias, predict by model and by
records, export to ONNX, and a fine-tune built with the typed spec's InitFrom."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import trainserve as ts
from service import spec as server_spec
from tests.conftest import ROOT, LiveServer

CLI = shutil.which("trainserve", path=str(Path(sys.executable).parent)) or "trainserve"
SETOSA = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}


def iris(epochs: int = 6, init_from: ts.InitFrom | None = None) -> ts.Spec:
    return ts.Spec(name="iris-sdk", layers=[ts.Linear(8), ts.ReLU(), ts.Linear(3)], loss=ts.CrossEntropyLoss(),
                   optimizer=ts.Adam(lr=0.05), training=ts.Training(epochs, batch_size=32, normalize=True, seed=3),
                   data=ts.BuiltinData("iris"), init_from=init_from)


@pytest.fixture(scope="module")
def client(embedded_server: LiveServer) -> Any:
    with ts.Client(embedded_server.url, embedded_server.api_key) as c:
        yield c


def test_the_typed_init_from_is_the_servers() -> None:
    built = ts.InitFrom(model="churn@prod", strict=False, freeze=(0,), optimizer_state=True).to_dict()
    assert built == {"model": "churn@prod", "strict": False, "freeze": [0], "optimizer_state": True}
    server_spec.InitFrom.model_validate(built)
    missing = set(server_spec.InitFrom.model_fields) - set(ts.InitFrom.__init__.__code__.co_varnames)
    assert not missing, missing
    with pytest.raises(TypeError):
        ts.InitFrom()


def test_register_alias_predict_export_and_fine_tune_from_the_sdk(client: ts.Client, tmp_path: Path) -> None:
    job = client.jobs.wait(client.jobs.create(iris()).id)
    assert job.status == "succeeded", job
    v1 = client.models.register("iris-sdk", job.id)
    assert v1.version == 1 and v1.checkpoint_id == job.best.checkpoint_id  # type: ignore[union-attr]
    assert v1.signature is not None and v1.signature.outputs.classes == ["setosa", "versicolor", "virginica"]
    assert client.models.set_alias("iris-sdk", "prod", 1).version == 1
    assert client.models.get("iris-sdk").aliases == {"prod": 1}
    assert client.models.version("iris-sdk", 1).aliases == ["prod"]
    assert "iris-sdk" in [m.name for m in client.models.list()]

    by_model = client.predict(model="iris-sdk@prod", records=[SETOSA])
    by_job = client.predict(job.id, [list(SETOSA.values())])
    assert by_model.predictions == by_job.predictions == ["setosa"]

    onnx_path = client.jobs.export(job.id, path=tmp_path / "iris.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path))
    rows = np.array([list(SETOSA.values())], np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: rows})
    assert int(np.argmax(outputs[0][0])) == 0  # setosa
    assert client.models.export("iris-sdk", 1, path=tmp_path / "v1.onnx").stat().st_size > 0

    warm = client.jobs.wait(client.jobs.create(iris(2, ts.InitFrom(model="iris-sdk@prod"))).id)
    assert warm.status == "succeeded" and warm.report is not None
    assert warm.report.init_from is not None and warm.report.init_from["job_id"] == job.id

    client.models.delete_alias("iris-sdk", "prod")
    assert client.models.get("iris-sdk").aliases == {}
    with pytest.raises(ts.NotFound):
        client.models.delete_alias("iris-sdk", "prod")


def test_the_cli_lists_registers_aliases_and_exports(embedded_server: LiveServer, client: ts.Client,
                                                     tmp_path: Path) -> None:
    job = client.jobs.wait(client.jobs.create(iris(3)).id)
    env = {**embedded_server.env, "TRAINSERVE_URL": embedded_server.url, "TRAINSERVE_API_KEY": embedded_server.api_key}

    def cli(*args: str) -> str:
        result = subprocess.run([CLI, *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    registered = json.loads(cli("models", "register", "iris-cli", "--job", job.id, "--checkpoint", "latest", "--json"))
    assert registered["version"] == 1 and registered["checkpoint_id"] == job.latest_checkpoint_id
    assert json.loads(cli("models", "alias", "iris-cli", "prod", "1", "--json")) == {"alias": "prod", "version": 1}
    shown = json.loads(cli("models", "show", "iris-cli", "--json"))
    assert shown["aliases"] == {"prod": 1} and shown["versions"][0]["job_id"] == job.id
    assert "iris-cli" in cli("models", "list")
    cli("export", job.id, "--format", "onnx", "-o", str(tmp_path / "model.onnx"))
    assert (tmp_path / "model.onnx").stat().st_size > 0
