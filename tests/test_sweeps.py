"""Sweeps end to end on a real server and worker: what is refused before anything runs, trials as jobs,
reproducible proposals, pruning, cancel and delete. Tiny iris MLPs keep each trial to a second or so."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, LiveServer, start_server, stop_server


def iris_spec(epochs: int = 3, lr: float = 0.05) -> dict[str, Any]:
    return {
        "name": "iris-sweep",
        "model": {"layers": [{"type": "Linear", "out_features": 16}, {"type": "ReLU"},
                             {"type": "Linear", "out_features": 3}]},
        "loss": {"type": "CrossEntropyLoss"},
        "optimizer": {"type": "Adam", "lr": lr},
        "training": {"epochs": epochs, "batch_size": 16, "validation_split": 0.2, "seed": 0, "normalize": True},
        "data": {"source": "builtin", "name": "iris"},
    }


def sweep_body(space: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "iris-sweep", "spec": iris_spec(), "space": space, **extra}


def wait_sweep(c: httpx.Client, sweep_id: str, *, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
               timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    sweep: dict[str, Any] = {}
    while time.monotonic() < deadline:
        sweep = c.get(f"/sweeps/{sweep_id}").json()
        if sweep["status"] in statuses:
            return sweep
        time.sleep(0.3)
    raise AssertionError(f"sweep {sweep_id} still {sweep.get('status')} after {timeout}s: {sweep}")


def tenant_key(server: LiveServer, tenant: str) -> str:
    result = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", tenant],
                            cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def refusals_key(embedded_server: LiveServer) -> str:
    return tenant_key(embedded_server, "sweep-refusals")


BAD = [
    ({"optimizer.momentum_x": {"uniform": [0.1, 0.9]}}, {}, 'space["optimizer.momentum_x"]'),
    ({"model.layers[7].out_features": {"choice": [8]}}, {}, 'space["model.layers[7].out_features"]'),
    ({"model.layers[0].out_features": {"uniform": [4, 64]}}, {}, 'space["model.layers[0].out_features"]'),
    ({"model.layers[0].out_features": {"choice": []}}, {}, 'space["model.layers[0].out_features"]'),
    ({"optimizer.lr": {"uniform": [0.1, 0.01]}}, {}, 'space["optimizer.lr"]'),
    ({"optimizer.lr": {"log_uniform": [0, 0.1]}}, {}, 'space["optimizer.lr"]'),
    # The largest layer of the space is past the parameter cap: refused before any trial runs.
    ({"model.layers[0].out_features": {"int_uniform": [8, 100_000_000]}}, {}, 'space["model.layers[0].out_features"]'),
    ({"optimizer.lr": {"uniform": [0.01, 0.1]}}, {"search": {"trials": 100_000}}, "search.trials"),
    ({"optimizer.lr": {"uniform": [0.01, 0.1]}}, {"search": {"parallel": 1000}}, "search.parallel"),
    ({"optimizer.lr": {"uniform": [0.01, 0.1]}}, {"objective": {"metric": "val_r2", "mode": "max"}}, "objective.metric"),
]


@pytest.mark.parametrize(("space", "extra", "loc"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_a_bad_sweep_is_refused_at_its_loc_and_nothing_runs(embedded_server: LiveServer, refusals_key: str,
                                                             space: dict[str, Any], extra: dict[str, Any],
                                                             loc: str) -> None:
    # A tenant of its own, so no other test's sweep submitting trials meanwhile can change the counts.
    with embedded_server.client(api_key=refusals_key) as c:
        before_sweeps = len(c.get("/sweeps").json()["items"])
        before_jobs = len(c.get("/jobs", params={"limit": 200}).json()["items"])
        r = c.post("/sweeps", json=sweep_body(space, **extra))
        assert r.status_code == 422, r.text
        assert loc in [e["loc"] for e in r.json()["errors"]], r.json()
        assert len(c.get("/sweeps").json()["items"]) == before_sweeps
        assert len(c.get("/jobs", params={"limit": 200}).json()["items"]) == before_jobs


def test_val_metric_without_validation_data_is_refused(embedded_server: LiveServer) -> None:
    body = sweep_body({"optimizer.lr": {"uniform": [0.01, 0.1]}}, objective={"metric": "val_accuracy", "mode": "max"})
    body["spec"]["training"]["validation_split"] = 0.0
    with embedded_server.client() as c:
        r = c.post("/sweeps", json=body)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "objective.metric", r.text


def test_random_sweep_runs_every_trial_two_at_a_time_and_reports_the_best(embedded_server: LiveServer) -> None:
    body = sweep_body({"optimizer.lr": {"log_uniform": [0.001, 0.1]},
                       "model.layers[0].out_features": {"choice": [8, 16]}},
                      search={"method": "random", "trials": 3, "parallel": 2, "seed": 1},
                      objective={"metric": "val_accuracy", "mode": "max"})
    with embedded_server.client() as c:
        r = c.post("/sweeps", json=body)
        assert r.status_code == 201, r.text
        created = r.json()
        assert len(created["trials"]) == 2  # `parallel` trials submitted at once
        sweep = wait_sweep(c, created["id"])
        assert sweep["status"] == "succeeded", sweep
        assert [t["number"] for t in sweep["trials"]] == [0, 1, 2]
        assert sweep["counts"] == {"succeeded": 3}
        assert all(t["epochs"] == 3 and t["value"] is not None for t in sweep["trials"])
        best = max(sweep["trials"], key=lambda t: t["value"])
        assert sweep["best"] == {"job_id": best["job_id"], "params": best["params"], "value": best["value"]}
        listed = c.get("/jobs", params={"sweep_id": sweep["id"]}).json()["items"]
        assert {j["id"] for j in listed} == {t["job_id"] for t in sweep["trials"]}
        job = c.get(f"/jobs/{best['job_id']}").json()
        assert job["sweep_id"] == sweep["id"] and job["trial"]["params"] == best["params"]
        assert job["spec"]["optimizer"]["lr"] == best["params"]["optimizer.lr"]
        assert c.get("/sweeps").json()["items"][0]["id"] == sweep["id"]


def test_the_same_seed_proposes_the_same_trials_and_cancel_stops_them(embedded_server: LiveServer) -> None:
    body = sweep_body({"optimizer.lr": {"log_uniform": [0.001, 0.1]}, "training.batch_size": {"choice": [8, 16, 32]}},
                      search={"method": "tpe", "trials": 6, "parallel": 3, "seed": 42})
    # The epoch cap: no trial can end on its own before the cancel, however fast the machine trains.
    body["spec"]["training"]["epochs"] = 10_000
    with embedded_server.client() as c:
        a, b = (c.post("/sweeps", json=body).json() for _ in range(2))
        assert [t["params"] for t in a["trials"]] == [t["params"] for t in b["trials"]]
        assert len(a["trials"]) == 3
        body["search"]["seed"] = 43
        other = c.post("/sweeps", json=body).json()
        assert [t["params"] for t in other["trials"]] != [t["params"] for t in a["trials"]]
        for sweep in (a, b, other):
            cancelled = c.post(f"/sweeps/{sweep['id']}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        for sweep in (a, b, other):
            for trial in sweep["trials"]:
                assert embedded_server.wait_for_job(trial["job_id"], timeout=60)["status"] == "cancelled"
            final = c.get(f"/sweeps/{sweep['id']}").json()
            assert len(final["trials"]) == 3  # no new trial after a cancel
        assert c.post(f"/sweeps/{a['id']}/cancel").status_code == 409
        assert c.delete(f"/sweeps/{a['id']}").status_code == 204
        assert c.get(f"/sweeps/{a['id']}").status_code == 404
        assert c.get(f"/jobs/{a['trials'][0]['job_id']}").status_code == 404


def test_asha_prunes_a_clearly_worse_trial_at_its_first_rung_and_keeps_its_metrics(
        embedded_server: LiveServer) -> None:
    # Grid, one at a time: the seed makes trial 0 the good learning rate, trial 1 one that learns nothing. Iris
    # epochs take milliseconds and no checkpoint is due at epoch 1: the decision must not wait for a later write.
    body = sweep_body({"optimizer.lr": {"choice": [1e-6, 0.05]}},
                      search={"method": "grid", "trials": 2, "parallel": 1, "seed": 0},
                      objective={"metric": "val_loss", "mode": "min"},
                      pruner={"type": "asha", "min_epochs": 1, "reduction_factor": 3})
    body["spec"]["training"]["epochs"] = 6
    with embedded_server.client() as c:
        r = c.post("/sweeps", json=body)
        assert r.status_code == 201, r.text
        sweep = wait_sweep(c, r.json()["id"])
        good, bad = sweep["trials"]
        assert good["params"] == {"optimizer.lr": 0.05} and good["status"] == "succeeded", sweep
        # Pruned at the first rung (epoch 1: the worse of two), before epoch 2 trained.
        assert bad["status"] == "pruned" and bad["epochs"] == 1, bad
        assert sweep["best"]["job_id"] == good["job_id"]
        points = c.get(f"/jobs/{bad['job_id']}/metrics", params={"names": "val_loss"}).json()["points"]
        assert [p["epoch"] for p in points] == [1]


def other_key(server: LiveServer) -> str:
    return tenant_key(server, "sweep-outsider")


def test_another_tenants_sweep_is_not_found(embedded_server: LiveServer) -> None:
    body = sweep_body({"optimizer.lr": {"log_uniform": [0.001, 0.1]}}, search={"trials": 1})
    with embedded_server.client() as c:
        sweep = c.post("/sweeps", json=body).json()
        with embedded_server.client(api_key=other_key(embedded_server)) as intruder:
            assert intruder.get(f"/sweeps/{sweep['id']}").status_code == 404
            assert intruder.post(f"/sweeps/{sweep['id']}/cancel").status_code == 404
            assert intruder.delete(f"/sweeps/{sweep['id']}").status_code == 404
        wait_sweep(c, sweep["id"])
        assert c.delete(f"/sweeps/{sweep['id']}").status_code == 204


def stored_sweep(home: Path, sweep_id: str) -> tuple[str, int]:
    """(status, trials submitted) as the stopped server left them in its SQLite database."""
    with sqlite3.connect(home / "trainserve.db") as db:
        (status,) = db.execute("SELECT status FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        (submitted,) = db.execute("SELECT count(*) FROM jobs WHERE sweep_id = ?", (sweep_id,)).fetchone()
    return str(status), int(submitted)


@pytest.mark.timeout(600)
def test_a_sweep_goes_on_across_a_restart_and_its_seed_fixes_every_trial(tmp_path: Path) -> None:
    home = tmp_path / "home"
    body = sweep_body({"optimizer.lr": {"log_uniform": [0.001, 0.1]},
                       "model.layers[0].out_features": {"int_uniform": [4, 32]}},
                      search={"method": "random", "trials": 4, "parallel": 1, "seed": 7},
                      objective={"metric": "val_accuracy", "mode": "max"})
    body["spec"]["training"]["epochs"] = 5
    server = start_server(home)
    try:
        with server.client() as c:
            created = c.post("/sweeps", json=body)
            assert created.status_code == 201, created.text
            sweep_id = created.json()["id"]
    finally:
        # API and worker both stop; a trial in training is handed back to the queue.
        stop_server(server.proc)
    status, submitted = stored_sweep(home, sweep_id)
    # One trial at a time, and the worker takes no new task once stopping: trials were left to ask for.
    assert status == "running" and submitted < 4, (status, submitted)

    server = start_server(home)
    try:
        with server.client() as c:
            sweep = wait_sweep(c, sweep_id, timeout=300)
            assert sweep["status"] == "succeeded", sweep
            assert [t["number"] for t in sweep["trials"]] == [0, 1, 2, 3]
            assert sweep["counts"] == {"succeeded": 4}
            assert all(t["epochs"] == 5 and t["value"] is not None for t in sweep["trials"])
            # The same sweep again, uninterrupted: random search with the same seed proposes the same trials.
            again = c.post("/sweeps", json=body)
            assert again.status_code == 201, again.text
            replay = wait_sweep(c, again.json()["id"], timeout=300)
        assert [t["params"] for t in replay["trials"]] == [t["params"] for t in sweep["trials"]]
        assert len({t["params"]["optimizer.lr"] for t in sweep["trials"]}) == 4
    finally:
        stop_server(server.proc)
