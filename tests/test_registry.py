"""The model registry end to end on a live server: versions pin checkpoints, aliases move, /predict follows a
model reference and records, signatures name features and classes, and registered checkpoints are protected."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import ROOT, LiveServer, start_server, stop_server


def iris_spec(epochs: int = 8, *, seed: int = 1, keep_last: int | None = None) -> dict[str, Any]:
    training: dict[str, Any] = {"epochs": epochs, "batch_size": 32, "validation_split": 0.2, "normalize": True,
                                "seed": seed}
    if keep_last is not None:
        training["checkpoint"] = {"keep_last": keep_last, "keep_best": False}
    return {
        "name": "iris",
        "model": {"layers": [{"type": "Linear", "out_features": 8}, {"type": "ReLU"},
                             {"type": "Linear", "out_features": 3}]},
        "loss": {"type": "CrossEntropyLoss"},
        "optimizer": {"type": "Adam", "lr": 0.05},
        "training": training,
        "data": {"source": "builtin", "name": "iris"},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Its own server: a predict cache of 1 s, so an alias move must reach /predict within a test's patience.
    live = start_server(tmp_path_factory.mktemp("registry") / "home",
                        env_extra={"TRAINSERVE_PREDICT_CACHE_SECONDS": "1"})
    yield live
    stop_server(live.proc)


def run_job(server: LiveServer, spec: dict[str, Any]) -> dict[str, Any]:
    with server.client() as c:
        response = c.post("/jobs", json=spec)
        assert response.status_code == 201, response.text
    job = server.wait_for_job(response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def jobs(server: LiveServer) -> list[dict[str, Any]]:
    return [run_job(server, iris_spec(seed=1)), run_job(server, iris_spec(seed=2))]


def other_key(server: LiveServer) -> str:
    result = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "intruder"],
                            cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


SETOSA = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}


def test_register_versions_aliases_and_predict_by_model(server: LiveServer, jobs: list[dict[str, Any]]) -> None:
    a, b = jobs
    with server.client() as c:
        v1 = c.post("/models", json={"name": "iris-clf", "job_id": a["id"], "checkpoint": "best"})
        assert v1.status_code == 201, v1.text
        v1 = v1.json()
        assert v1["version"] == 1 and v1["checkpoint_id"] == a["best"]["checkpoint_id"]  # pinned, not "best"
        assert v1["signature"] == {
            "inputs": {"shape": [4], "features": list(SETOSA)},
            "outputs": {"kind": "classes", "classes": ["setosa", "versicolor", "virginica"], "targets": None},
        }
        v2 = c.post("/models", json={"name": "iris-clf", "job_id": b["id"], "checkpoint": "latest"}).json()
        assert v2["version"] == 2 and v2["checkpoint_id"] == b["latest_checkpoint_id"]

        assert c.put("/models/iris-clf/aliases/prod", json={"version": 1}).json() == {"alias": "prod", "version": 1}
        model = c.get("/models/iris-clf").json()
        assert model["latest_version"] == 2 and model["aliases"] == {"prod": 1}
        assert [v["version"] for v in model["versions"]] == [2, 1]
        assert model["versions"][1]["aliases"] == ["prod"]
        assert c.get("/models/iris-clf/versions/1").json()["aliases"] == ["prod"]
        page = c.get("/models", params={"limit": 1}).json()
        assert page["items"][0]["name"] == "iris-clf" and page["items"][0]["aliases"] == {"prod": 1}

        rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
        by_job = c.post("/predict", json={"job_id": a["id"], "checkpoint": a["best"]["checkpoint_id"],
                                          "inputs": rows}).json()
        by_alias = c.post("/predict", json={"model": "iris-clf@prod", "inputs": rows}).json()
        assert by_alias == by_job
        assert c.post("/predict", json={"model": "iris-clf:1", "inputs": rows}).json() == by_job
        latest = c.post("/predict", json={"model": "iris-clf", "inputs": rows}).json()
        assert latest["job_id"] == b["id"]
        records = c.post("/predict", json={"model": "iris-clf@prod", "records": [
            SETOSA, dict(zip(SETOSA, rows[1]))]}).json()
        assert records == by_job

        # Moving the alias reaches /predict within TRAINSERVE_PREDICT_CACHE_SECONDS (1 s here).
        assert c.put("/models/iris-clf/aliases/prod", json={"version": 2}).status_code == 200
        deadline = time.monotonic() + 30
        while c.post("/predict", json={"model": "iris-clf@prod", "inputs": rows}).json()["job_id"] != b["id"]:
            assert time.monotonic() < deadline, "the moved alias never reached /predict"
            time.sleep(0.2)

        assert c.delete("/models/iris-clf/aliases/prod").status_code == 204
        gone = c.post("/predict", json={"model": "iris-clf@prod", "inputs": rows})
        deadline = time.monotonic() + 30
        while gone.status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.2)
            gone = c.post("/predict", json={"model": "iris-clf@prod", "inputs": rows})


def test_records_name_missing_and_unknown_features(server: LiveServer, jobs: list[dict[str, Any]]) -> None:
    with server.client() as c:
        bad = {k: v for k, v in SETOSA.items() if k != "petal length (cm)"} | {"petal size": 1.0}
        response = c.post("/predict", json={"job_id": jobs[0]["id"], "records": [SETOSA, bad]})
        assert response.status_code == 422, response.text
        locs = {e["loc"]: e["msg"] for e in response.json()["errors"]}
        assert 'records[1]["petal length (cm)"]' in locs and "missing" in locs['records[1]["petal length (cm)"]']
        assert 'records[1]["petal size"]' in locs and "unknown" in locs['records[1]["petal size"]']
        signature = c.get(f"/jobs/{jobs[0]['id']}/checkpoints/best/signature").json()
        assert signature["inputs"]["features"] == list(SETOSA)


@pytest.mark.parametrize(("body", "loc"), [
    ({"name": "Bad Name", "job_id": "x"}, "name"),
    ({"name": "", "job_id": "x"}, "name"),
    ({"name": "a" * 101, "job_id": "x"}, "name"),
])
def test_bad_names_answer_422_with_their_path(server: LiveServer, body: dict[str, Any], loc: str) -> None:
    with server.client() as c:
        response = c.post("/models", json=body)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["errors"]] == [loc]


def test_bad_alias_and_model_reference(server: LiveServer, jobs: list[dict[str, Any]]) -> None:
    with server.client() as c:
        c.post("/models", json={"name": "aliases", "job_id": jobs[0]["id"]}).raise_for_status()
        response = c.put("/models/aliases/aliases/Prod!", json={"version": 1})
        assert response.status_code == 422 and response.json()["errors"][0]["loc"] == "alias"
        assert c.put("/models/aliases/aliases/prod", json={"version": 9}).status_code == 404
        response = c.post("/predict", json={"model": "aliases:x", "inputs": [[1, 2, 3, 4]]})
        assert response.status_code == 422 and response.json()["errors"][0]["loc"] == "model"
        assert c.post("/predict", json={"model": "nothing", "inputs": [[1, 2, 3, 4]]}).status_code == 404


def test_another_tenant_sees_no_model_and_cannot_register_our_job(server: LiveServer,
                                                                  jobs: list[dict[str, Any]]) -> None:
    with server.client() as c:
        c.post("/models", json={"name": "private", "job_id": jobs[0]["id"]}).raise_for_status()
    with server.client(api_key=other_key(server)) as other:
        assert other.get("/models/private").status_code == 404
        assert other.get("/models").json()["items"] == []
        assert other.post("/models", json={"name": "stolen", "job_id": jobs[0]["id"]}).status_code == 404
        assert other.post("/predict", json={"model": "private", "inputs": [[1, 2, 3, 4]]}).status_code == 404
        assert other.get(f"/jobs/{jobs[0]['id']}/checkpoints/best/signature").status_code == 404


def test_registered_checkpoint_survives_retention_and_blocks_job_deletion(server: LiveServer) -> None:
    # keep_last 1: every new checkpoint drops the one before, unless a version pins it.
    spec = iris_spec(epochs=400, keep_last=1)
    spec["training"]["checkpoint"]["every_epochs"] = 1
    with server.client() as c:
        job = c.post("/jobs", json=spec).json()
        deadline = time.monotonic() + 60
        while True:
            early = c.get(f"/jobs/{job['id']}").json()
            if early["latest_checkpoint_id"] or early["status"] != "running" and early["status"] != "queued":
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pinned = c.post("/models", json={"name": "pinned", "job_id": job["id"], "checkpoint": "latest"})
        assert pinned.status_code == 201, pinned.text
        pinned_id = pinned.json()["checkpoint_id"]
        done = server.wait_for_job(job["id"])
        ids = [ck["id"] for ck in c.get(f"/jobs/{job['id']}/checkpoints").json()["items"]]
        assert pinned_id in ids
        if pinned_id != done["latest_checkpoint_id"]:
            assert len(ids) == 2  # the pinned one and the last: retention went on around it
        response = c.delete(f"/jobs/{job['id']}")
        assert response.status_code == 409 and "pinned:1" in response.json()["detail"]
        assert c.post("/predict", json={"model": "pinned", "inputs": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200


def test_register_a_job_without_checkpoint_is_a_conflict(server: LiveServer) -> None:
    with server.client() as c:
        job = c.post("/jobs", json=iris_spec(epochs=2000)).json()
        response = c.post("/models", json={"name": "early", "job_id": job["id"]})
        c.post(f"/jobs/{job['id']}/cancel")
    # Either no checkpoint yet (409) or the first one already written (201): never a 500.
    assert response.status_code in (201, 409), response.text
