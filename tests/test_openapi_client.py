"""A client generated from the live /openapi.json (openapi-python-client, as users generate theirs) drives the
seed walkthrough alone: typed fields, the bearer scheme, documented errors, the stream and the download."""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, LiveServer

pytestmark = pytest.mark.timeout(300)

PACKAGE = "trainserve_generated"


@pytest.fixture(scope="module")
def generated(embedded_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    folder = tmp_path_factory.mktemp("generated")
    document = folder / "openapi.json"
    document.write_text(json.dumps(httpx.get(f"{embedded_server.url}/openapi.json").json()))
    tool = Path(sys.executable).parent / "openapi-python-client"
    result = subprocess.run([str(tool), "generate", "--path", str(document), "--meta", "none",
                             "--output-path", str(folder / PACKAGE)], cwd=folder, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))


def load(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_the_seed_walkthrough_through_a_generated_client(embedded_server: LiveServer, generated: ModuleType) -> None:
    models = load("models")
    create_job, get_job = load("api.jobs.create_job"), load("api.jobs.get_job")
    seed = json.loads((ROOT / "examples" / "seed_mlp.json").read_text())
    with generated.AuthenticatedClient(base_url=embedded_server.url, token=embedded_server.api_key,
                                       raise_on_unexpected_status=True, timeout=httpx.Timeout(60)) as client:
        spec = models.JobSpec.from_dict(seed)
        created = create_job.sync_detailed(client=client, body=spec, idempotency_key="generated-seed")
        assert created.status_code == 201 and isinstance(created.parsed, models.JobRead)
        job = created.parsed
        assert isinstance(job.status, models.JobStatus) and isinstance(job.created_at, datetime)
        replay = create_job.sync_detailed(client=client, body=spec, idempotency_key="generated-seed")
        assert replay.status_code == 200 and replay.parsed.id == job.id  # documented, so parsed, not raised

        deadline = time.monotonic() + 180
        while job.status not in (models.JobStatus.SUCCEEDED, models.JobStatus.FAILED, models.JobStatus.CANCELLED):
            assert time.monotonic() < deadline, embedded_server.log_tail()
            time.sleep(0.3)
            job = get_job.sync(client=client, job_id=job.id)
        assert job.status == models.JobStatus.SUCCEEDED, job.error
        assert isinstance(job.finished_at, datetime) and isinstance(job.progress, models.Progress)
        assert isinstance(job.best, models.BestCheckpoint)

        page = load("api.metrics.get_metrics").sync(client=client, job_id=job.id)
        assert isinstance(page, models.MetricsPage) and page.points
        assert isinstance(page.points[0].time, datetime) and isinstance(page.points[0].step, int)
        stream = load("api.metrics.stream_metrics").sync_detailed(client=client, job_id=job.id)
        assert stream.status_code == 200 and b"event: end" in stream.content

        checkpoints = load("api.checkpoints.list_checkpoints").sync(client=client, job_id=job.id)
        assert isinstance(checkpoints, models.CheckpointList) and checkpoints.items
        best = next(c for c in checkpoints.items if c.is_best)
        assert isinstance(best.created_at, datetime)
        weights = load("api.checkpoints.download_checkpoint").sync(client=client, job_id=job.id, ckpt="best")
        assert hashlib.sha256(weights.payload.read()).hexdigest() == best.sha256

        body = models.PredictRequest.from_dict({"job_id": job.id, "inputs": [[0.1] * 32, [0.2] * 32]})
        answer = load("api.predict.predict").sync(client=client, body=body)
        assert isinstance(answer, models.PredictResponse) and len(answer.predictions) == 2

        missing = get_job.sync_detailed(client=client, job_id="no-such-job")
        assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorBody)
        assert missing.parsed.type_ == "not_found" and missing.parsed.detail

    with generated.Client(base_url=embedded_server.url) as anonymous:
        refused = get_job.sync_detailed(client=anonymous, job_id=job.id)  # type: ignore[arg-type]
        assert refused.status_code == 401 and refused.parsed.type_ == "unauthorized"
