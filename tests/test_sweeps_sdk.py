"""The SDK's client.sweeps and client.jobs.compare, and the CLI's sweep, sweeps and compare, against a real
server and worker. One tiny sweep (two iris trials of two epochs) serves every test, on a tenant of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trainserve as ts

from tests.conftest import ROOT, LiveServer

CLI = shutil.which("trainserve", path=str(Path(sys.executable).parent)) or "trainserve"

SPEC: dict[str, Any] = {
    "name": "sdk-sweep",
    "model": {"layers": [{"type": "Linear", "out_features": 8}, {"type": "ReLU"},
                         {"type": "Linear", "out_features": 3}]},
    "loss": {"type": "CrossEntropyLoss"},
    "optimizer": {"type": "Adam", "lr": 0.01},
    "training": {"epochs": 2, "batch_size": 16, "validation_split": 0.2, "seed": 0},
    "data": {"source": "builtin", "name": "iris"},
}
SPACE: dict[str, Any] = {"optimizer.lr": {"log_uniform": [0.001, 0.1]},
                         "model.layers[0].out_features": {"choice": [4, 8, 16]}}


@pytest.fixture(scope="module")
def key(embedded_server: LiveServer) -> str:
    result = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "sweeps-sdk"],
                            cwd=ROOT, env=embedded_server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def client(embedded_server: LiveServer, key: str) -> Iterator[ts.Client]:
    with ts.Client(embedded_server.url, key, backoff=0.05) as c:
        yield c


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sweep-files")
    (folder / "spec.json").write_text(json.dumps(SPEC))
    (folder / "space.json").write_text(json.dumps(SPACE))
    return folder / "spec.json", folder / "space.json"


@pytest.fixture(scope="module")
def finished(client: ts.Client, files: tuple[Path, Path]) -> ts.Sweep:
    """A sweep made from a spec file and a space file, followed to its end with the progress bar on."""
    spec_path, space_path = files
    created = client.sweeps.create(spec_path, space_path, method="random", trials=2, parallel=2, seed=3,
                                   objective="val_accuracy", mode="max", pruner="none", name="sdk-sweep")
    assert created.status == "running" and len(created.trials) == 2 and created.trials_total == 2
    return client.sweeps.wait(created.id, progress=True, poll_interval=0.2, timeout=180)


def test_sdk_creates_follows_and_reads_a_sweep(client: ts.Client, finished: ts.Sweep) -> None:
    assert finished.status == "succeeded" and finished.finished, finished
    assert finished.counts == {"succeeded": 2}
    assert [t.number for t in finished.trials] == [0, 1]
    assert all(t.status == "succeeded" and t.epochs == 2 and t.value is not None for t in finished.trials)
    assert finished.best is not None
    best = max(finished.trials, key=lambda t: t.value or 0.0)
    assert (finished.best.job_id, finished.best.value) == (best.job_id, best.value)
    again = client.sweeps.get(finished.id)
    assert again.spec is not None and again.spec["optimizer"]["lr"] == SPEC["optimizer"]["lr"]  # the base spec
    assert again.objective == {"metric": "val_accuracy", "mode": "max"}
    trial_job = client.jobs.get(best.job_id)
    assert trial_job.finished and trial_job.sweep_id == finished.id
    assert trial_job.trial is not None and trial_job.trial["params"] == best.params


def test_sdk_compares_two_trials_by_the_paths_the_space_changed(client: ts.Client, finished: ts.Sweep) -> None:
    a, b = finished.trials
    result = client.jobs.compare([a.job_id, b.job_id], names=["val_accuracy"], max_points=50)
    assert [j.id for j in result.jobs] == [a.job_id, b.job_id]
    assert all(set(j.series) == {"val_accuracy"} and len(j.series["val_accuracy"]) == 2 for j in result.jobs)
    for path in SPACE:
        if a.params[path] != b.params[path]:
            assert result.spec_diff[path] == [a.params[path], b.params[path]]
    assert set(result.spec_diff) <= {*SPACE, "name"}


def test_sdk_lists_by_cursor_refuses_bad_spaces_and_deletes(client: ts.Client, finished: ts.Sweep) -> None:
    with pytest.raises(ts.ValidationError) as refused:
        client.sweeps.create(SPEC, {"optimizer.lr": {"log_uniform": [0, 0.1]}})
    assert 'space["optimizer.lr"]' in [loc for loc, _ in refused.value.errors]
    one_trial = client.sweeps.create(SPEC, {"optimizer.lr": {"choice": [0.01]}}, method="grid", trials=1)
    listed = [s.id for s in client.sweeps.list(page_size=1)]  # one sweep a page: the cursor is followed
    assert listed == [one_trial.id, finished.id]
    assert client.sweeps.wait(one_trial.id, progress=False, poll_interval=0.2, timeout=180).status == "succeeded"
    with pytest.raises(ts.Conflict):
        client.sweeps.cancel(one_trial.id)
    client.sweeps.delete(one_trial.id)
    with pytest.raises(ts.NotFound):
        client.sweeps.get(one_trial.id)
    with pytest.raises(ts.NotFound):
        client.jobs.get(one_trial.trials[0].job_id)


def run_cli(server: LiveServer, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSERVE_")}
    env.update(COLUMNS="250", TRAINSERVE_URL=server.url, TRAINSERVE_API_KEY=key)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=240, check=False)


def test_cli_sweep_follow_show_list_and_compare(embedded_server: LiveServer, key: str, files: tuple[Path, Path],
                                                finished: ts.Sweep) -> None:
    spec_path, space_path = files
    run = run_cli(embedded_server, key, "sweep", str(spec_path), "--space", str(space_path), "--trials", "1",
                  "--seed", "5", "--objective", "val_loss", "--mode", "min", "--pruner", "asha", "--follow",
                  "--poll-interval", "0.2", "--json")
    assert run.returncode == 0, run.stderr
    swept = json.loads(run.stdout)
    assert swept["status"] == "succeeded" and swept["pruner"]["type"] == "asha" and len(swept["trials"]) == 1

    shown = run_cli(embedded_server, key, "sweeps", "show", finished.id)
    assert shown.returncode == 0, shown.stderr
    assert all(t.job_id in shown.stdout for t in finished.trials) and "model.layers[0].out_features" in shown.stdout
    listed = run_cli(embedded_server, key, "sweeps", "list", "--json")
    assert listed.returncode == 0 and {swept["id"], finished.id} <= {s["id"] for s in json.loads(listed.stdout)}

    a, b = (t.job_id for t in finished.trials)
    table = run_cli(embedded_server, key, "compare", a, b)
    assert table.returncode == 0, table.stderr
    assert "optimizer.lr" in table.stdout and "val_loss=" in table.stdout  # the differing path, the best values
    as_json = json.loads(run_cli(embedded_server, key, "compare", a, b, "--json").stdout)
    assert as_json["spec_diff"]["optimizer.lr"] == [t.params["optimizer.lr"] for t in finished.trials]

    bad = run_cli(embedded_server, key, "sweep", str(spec_path), "--space", str(space_path), "--trials", "100000")
    assert bad.returncode == 2 and "search.trials" in bad.stderr, bad.stderr
    assert run_cli(embedded_server, key, "sweeps", "show", "no-such-sweep").returncode == 3
