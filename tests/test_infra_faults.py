"""A job the service accepted finishes exactly once whatever the infrastructure does: a broker that restarts
empty, a database that goes away for a minute. Each test starts its own Redis or PostgreSQL on a port of its
own and stops only that one."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from service.spec import SEED_EXAMPLE
from tests.conftest import free_port, require_service, start_server, stop_server
from tests.throwaway import PostgresProcess, RedisProcess, pg_bin

pytestmark = pytest.mark.timeout(600)

FAST_LEASES = {
    "TRAINSERVE_LEASE_SECONDS": "6",
    "TRAINSERVE_HEARTBEAT_SECONDS": "0.5",
    "TRAINSERVE_REAPER_INTERVAL_SECONDS": "0.5",
}


def _missing(what: str) -> None:
    raise FileNotFoundError(f"{what} is not installed")


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    require_service("redis-server (to restart a broker)", lambda: shutil.which("redis-server") or _missing("redis"))
    redis = RedisProcess(free_port(), tmp_path)
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def postgres_process() -> Iterator[PostgresProcess]:
    require_service("PostgreSQL server binaries (initdb, pg_ctl)", lambda: pg_bin("pg_ctl"))
    pg = PostgresProcess()
    pg.start()
    yield pg
    pg.remove()


def _never_ending(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"layers": [{"type": "Linear", "out_features": 1}]},
        "loss": {"type": "MSELoss"}, "optimizer": {"type": "SGD", "lr": 0.01},
        "training": {"max_steps": 5_000_000, "batch_size": 8, "log_every_steps": 50,
                     "checkpoint": {"every_epochs": 100_000}},
        "data": {"source": "synthetic", "kind": "regression", "n_samples": 64, "n_features": 2},
    }


def _wait_for(client: httpx.Client, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}")
        if response.status_code == 200:
            job = response.json()
            if job["status"] in statuses:
                return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout} s: {job}")


def test_queued_jobs_whose_messages_a_broker_restart_lost_still_run_once(tmp_path: Path,
                                                                         redis_process: RedisProcess) -> None:
    server = start_server(tmp_path / "home", env_extra={"TRAINSERVE_BROKER_URL": redis_process.url, **FAST_LEASES})
    try:
        with server.client() as c:
            busy = c.post("/jobs", json=_never_ending("busy")).json()
            _wait_for(c, busy["id"], {"running"}, timeout=120)
            queued = [c.post("/jobs", json={**SEED_EXAMPLE, "name": f"queued-{i}"}).json() for i in range(3)]
            assert all(job["status"] == "queued" for job in queued)

            redis_process.stop()  # the queued jobs' messages are gone with it
            redis_process.start()
            c.post(f"/jobs/{busy['id']}/cancel")  # the worker is free: nothing left in the broker for it

            for job in queued:
                done = _wait_for(c, job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
                assert done["status"] == "succeeded", done["error"]
                assert done["attempts"] == 1  # sent again, claimed once
        assert "job.resend job_id=" in server.log_path.read_text()
    finally:
        stop_server(server.proc)


OUTAGE_SECONDS = 60
# Long enough to be running when the database goes away, short enough to finish on a loaded CI box; every step
# logged, so "one point per step" is checked over every step the outage covered.
OUTAGE_SPEC: dict[str, Any] = {
    **SEED_EXAMPLE,
    "name": "outage",
    "training": {**SEED_EXAMPLE["training"], "epochs": 3000, "log_every_steps": 1,
                 "checkpoint": {"every_epochs": 500, "keep_last": 2}},
}


def _final_weights(client: httpx.Client, job: dict[str, Any]) -> dict[str, torch.Tensor]:
    response = client.get(f"/jobs/{job['id']}/checkpoints/{job['latest_checkpoint_id']}")
    assert response.status_code == 200, response.text
    return load_safetensors(response.content)


def test_a_database_outage_of_a_minute_pauses_a_running_job_and_never_fails_it(
        tmp_path: Path, postgres_process: PostgresProcess) -> None:
    server = start_server(tmp_path / "home", env_extra={"TRAINSERVE_DATABASE_URL": postgres_process.url,
                                                        **FAST_LEASES})
    try:
        with server.client() as c:
            job = c.post("/jobs", json=OUTAGE_SPEC).json()
            _wait_for(c, job["id"], {"running"}, timeout=120)
            outage_began = datetime.now(timezone.utc)
            postgres_process.stop()
            time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a result
            postgres_process.start()

            done = _wait_for(c, job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
            assert done["status"] == "succeeded", done["error"]
            assert done["attempts"] == 1  # never handed to another worker: it paused and went on
            assert datetime.fromisoformat(done["finished_at"]) > outage_began  # it was running through it

            steps = [p["step"] for p in c.get(f"/jobs/{job['id']}/metrics", params={"names": "train_loss"})
                     .json()["points"]]
            assert steps == list(range(1, OUTAGE_SPEC["training"]["epochs"] + 1))  # one point per step

            reference = c.post("/jobs", json={**OUTAGE_SPEC, "name": "uninterrupted"}).json()
            reference = _wait_for(c, reference["id"], {"succeeded", "failed"}, timeout=300)
            got, want = _final_weights(c, done), _final_weights(c, reference)
            assert got.keys() == want.keys()
            assert all(torch.equal(got[name], want[name]) for name in want)  # bit for bit: same steps, same order
        assert "db.unavailable" in server.log_path.read_text()
    finally:
        stop_server(server.proc)


def _count_500s(metrics_text: str) -> float:
    """Requests the API counted with status 500 (trainserve_http_requests_total, service.observability)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(metrics_text)
               for sample in family.samples
               if sample.name == "trainserve_http_requests_total" and sample.labels.get("status") == "500")


