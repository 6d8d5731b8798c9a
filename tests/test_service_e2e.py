"""End to end through HTTP, on each stack (SQLite + filesystem broker, PostgreSQL + Redis), with a real worker."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from service.seed_reference import seed_reference_losses
from service.nets import build_model
from service.spec import SEED_EXAMPLE, JobSpec
from tests.conftest import LiveServer

pytestmark = pytest.mark.timeout(240)


def submit(client: httpx.Client, spec: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/jobs", json=spec, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


def iris_spec(epochs: int = 30) -> dict[str, Any]:
    return {
        "name": "iris",
        "model": {"layers": [{"type": "Linear", "out_features": 16}, {"type": "ReLU"}, {"type": "Linear", "out_features": 3}]},
        "loss": {"type": "CrossEntropyLoss"},
        "optimizer": {"type": "Adam", "lr": 0.01},
        "training": {"epochs": epochs, "batch_size": 16, "validation_split": 0.2, "normalize": True, "seed": 1},
        "data": {"source": "builtin", "name": "iris"},
    }


def long_seed_spec(epochs: int) -> dict[str, Any]:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["name"] = "seed-long"
    spec["training"]["epochs"] = epochs
    # One step per epoch: checkpoint now and then, not every step.
    spec["training"]["checkpoint"] = {"every_epochs": max(1, epochs // 4)}
    return spec


def test_seed_example_trains_like_the_hand_written_loop(stack: LiveServer) -> None:
    with stack.client() as c:
        job = submit(c, SEED_EXAMPLE)
        assert job["status"] in ("queued", "running")
        assert job["report"]["total_params"] == 4225
        done = stack.wait_for_job(job["id"])
        assert done["status"] == "succeeded", done["error"]
        points = c.get(f"/jobs/{job['id']}/metrics", params={"names": "train_loss"}).json()["points"]
    assert [p["step"] for p in points] == list(range(1, 101))
    reference = seed_reference_losses()
    worst = max(abs(p["value"] - r) for p, r in zip(points, reference, strict=True))
    assert worst <= 1e-6, f"largest difference from the hand-written loop: {worst}"


def test_status_progress_and_timestamps(stack: LiveServer) -> None:
    with stack.client() as c:
        job = submit(c, long_seed_spec(1500))
        seen = {job["status"]}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            current = c.get(f"/jobs/{job['id']}").json()
            seen.add(current["status"])
            if current["status"] == "running" and current["progress"]["step"] > 0:
                assert 0 < current["progress"]["fraction"] <= 1
                assert current["started_at"] is not None and current["finished_at"] is None
            if current["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.05)
    assert current["status"] == "succeeded", current["error"]
    assert {"running", "succeeded"} <= seen
    assert current["progress"] == {**current["progress"], "step": 1500, "total_steps": 1500, "fraction": 1.0}
    assert current["created_at"] <= current["started_at"] <= current["finished_at"]
    assert current["attempts"] == 1
    assert current["best"] is not None and current["latest_checkpoint_id"] is not None
    assert set(current["last_metrics"]) >= {"train_loss", "lr"}


def test_a_spec_that_fails_at_run_time_ends_failed_with_a_readable_error(stack: LiveServer) -> None:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["optimizer"] = {"type": "SGD", "lr": 500.0}
    spec["data"] = {**spec["data"], "kind": "regression"}
    with stack.client() as c:
        job = submit(c, spec)
        assert any(w["loc"] == "optimizer.lr" for w in job["report"]["warnings"])
        done = stack.wait_for_job(job["id"])
    assert done["status"] == "failed"
    assert "step" in done["error"] and "learning rate" in done["error"], done["error"]


def test_metrics_filters_cursor_downsampling_and_csv(stack: LiveServer) -> None:
    spec = long_seed_spec(300)
    spec["training"]["validation_split"] = 0.25
    with stack.client() as c:
        job = stack.wait_for_job(submit(c, spec)["id"])
        assert job["status"] == "succeeded", job["error"]
        url = f"/jobs/{job['id']}/metrics"
        everything = c.get(url).json()["points"]
        names = {p["name"] for p in everything}
        assert {"train_loss", "lr", "val_loss", "val_mae", "val_r2", "epoch_time_s", "samples_per_s"} <= names

        only = c.get(url, params={"names": "val_loss,lr"}).json()["points"]
        assert {p["name"] for p in only} == {"val_loss", "lr"}
        assert len([p for p in only if p["name"] == "val_loss"]) == 300

        page = c.get(url, params={"names": "train_loss", "since_step": 250}).json()
        assert [p["step"] for p in page["points"]] == list(range(251, 301))
        assert page["last_step"] == 300
        assert c.get(url, params={"names": "train_loss", "since_step": 300}).json()["points"] == []

        sampled = c.get(url, params={"names": "train_loss", "max_points": 10}).json()["points"]
        assert len(sampled) == 10 and sampled[0]["step"] == 1 and sampled[-1]["step"] == 300

        response = c.get(url, params={"names": "train_loss", "format": "csv"})
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert len(rows) == 300 and rows[0].keys() == {"name", "step", "epoch", "value", "time"}
        by_step = {p["step"]: p["value"] for p in everything if p["name"] == "train_loss"}
        assert all(float(r["value"]) == by_step[int(r["step"])] for r in rows)


def test_stream_delivers_points_while_the_job_runs(stack: LiveServer) -> None:
    spec = long_seed_spec(2000)
    spec["training"]["validation_split"] = 0.25  # val_* points share their step with that epoch's train_loss
    with stack.client(timeout=120) as c:
        job = submit(c, spec)
        events: list[tuple[str, Any]] = []
        with c.stream("GET", f"/jobs/{job['id']}/metrics/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event or "message", json.loads(line[6:])))
                    if event == "end":
                        break
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end" and events[-1][1]["status"] == "succeeded"
    point_batches = [data for e, data in events if e == "points"]
    # Points arrived in several batches, and some before the job had finished.
    assert len(point_batches) >= 2
    first_points = kinds.index("points")
    statuses_before = [data["status"] for e, data in events[:first_points + 2] if e == "status"]
    assert "running" in statuses_before or "queued" in statuses_before
    streamed = [p for batch in point_batches for p in batch]
    steps = [p["step"] for p in streamed if p["name"] == "train_loss"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 2000
    stored: list[dict[str, Any]] = []
    with stack.client() as c:
        params: dict[str, Any] = {}
        while True:  # one read returns at most TRAINSERVE_MAX_METRIC_POINTS_PER_READ points: follow the cursor
            page = c.get(f"/jobs/{job['id']}/metrics", params=params).json()
            stored += page["points"]
            if page["next_since_step"] is None:
                break
            params = {"since_step": page["next_since_step"]}
    assert sorted((p["name"], p["step"]) for p in streamed) == sorted((p["name"], p["step"]) for p in stored)


def test_checkpoint_download_reproduces_predict(stack: LiveServer) -> None:
    with stack.client() as c:
        job = stack.wait_for_job(submit(c, SEED_EXAMPLE)["id"])
        assert job["status"] == "succeeded", job["error"]
        listing = c.get(f"/jobs/{job['id']}/checkpoints").json()["items"]
        assert listing and sum(i["is_latest"] for i in listing) == 1 and sum(i["is_best"] for i in listing) == 1
        response = c.get(f"/jobs/{job['id']}/checkpoints/latest")
        assert response.status_code == 200
        inputs = np.random.default_rng(0).normal(size=(5, 32)).round(4).tolist()
        served = c.post("/predict", json={"job_id": job["id"], "checkpoint": "latest", "inputs": inputs}).json()
    latest = next(i for i in listing if i["is_latest"])
    assert response.headers["x-checkpoint-sha256"] == latest["sha256"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(response.content)
        model = build_model(JobSpec.model_validate(SEED_EXAMPLE), (32,))
        model.load_state_dict(load_file(path))
    model.eval()
    with torch.no_grad():
        local = model(torch.tensor(inputs, dtype=torch.float32)).tolist()
    assert served["checkpoint_id"] == latest["id"]
    np.testing.assert_allclose(served["predictions"], local, rtol=1e-6, atol=1e-6)


def test_predict_caches_models_and_serves_classifiers(stack: LiveServer) -> None:
    with stack.client() as c:
        job = stack.wait_for_job(submit(c, iris_spec())["id"])
        assert job["status"] == "succeeded", job["error"]
        body = {"job_id": job["id"], "inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
        first = c.post("/predict", json=body)
        second = c.post("/predict", json=body)
    assert first.status_code == second.status_code == 200, first.text
    assert first.headers["x-model-cache"] == "miss" and second.headers["x-model-cache"] == "hit"
    out = second.json()
    assert out["classes"] == ["setosa", "versicolor", "virginica"]
    assert out["predictions"] == ["setosa", "virginica"]
    for row in out["probabilities"]:
        assert len(row) == 3 and math.isclose(sum(row), 1.0, rel_tol=1e-5)
    assert first.json() == out


@pytest.mark.parametrize(("inputs", "loc"), [
    ([], "inputs"),
    ([[1.0, 2.0, 3.0]], "inputs[0]"),
    ([[1.0, 2.0, "x", 4.0]], "inputs[0][2]"),
    ([[1.0, 2.0, 3.0, 4.0], [1.0, None, 3.0, 4.0]], "inputs[1][1]"),
    # Values numpy would quietly take for numbers: /predict's fast parse must leave them to the strict one.
    ([[1.0, True, 3.0, 4.0]], "inputs[0][1]"),
    ([[1.0, 2.0, 3.0, False]], "inputs[0][3]"),
    ([[1.0, 2.0, "3.0", 4.0]], "inputs[0][2]"),
])
def test_predict_rejects_bad_inputs_with_their_path(embedded_server: LiveServer, inputs: list[Any], loc: str) -> None:
    with embedded_server.client() as c:
        job = embedded_server.wait_for_job(submit(c, iris_spec(epochs=2))["id"])
        response = c.post("/predict", json={"job_id": job["id"], "inputs": inputs})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "validation_error" and body["errors"][0]["loc"] == loc


def test_predict_rejects_non_finite_numbers(embedded_server: LiveServer) -> None:
    with embedded_server.client() as c:
        job = embedded_server.wait_for_job(submit(c, iris_spec(epochs=2))["id"])
        raw = '{"job_id": "%s", "inputs": [[1.0, NaN, 1.0, Infinity]]}' % job["id"]
        response = c.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["errors"]] == ["inputs[0][1]", "inputs[0][3]"]


def test_predict_on_a_job_without_checkpoint_is_a_conflict(embedded_server: LiveServer) -> None:
    with embedded_server.client() as c:
        blocker = submit(c, long_seed_spec(10000))
        waiting = submit(c, SEED_EXAMPLE)  # one worker: this one waits in the queue behind the blocker
        response = c.post("/predict", json={"job_id": waiting["id"], "inputs": [[0.0] * 32]})
        assert c.post(f"/jobs/{waiting['id']}/cancel").json()["status"] == "cancelled"
        c.post(f"/jobs/{blocker['id']}/cancel")
        embedded_server.wait_for_job(blocker["id"])
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "conflict"


def _regression_frame(n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "price": 2 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2]})


def _dataset_spec(dataset_id: str) -> dict[str, Any]:
    return {
        "model": {"layers": [{"type": "Linear", "out_features": 16}, {"type": "ReLU"}, {"type": "Linear", "out_features": 1}]},
        "loss": {"type": "MSELoss"},
        "optimizer": {"type": "Adam", "lr": 0.01},
        "training": {"epochs": 40, "batch_size": 32, "validation_split": 0.2},
        "data": {"source": "dataset", "dataset_id": dataset_id},
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_upload_a_dataset_and_train_on_it(stack: LiveServer, fmt: str) -> None:
    frame = _regression_frame()
    buf = io.BytesIO()
    frame.to_csv(buf, index=False) if fmt == "csv" else frame.to_parquet(buf, index=False)
    with stack.client() as c:
        response = c.post("/datasets", files={"file": (f"houses.{fmt}", buf.getvalue())}, data={"target": "price"})
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert dataset["n_rows"] == 240 and dataset["format"] == fmt and dataset["target"] == ["price"]
        assert [col["name"] for col in dataset["columns"]] == ["a", "b", "c", "price"]
        assert c.get(f"/datasets/{dataset['id']}").json() == dataset
        assert dataset["id"] in [d["id"] for d in c.get("/datasets").json()["items"]]
        job = stack.wait_for_job(submit(c, _dataset_spec(dataset["id"]))["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["last_metrics"]["val_r2"] > 0.9


def test_malformed_and_oversize_uploads_are_refused(embedded_server: LiveServer) -> None:
    with embedded_server.client() as c:
        missing = c.post("/datasets", files={"file": ("d.csv", b"a,b\n1,2\n3,4\n")}, data={"target": "price"})
        garbage = c.post("/datasets", files={"file": ("d.parquet", b"PAR1 this is not parquet")}, data={"target": "y"})
        big = c.post("/datasets", files={"file": ("big.csv", b"a,y\n" + b"1.0,2.0\n" * 100_000)}, data={"target": "y"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["loc"] == "target"
    assert "price" in missing.json()["errors"][0]["msg"]
    assert garbage.status_code == 422 and garbage.json()["type"] == "validation_error"
    assert big.status_code == 413 and big.json()["type"] == "payload_too_large"


def test_static_check_refuses_before_anything_is_stored(embedded_server: LiveServer) -> None:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["model"]["layers"][2]["in_features"] = 99
    # A tenant of its own: on the shared server, other tests' jobs would hide a stored one past the first page.
    import subprocess
    import sys
    import uuid

    tenant = f"refused-{uuid.uuid4().hex[:8]}"
    created = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", tenant],
                             cwd=Path(__file__).resolve().parent.parent, env=embedded_server.env, capture_output=True,
                             text=True, check=True)
    with embedded_server.client(api_key=created.stdout.strip().splitlines()[-1]) as c:
        before = c.get("/jobs").json()["items"]
        response = c.post("/jobs", json=spec)
        report = c.post("/jobs/validate", json=spec).json()
        after = c.get("/jobs").json()["items"]
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == "model.layers[2].in_features"
    assert "99" in response.json()["errors"][0]["msg"] and "64" in response.json()["errors"][0]["msg"]
    assert report["ok"] is False and report["errors"][0]["loc"] == "model.layers[2].in_features"
    assert before == after == []


def test_structural_errors_name_their_json_path(embedded_server: LiveServer) -> None:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["model"]["layers"][1] = {"type": "Relu"}
    spec["training"]["epochs"] = -3
    with embedded_server.client() as c:
        body = c.post("/jobs", json=spec).json()
    locs = {e["loc"] for e in body["errors"]}
    assert {"model.layers[1]", "training.epochs"} <= locs, body
    assert "Relu" in body["detail"]


def test_text_with_a_nul_character_is_refused_by_its_path_where_the_database_cannot_store_it(
        stack: LiveServer) -> None:
    # PostgreSQL's text types cannot hold NUL (its driver refuses the value): that used to be a 500. SQLite stores it.
    on_postgres = stack.env.get("TRAINSERVE_DATABASE_URL", "").startswith("postgresql")
    with stack.client() as c:
        answers = {
            "name": c.post("/jobs", json={**copy.deepcopy(SEED_EXAMPLE), "name": "seed\x00"}),
            "job_id": c.get("/jobs/abc%00def"),
            "ids": c.get("/jobs/compare", params={"ids": "a\x00,b"}),
            "job_id (predict)": c.post("/predict", json={"job_id": "a\x00", "inputs": [[0.1] * 32]}),
        }
    for where, answer in answers.items():
        assert answer.status_code < 500, (where, answer.text)
        if on_postgres:
            assert answer.status_code == 422, (where, answer.text)
            assert [e["loc"] for e in answer.json()["errors"]] == [where.split(" ")[0]], answer.json()
            assert "NUL" in answer.json()["detail"], answer.json()
    if not on_postgres:
        assert answers["name"].status_code == 201 and answers["name"].json()["name"] == "seed\x00"
