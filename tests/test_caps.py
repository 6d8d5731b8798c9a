"""Metric reads are bounded and resumable; non-finite metric values never fail a job and are served as null.

Both against live servers with a real worker: SQLite + the embedded broker, and PostgreSQL + Redis.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import trainserve as ts
from service.cli import ensure_default_key
from service.settings import Settings
from tests.conftest import LiveServer, start_server, stop_server


def _constant_target_job(name: str) -> dict[str, Any]:
    """A regressor whose validation target is constant: val_r2 = 1 - ss_res / ss_tot with ss_tot = 0, so -inf."""
    return {
        "name": name,
        "model": {"layers": [{"type": "Linear", "in_features": 2, "out_features": 1}]},
        "loss": {"type": "MSELoss"},
        "optimizer": {"type": "SGD", "lr": 1e-9},  # outputs stay far from the target: ss_res is large
        "training": {"epochs": 2, "batch_size": 8, "seed": 0, "validation_split": 0.25, "log_every_steps": 1},
        "data": {"source": "inline", "x": [[float(i), 1.0] for i in range(16)], "y": [1000.0] * 16},
    }


def test_a_non_finite_metric_never_fails_the_job_and_is_served_as_null(stack: LiveServer) -> None:
    with stack.client() as client:
        answer = client.post("/jobs", json=_constant_target_job("constant-target"))
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
        job = stack.wait_for_job(job_id)
        assert job["status"] == "succeeded", job["error"]
        assert job["last_metrics"]["val_r2"] is None

        page = client.get(f"/jobs/{job_id}/metrics", params={"names": "val_r2"}).json()
        assert [p["value"] for p in page["points"]] == [None, None]  # one per epoch, -inf both times

        rows = list(csv.DictReader(io.StringIO(client.get(f"/jobs/{job_id}/metrics",
                                                          params={"format": "csv", "names": "val_r2"}).text)))
        assert [r["value"] for r in rows] == ["", ""]

        # The stream carries the same points as valid JSON (no -Infinity token).
        streamed: list[dict[str, Any]] = []
        with client.stream("GET", f"/jobs/{job_id}/metrics/stream", params={"names": "val_r2"}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: ["):
                    streamed += json.loads(line[len("data: "):], parse_constant=_no_constants)
        assert [p["value"] for p in streamed] == [None, None]


def _no_constants(token: str) -> Any:
    raise AssertionError(f"invalid JSON constant {token} in the stream")


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("capped") / "home",
                          env_extra={"TRAINSERVE_MAX_METRIC_POINTS_PER_READ": "7"})
    yield server
    stop_server(server.proc)


def test_a_metrics_read_is_bounded_and_the_sdk_reads_on_to_the_end(capped_server: LiveServer) -> None:
    spec = {**_constant_target_job("paged"), "data": {"source": "synthetic", "kind": "randn", "n_samples": 64,
                                                       "n_features": 2, "n_targets": 1}}
    spec["training"] = {**spec["training"], "epochs": 3, "batch_size": 4}  # 36 train_loss points + eval points
    with capped_server.client() as client:
        job_id = client.post("/jobs", json=spec).json()["id"]
        assert capped_server.wait_for_job(job_id)["status"] == "succeeded"
        pages: list[dict[str, Any]] = []
        since: int | None = None
        while True:
            page = client.get(f"/jobs/{job_id}/metrics", params={} if since is None else {"since_step": since}).json()
            pages.append(page)
            assert len(page["points"]) <= 7 + 4  # the cap, plus the rest of the step it stopped in
            since = page["next_since_step"]
            if since is None:
                break
        read = [(p["name"], p["step"]) for page in pages for p in page["points"]]
        everything = client.get(f"/jobs/{job_id}/metrics", params={"max_points": 100_000}).json()["points"]
    assert len(pages) > 3
    assert sorted(read) == sorted((p["name"], p["step"]) for p in everything)  # nothing skipped or repeated
    with ts.Client(url=capped_server.url, api_key=capped_server.api_key) as sdk:
        points = sdk.jobs.metrics(job_id)
    assert [(p.name, p.step) for p in points] == sorted(read)


def test_the_api_key_file_is_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key file is created 0600: no moment exists in which it holds the key with group/other bits set."""
    from service import db
    from service.migrate import migrate_to_head

    key_path = tmp_path / "api-key"
    modes_before_chmod: list[int] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        # Python has no way to remove an audit hook: it only ever looks at this test's key file.
        if event == "os.chmod" and str(args[0]) == str(key_path) and key_path.exists():
            modes_before_chmod.append(stat.S_IMODE(key_path.stat().st_mode))

    sys.addaudithook(hook)
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'keys.db'}")
    migrate_to_head(settings.database_url)
    db.configure(settings)
    old_umask = os.umask(0o022)
    try:
        ensure_default_key(settings)
    finally:
        os.umask(old_umask)
        db.reset()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_text().startswith("ts_")
    assert modes_before_chmod and all(mode & 0o077 == 0 for mode in modes_before_chmod), modes_before_chmod
