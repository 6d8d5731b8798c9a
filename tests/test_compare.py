"""GET /jobs/compare on a real server and worker: each job's curves (downsampled, filtered by name) and the spec
paths that differ between the jobs, in the order the ids were given; another tenant's job is not found."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, LiveServer

BASE: dict[str, Any] = {
    "name": "compare-a",
    "model": {"layers": [{"type": "Linear", "out_features": 16}, {"type": "ReLU"},
                         {"type": "Linear", "out_features": 3}]},
    "loss": {"type": "CrossEntropyLoss"},
    "optimizer": {"type": "Adam", "lr": 0.01},
    "training": {"epochs": 3, "batch_size": 16, "validation_split": 0.2, "seed": 0, "log_every_steps": 1},
    "data": {"source": "builtin", "name": "iris"},
}


def submit(c: httpx.Client, spec: dict[str, Any]) -> str:
    r = c.post("/jobs", json=spec)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def two_jobs(embedded_server: LiveServer) -> tuple[str, str]:
    """Two finished jobs whose specs differ in their name, optimizer.lr and the first layer's width."""
    other = copy.deepcopy(BASE)
    other["name"] = "compare-b"
    other["optimizer"]["lr"] = 0.05
    other["model"]["layers"][0]["out_features"] = 8
    with embedded_server.client() as c:
        a, b = submit(c, BASE), submit(c, other)
    for job_id in (a, b):
        assert embedded_server.wait_for_job(job_id)["status"] == "succeeded"
    return a, b


def compare(c: httpx.Client, ids: list[str], **params: Any) -> dict[str, Any]:
    r = c.get("/jobs/compare", params={"ids": ",".join(ids), **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_spec_diff_names_exactly_the_differing_paths_with_values_in_ids_order(embedded_server: LiveServer,
                                                                               two_jobs: tuple[str, str]) -> None:
    a, b = two_jobs
    with embedded_server.client() as c:
        forward, backward = compare(c, [a, b]), compare(c, [b, a])
    assert forward["spec_diff"] == {"name": ["compare-a", "compare-b"], "optimizer.lr": [0.01, 0.05],
                                    "model.layers[0].out_features": [16, 8]}
    assert backward["spec_diff"] == {path: values[::-1] for path, values in forward["spec_diff"].items()}
    assert [j["id"] for j in forward["jobs"]] == [a, b]
    assert [j["name"] for j in forward["jobs"]] == ["compare-a", "compare-b"]
    assert all(j["status"] == "succeeded" and j["best"] is not None for j in forward["jobs"])


def test_series_are_the_jobs_own_points_and_names_filter_them(embedded_server: LiveServer,
                                                              two_jobs: tuple[str, str]) -> None:
    a, b = two_jobs
    with embedded_server.client() as c:
        every = compare(c, [a, b], max_points=10_000)
        only = compare(c, [a, b], names="val_loss,val_accuracy")
        for job in every["jobs"]:
            full = c.get(f"/jobs/{job['id']}/metrics", params={"names": "train_loss"}).json()["points"]
            assert job["series"]["train_loss"] == [{"step": p["step"], "value": p["value"]} for p in full]
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(every["jobs"][0]["series"])
    assert every["jobs"][0]["series"]["train_loss"] != every["jobs"][1]["series"]["train_loss"]
    for job in only["jobs"]:
        assert set(job["series"]) == {"val_loss", "val_accuracy"}
        assert [p["step"] for p in job["series"]["val_loss"]] == sorted(p["step"] for p in job["series"]["val_loss"])


def test_max_points_bounds_each_series_keeping_its_ends(embedded_server: LiveServer,
                                                       two_jobs: tuple[str, str]) -> None:
    a, b = two_jobs
    with embedded_server.client() as c:
        full, small = compare(c, [a, b], max_points=10_000), compare(c, [a, b], max_points=5)
    for whole, cut in zip(full["jobs"], small["jobs"], strict=True):
        assert len(whole["series"]["train_loss"]) > 5  # 3 epochs of 6 steps, a point each step
        for name, points in cut["series"].items():
            assert 0 < len(points) <= 5, name
            assert points[0] == whole["series"][name][0] and points[-1] == whole["series"][name][-1]


def outsider_key(server: LiveServer) -> str:
    result = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "compare-outsider"],
                            cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_another_tenants_job_is_not_found(embedded_server: LiveServer, two_jobs: tuple[str, str]) -> None:
    a, b = two_jobs
    with embedded_server.client(api_key=outsider_key(embedded_server)) as intruder:
        r = intruder.get("/jobs/compare", params={"ids": f"{a},{b}"})
    assert r.status_code == 404, r.text
    assert "compare-a" not in r.text and "optimizer" not in r.text
    with embedded_server.client() as c:
        assert c.get("/jobs/compare", params={"ids": f"{a},no-such-job"}).status_code == 404


@pytest.mark.parametrize(("params", "loc"), [
    ({"ids": ""}, "ids"),
    ({"ids": " , ,"}, "ids"),
    ({"ids": ",".join(f"job{i}" for i in range(51))}, "ids"),
    ({}, "ids"),
    ({"ids": "x", "max_points": "0"}, "max_points"),
    ({"ids": "x", "max_points": "many"}, "max_points"),
])
def test_a_bad_id_list_is_refused_at_its_loc(embedded_server: LiveServer, params: dict[str, str], loc: str) -> None:
    with embedded_server.client() as c:
        r = c.get("/jobs/compare", params=params)
    assert 400 <= r.status_code < 500, r.text
    assert loc in [e["loc"] for e in r.json()["errors"]], r.json()
