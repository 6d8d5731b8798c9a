"""Warm start end to end on a live server and worker: a fine-tune continues from its source, mismatches are
422s naming the layer and both shapes, `strict: false` loads what fits, `freeze` holds weights bit for bit,
the same source, spec and seed give the same weights, and another tenant's source is not found."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import safetensors.torch
import torch

from tests.conftest import ROOT, LiveServer


def spec(*, epochs: int = 30, lr: float = 0.01, out: int = 1, seed: int = 0, val: float = 0.0,
         init_from: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "warm",
        "model": {"layers": [{"type": "Linear", "out_features": 16}, {"type": "ReLU"},
                             {"type": "Linear", "out_features": out}]},
        "loss": {"type": "MSELoss"},
        "optimizer": {"type": "Adam", "lr": lr},
        "training": {"epochs": epochs, "batch_size": 32, "seed": seed, "normalize": True, "log_every_steps": 1,
                     "validation_split": val,
                     "checkpoint": {"every_epochs": 1000}},
        "data": {"source": "synthetic", "kind": "regression", "n_samples": 256, "n_features": 6, "n_targets": out,
                 "noise": 0.1, "seed": 7},
    }
    if init_from is not None:
        body["init_from"] = init_from
    return body


def submit(server: LiveServer, body: dict[str, Any], key: str | None = None) -> Any:
    with server.client(api_key=key) as c:
        return c.post("/jobs", json=body)


def run(server: LiveServer, body: dict[str, Any]) -> dict[str, Any]:
    response = submit(server, body)
    assert response.status_code == 201, response.text
    job = server.wait_for_job(response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def losses(server: LiveServer, job_id: str) -> list[float]:
    with server.client() as c:
        points = c.get(f"/jobs/{job_id}/metrics", params={"names": "train_loss"}).json()["points"]
    return [p["value"] for p in sorted(points, key=lambda p: p["step"])]


def weights(server: LiveServer, job_id: str, ckpt: str = "latest") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with server.client() as c:
        response = c.get(f"/jobs/{job_id}/checkpoints/{ckpt}")
        assert response.status_code == 200, response.text
    raw = response.content
    header_len = int.from_bytes(raw[:8], "little")
    meta = json.loads(json.loads(raw[8 : 8 + header_len])["__metadata__"]["trainserve"])
    return safetensors.torch.load(raw), meta


@pytest.fixture(scope="module")
def source(embedded_server: LiveServer) -> dict[str, Any]:
    return run(embedded_server, spec())


def test_a_fine_tune_continues_from_its_source(embedded_server: LiveServer, source: dict[str, Any]) -> None:
    # Trained on a 75 % split of the data: its own statistics would differ, the source's are used.
    warm = run(embedded_server, spec(epochs=2, lr=0.001, val=0.25,
                                     init_from={"job_id": source["id"], "checkpoint": "latest"}))
    cold = run(embedded_server, spec(epochs=2, lr=0.001, val=0.25))
    source_last, warm_first, cold_first = losses(embedded_server, source["id"])[-1], \
        losses(embedded_server, warm["id"])[0], losses(embedded_server, cold["id"])[0]
    assert warm_first < cold_first / 10, (warm_first, cold_first)
    assert warm_first < source_last * 3 + 1.0, (warm_first, source_last)
    assert warm["report"]["init_from"]["job_id"] == source["id"]
    assert warm["report"]["init_from"]["checkpoint_id"] == source["latest_checkpoint_id"]
    assert warm["report"]["init_from"]["normalization"] == "source"
    # Its checkpoints carry the source's input statistics, so /predict reads raw inputs as the source did.
    _, source_meta = weights(embedded_server, source["id"])
    _, warm_meta = weights(embedded_server, warm["id"])
    assert warm_meta["mean"] == source_meta["mean"] and warm_meta["std"] == source_meta["std"]


def test_a_shape_mismatch_is_a_422_naming_the_layer_and_both_shapes(embedded_server: LiveServer,
                                                                     source: dict[str, Any]) -> None:
    response = submit(embedded_server, spec(out=3, init_from={"job_id": source["id"]}))
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert {"loc": "init_from", "msg": "model.layers[2].weight is [1, 16] in the checkpoint, [3, 16] here"} in errors
    assert {"loc": "init_from", "msg": "model.layers[2].bias is [1] in the checkpoint, [3] here"} in errors


def test_strict_false_loads_what_fits_and_freeze_holds_weights_bit_for_bit(embedded_server: LiveServer,
                                                                           source: dict[str, Any]) -> None:
    job = run(embedded_server, spec(out=3, epochs=3, init_from={"job_id": source["id"], "checkpoint": "latest",
                                                                "strict": False, "freeze": [0]}))
    report = job["report"]["init_from"]
    assert report["loaded"] == ["model.layers[0].weight", "model.layers[0].bias"]
    assert [s["tensor"] for s in report["skipped"]] == ["model.layers[2].weight", "model.layers[2].bias"]
    assert report["frozen"] == [0]
    before, _ = weights(embedded_server, source["id"], source["latest_checkpoint_id"])
    after, _ = weights(embedded_server, job["id"])
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["0.bias"], before["0.bias"])
    assert after["2.weight"].shape == (3, 16)


def test_freeze_needs_a_layer_with_parameters(embedded_server: LiveServer, source: dict[str, Any]) -> None:
    response = submit(embedded_server, spec(init_from={"job_id": source["id"], "freeze": [1, 9]}))
    assert response.status_code == 422, response.text
    locs = {e["loc"]: e["msg"] for e in response.json()["errors"]}
    assert "has no parameters" in locs["init_from.freeze[0]"] and "does not exist" in locs["init_from.freeze[1]"]


def test_same_source_spec_and_seed_give_the_same_weights_also_by_model_alias(
        embedded_server: LiveServer, source: dict[str, Any]) -> None:
    with embedded_server.client() as c:
        version = c.post("/models", json={"name": "warm-src", "job_id": source["id"], "checkpoint": "latest"})
        assert version.status_code == 201, version.text
        assert c.put("/models/warm-src/aliases/prod", json={"version": version.json()["version"]}).status_code == 200
    by_id = {"job_id": source["id"], "checkpoint": "latest", "optimizer_state": True}
    a = run(embedded_server, spec(epochs=3, lr=0.002, init_from=by_id))
    b = run(embedded_server, spec(epochs=3, lr=0.002, init_from=by_id))
    c_ = run(embedded_server, spec(epochs=3, lr=0.002, init_from={"model": "warm-src@prod", "optimizer_state": True}))
    assert c_["report"]["init_from"]["model"] == "warm-src@prod"
    assert c_["report"]["init_from"]["checkpoint_id"] == source["latest_checkpoint_id"]
    wa, wb, wc = (weights(embedded_server, j["id"])[0] for j in (a, b, c_))
    assert all(torch.equal(wa[k], wb[k]) and torch.equal(wa[k], wc[k]) for k in wa)


def test_optimizer_state_needs_the_same_optimizer(embedded_server: LiveServer, source: dict[str, Any]) -> None:
    body = spec(init_from={"job_id": source["id"], "checkpoint": "latest", "optimizer_state": True})
    body["optimizer"] = {"type": "SGD", "lr": 0.01}
    response = submit(embedded_server, body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == "init_from.optimizer_state"


def test_another_tenants_or_a_missing_source_is_not_found(embedded_server: LiveServer,
                                                          source: dict[str, Any]) -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "warm-intruder"],
                            cwd=ROOT, env=embedded_server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    intruder = result.stdout.strip()
    for body, key in [(spec(init_from={"job_id": source["id"]}), intruder),
                      (spec(init_from={"model": "warm-src@prod"}), intruder),
                      (spec(init_from={"job_id": "0" * 32}), None)]:
        response = submit(embedded_server, body, key)
        assert response.status_code == 422, response.text
        (error,) = response.json()["errors"]
        assert error["loc"] == "init_from" and "not found" in error["msg"], error
    both = submit(embedded_server, spec(init_from={"job_id": source["id"], "model": "warm-src"}))
    assert both.status_code == 422 and both.json()["errors"][0]["loc"] == "init_from"