def test_while_the_database_is_down_every_request_answers_503_and_nothing_counts_as_a_500(
        tmp_path: Path, postgres_process: PostgresProcess) -> None:
    # /predict trusts a key it has seen for predict_cache_seconds: its requests get past the key check and meet
    # the outage inside the route, where the others meet it in the key check.
    server = start_server(tmp_path / "home", env_extra={"TRAINSERVE_DATABASE_URL": postgres_process.url,
                                                        "TRAINSERVE_PREDICT_CACHE_SECONDS": "600"})
    predict = ("POST", "/predict", {"job_id": "0123456789abcdef0123456789abcdef", "inputs": [[0.0]]})
    # What a client does: submit, list, read one job, its metrics and checkpoints, the models and sweeps, predict.
    requests = [predict, ("POST", "/jobs", {**SEED_EXAMPLE, "name": "during-outage"}), ("GET", "/jobs", None),
                ("GET", "/jobs/0123456789abcdef0123456789abcdef", None), ("GET", "/models", None),
                ("GET", "/jobs/0123456789abcdef0123456789abcdef/metrics", None), ("GET", "/sweeps", None),
                ("GET", "/jobs/0123456789abcdef0123456789abcdef/checkpoints", None)]
    try:
        with server.client() as c:
            assert c.get("/jobs").status_code == 200
            assert c.post("/predict", json=predict[2]).status_code == 404
            postgres_process.stop()
            for method, path, body in requests * 2:  # twice: the pool's dead connections, then fresh attempts
                response = c.request(method, path, json=body)
                assert response.status_code == 503, (method, path, response.status_code, response.text)
                assert int(response.headers["Retry-After"]) > 0
                assert response.json() == {"type": "unavailable", "detail": "the database is unavailable; "
                                           "retry shortly", "errors": []}
            assert _count_500s(httpx.get(f"{server.url}/metrics").text) == 0

            postgres_process.start()
            deadline = time.monotonic() + 60
            while (answer := c.get("/jobs")).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert answer.status_code == 200, answer.text
            created = c.post("/jobs", json={**SEED_EXAMPLE, "name": "after-outage"})
            assert created.status_code == 201, created.text
            assert c.get(f"/jobs/{created.json()['id']}").status_code == 200
            assert _count_500s(httpx.get(f"{server.url}/metrics").text) == 0
    finally:
        stop_server(server.proc)
    log = server.log_path.read_text(errors="replace")
    assert "Exception in ASGI application" not in log and "Traceback" not in log, server.log_tail(80)
    assert "auth.db_unavailable" in log and "request.db_unavailable path=/predict" in log
