"""The `trainserve` console script: exit codes scripts can trust, paths in validation errors, --json output."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from trainserve.cli import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_OK, EXIT_SERVER, EXIT_USAGE, read_inputs

from service.spec import SEED_EXAMPLE
from tests.conftest import LiveServer

CLI = shutil.which("trainserve", path=str(Path(sys.executable).parent)) or "trainserve"


def run_cli(*args: str, server: LiveServer | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSERVE_")}
    env["COLUMNS"] = "200"  # keep rich tables on one line per row, so paths are not wrapped
    if server is not None:
        env["TRAINSERVE_URL"] = server.url
        env["TRAINSERVE_API_KEY"] = server.api_key
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def write_spec(tmp_path: Path, spec: dict[str, Any], name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


def bad_spec() -> dict[str, Any]:
    spec = json.loads(json.dumps(SEED_EXAMPLE))
    spec["model"]["layers"][2]["in_features"] = 16
    return spec


# --- no server needed ---------------------------------------------------------------------------------


def test_predict_inputs_read_from_json_or_csv_rows(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text("[[1, 2], [3, 4]]")
    (tmp_path / "wrapped.json").write_text('{"inputs": [[1, 2]]}')
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n3.5,4\n")
    assert read_inputs(tmp_path / "rows.json") == [[1, 2], [3, 4]]
    assert read_inputs(tmp_path / "wrapped.json") == [[1, 2]]
    assert read_inputs(tmp_path / "rows.csv") == [[1.0, 2.0], [3.5, 4.0]]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\nx,4\n")
    with pytest.raises(ValueError, match="row 3"):
        read_inputs(tmp_path / "bad.csv")


def test_unreachable_server_exits_5_and_a_missing_file_exits_2(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    down = run_cli("--url", f"http://127.0.0.1:{port}", "--retries", "0", "jobs", "list")
    assert down.returncode == EXIT_SERVER and "cannot reach" in down.stderr
    missing = run_cli("--url", f"http://127.0.0.1:{port}", "validate", str(tmp_path / "nope.json"))
    assert missing.returncode == EXIT_USAGE


# --- against the live server --------------------------------------------------------------------------


def test_validate_prints_the_layer_table_and_the_path_of_each_error(tmp_path: Path, embedded_server: LiveServer) -> None:
    good = run_cli("validate", str(write_spec(tmp_path, SEED_EXAMPLE)), server=embedded_server)
    assert good.returncode == EXIT_OK, good.stderr
    assert "Linear" in good.stdout and "(64)" in good.stdout and "2,112" in good.stdout

    bad = run_cli("validate", str(write_spec(tmp_path, bad_spec())), server=embedded_server)
    assert bad.returncode == EXIT_USAGE
    assert "model.layers[2].in_features" in bad.stdout

    as_json = run_cli("validate", "--json", str(write_spec(tmp_path, bad_spec())), server=embedded_server)
    assert as_json.returncode == EXIT_USAGE
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and any(e["loc"] == "model.layers[2].in_features" for e in report["errors"])

    # submit of the same spec is refused by the server with the same path.
    refused = run_cli("submit", str(write_spec(tmp_path, bad_spec())), server=embedded_server)
    assert refused.returncode == EXIT_USAGE and "model.layers[2].in_features" in refused.stderr


def test_not_found_and_bad_key_have_their_own_exit_codes(embedded_server: LiveServer) -> None:
    missing = run_cli("jobs", "show", "no-such-job", server=embedded_server)
    assert missing.returncode == EXIT_NOT_FOUND and "NotFound" in missing.stderr
    denied = run_cli("--api-key", "wrong", "jobs", "list", server=embedded_server)
    assert denied.returncode == EXIT_AUTH


def test_submit_follow_ends_with_the_final_status_then_the_job_is_scriptable(
    tmp_path: Path, embedded_server: LiveServer
) -> None:
    spec = json.loads(json.dumps(SEED_EXAMPLE))
    spec["name"] = "cli-follow"
    spec["training"]["epochs"] = 20
    followed = run_cli("submit", "--follow", "--poll-interval", "0.2", str(write_spec(tmp_path, spec)),
                       server=embedded_server)
    assert followed.returncode == EXIT_OK, followed.stderr
    last = followed.stdout.strip().splitlines()[-1]
    assert "succeeded" in last
    job_id = last.split()[1]

    listed = run_cli("jobs", "list", "--json", "--limit", "0", server=embedded_server)
    assert listed.returncode == EXIT_OK
    jobs = json.loads(listed.stdout)
    assert job_id in [job["id"] for job in jobs]

    csv_out = run_cli("metrics", job_id, "--csv", "--names", "train_loss", server=embedded_server)
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0] == "name,step,epoch,value,time" and len(lines) == 21

    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(f"x{i}" for i in range(32)) + "\n" + ",".join(["0.1"] * 32) + "\n")
    predicted = run_cli("predict", job_id, "--inputs", str(rows), "--json", server=embedded_server)
    assert predicted.returncode == EXIT_OK, predicted.stderr
    assert len(json.loads(predicted.stdout)["predictions"]) == 1

    target = tmp_path / "w.safetensors"
    downloaded = run_cli("checkpoints", "download", job_id, "latest", "-o", str(target), server=embedded_server)
    assert downloaded.returncode == EXIT_OK and target.stat().st_size > 0

    cancelled_twice = run_cli("jobs", "cancel", job_id, server=embedded_server)
    assert cancelled_twice.returncode == 1 and "Conflict" in cancelled_twice.stderr
    assert run_cli("jobs", "delete", job_id, server=embedded_server).returncode == EXIT_OK
    assert run_cli("jobs", "show", job_id, server=embedded_server).returncode == EXIT_NOT_FOUND


def test_datasets_upload_names_the_target(tmp_path: Path, embedded_server: LiveServer) -> None:
    data = tmp_path / "houses.csv"
    data.write_text("rooms,area,price\n" + "".join(f"{i % 5 + 1},{50 + i},{100 + 3 * i}\n" for i in range(40)))
    uploaded = run_cli("datasets", "upload", str(data), "--target", "price", "--json", server=embedded_server)
    assert uploaded.returncode == EXIT_OK, uploaded.stderr
    body = json.loads(uploaded.stdout)
    assert body["target"] == ["price"] and body["n_rows"] == 40
    listed = run_cli("datasets", "list", "--json", server=embedded_server)
    assert body["id"] in [d["id"] for d in json.loads(listed.stdout)]


def test_workers_lists_the_live_worker_with_its_queue(embedded_server: LiveServer) -> None:
    with embedded_server.client() as http:  # the worker registers once it has started, a few seconds after the API
        deadline = time.monotonic() + 90
        while not http.get("/workers").json()["items"] and time.monotonic() < deadline:
            time.sleep(0.5)
    listed = run_cli("workers", "--json", server=embedded_server)
    assert listed.returncode == EXIT_OK, listed.stderr
    workers = json.loads(listed.stdout)
    assert len(workers) == 1  # `up` runs one worker, on the gpu queue too where this host has CUDA
    import torch  # what the server's worker sees: it runs on this host with this environment

    if torch.cuda.is_available():
        assert workers[0]["queues"] == ["gpu", "cpu"] and workers[0]["device"].startswith("cuda: ")
    else:
        assert workers[0]["queues"] == ["cpu"] and workers[0]["device"] == "cpu"
    table = run_cli("workers", server=embedded_server)
    assert workers[0]["name"] in table.stdout
