"""Keys, tenants and limits: nobody reads what is not theirs, and every refusal is a readable 4xx."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.spec import SEED_EXAMPLE
from tests.conftest import ROOT, LiveServer, start_server, stop_server

pytestmark = pytest.mark.timeout(240)


def server_cli(server: LiveServer, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=server.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def finished_job(embedded_server: LiveServer) -> dict[str, Any]:
    with embedded_server.client() as c:
        job = c.post("/jobs", json=SEED_EXAMPLE).json()
    return embedded_server.wait_for_job(job["id"])


@pytest.fixture(scope="module")
def dataset_id(embedded_server: LiveServer) -> str:
    with embedded_server.client() as c:
        response = c.post("/datasets", files={"file": ("t.csv", b"a,b,y\n1,2,3\n4,5,6\n7,8,9\n")}, data={"target": "y"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_keys_create_prints_only_the_key_and_revoke_locks_it_out(embedded_server: LiveServer) -> None:
    key = server_cli(embedded_server, "keys", "create", "--tenant", "revokable")
    assert key.startswith("ts_") and "\n" not in key
    with embedded_server.client(api_key=key) as c:
        assert c.get("/jobs").status_code == 200
        server_cli(embedded_server, "keys", "revoke", key)
        response = c.get("/jobs")
    assert response.status_code == 401 and response.json()["type"] == "unauthorized"


def test_a_revoked_key_submits_nothing_from_the_next_request_on(embedded_server: LiveServer) -> None:
    # POST /jobs may take its early key check from the keys accepted moments ago (as /predict does); the
    # transaction that stores the job checks the key again, so a revocation still stops submissions at once.
    key = server_cli(embedded_server, "keys", "create", "--tenant", "revoked-submitter")
    witness = server_cli(embedded_server, "keys", "create", "--tenant", "revoked-submitter")
    spec = {**SEED_EXAMPLE, "name": "before-revoke"}
    with embedded_server.client(api_key=key) as c:
        first = c.post("/jobs", json=spec, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 201
        server_cli(embedded_server, "keys", "revoke", key)
        refused = [c.post("/jobs", json={**spec, "name": "after-revoke"}),  # a new job
                   c.post("/jobs", json=spec, headers={"Idempotency-Key": "k1"}),  # a replay of the first
                   # a spec the static check refuses (32 features in, the first layer takes 5)
                   c.post("/jobs", json={**spec, "model": {"layers": [
                       {"type": "Linear", "in_features": 5, "out_features": 1}]}})]
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.json()["type"] == "unauthorized" and response.headers["WWW-Authenticate"] == "Bearer"
    with embedded_server.client(api_key=witness) as c:
        assert [j["name"] for j in c.get("/jobs").json()["items"]] == ["before-revoke"]


@pytest.mark.parametrize("header", [None, "Bearer ts_not-a-key", "Basic abc", "Bearer"])
def test_missing_or_unknown_keys_answer_401(embedded_server: LiveServer, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = httpx.get(f"{embedded_server.url}/jobs", headers=headers)
    assert response.status_code == 401
    assert response.json()["type"] == "unauthorized" and response.json()["detail"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_health_and_docs_need_no_key(embedded_server: LiveServer) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert httpx.get(embedded_server.url + path).status_code == 200, path


def test_another_tenant_sees_nothing(embedded_server: LiveServer, finished_job: dict[str, Any], dataset_id: str) -> None:
    other = server_cli(embedded_server, "keys", "create", "--tenant", "intruder")
    job_id = finished_job["id"]
    missing = "0" * 32
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/jobs/{id}", {}),
        ("GET", "/jobs/{id}/metrics", {}),
        ("GET", "/jobs/{id}/metrics/stream", {}),
        ("GET", "/jobs/{id}/checkpoints", {}),
        ("GET", "/jobs/{id}/checkpoints/best", {}),
        ("POST", "/jobs/{id}/cancel", {}),
        ("DELETE", "/jobs/{id}", {}),
    ]
    with embedded_server.client(api_key=other) as c:
        for method, path, kwargs in requests:
            theirs = c.request(method, path.format(id=job_id), **kwargs)
            absent = c.request(method, path.format(id=missing), **kwargs)
            assert theirs.status_code == absent.status_code == 404, (path, theirs.text)
            assert theirs.json()["type"] == absent.json()["type"] == "not_found"
            assert theirs.json()["detail"].replace(job_id, "X") == absent.json()["detail"].replace(missing, "X")
        predict = c.post("/predict", json={"job_id": job_id, "inputs": [[0.0] * 32]})
        assert predict.status_code == 404
        assert c.get(f"/datasets/{dataset_id}").status_code == 404
        assert all(d["id"] != dataset_id for d in c.get("/datasets").json()["items"])
        assert all(j["id"] != job_id for j in c.get("/jobs").json()["items"])
        spec = {**copy.deepcopy(SEED_EXAMPLE), "data": {"source": "dataset", "dataset_id": dataset_id}}
        refused = c.post("/jobs", json=spec)
        assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == "data.dataset_id"
    with embedded_server.client() as c:  # the owner still has everything
        assert c.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_idempotency_key_returns_the_same_job(embedded_server: LiveServer) -> None:
    with embedded_server.client() as c:
        first = c.post("/jobs", json=SEED_EXAMPLE, headers={"Idempotency-Key": "submit-once-1"})
        second = c.post("/jobs", json=SEED_EXAMPLE, headers={"Idempotency-Key": "submit-once-1"})
        other = c.post("/jobs", json=SEED_EXAMPLE, headers={"Idempotency-Key": "submit-once-2"})
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"] != other.json()["id"]
    job = embedded_server.wait_for_job(first.json()["id"])
    assert job["attempts"] == 1


def test_an_empty_idempotency_key_is_refused_with_its_path_and_submits_nothing(embedded_server: LiveServer) -> None:
    # An empty key is a client's mistake (say, `-H "Idempotency-Key: $KEY"` with KEY unset); taken as no key, a
    # retry would submit twice. Twice, since the second empty key once reached the database's unique rule: a 500.
    spec = {**SEED_EXAMPLE, "name": "empty-idempotency-key"}
    with embedded_server.client() as c:
        answers = [c.post("/jobs", json=spec, headers={"Idempotency-Key": ""}) for _ in range(2)]
        newest = c.get("/jobs", params={"limit": 20}).json()["items"]  # newest first: a job stored now would lead
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert [e["loc"] for e in answer.json()["errors"]] == ["header idempotency-key"], answer.json()
    assert spec["name"] not in [job["name"] for job in newest]


def test_cancel_queued_running_and_finished(embedded_server: LiveServer, finished_job: dict[str, Any]) -> None:
    long_spec = copy.deepcopy(SEED_EXAMPLE)
    long_spec["training"]["epochs"] = 10_000
    with embedded_server.client() as c:
        running = c.post("/jobs", json=long_spec).json()
        queued = c.post("/jobs", json=long_spec).json()  # one worker: waits behind `running`
        embedded_server.wait_for_job(running["id"], statuses=("running",))
        cancelled_queued = c.post(f"/jobs/{queued['id']}/cancel").json()
        assert cancelled_queued["status"] == "cancelled"
        answer = c.post(f"/jobs/{running['id']}/cancel").json()
        assert answer["cancel_requested"] is True
        stopped = embedded_server.wait_for_job(running["id"], timeout=60)
        assert stopped["status"] == "cancelled" and stopped["progress"]["step"] < 10_000
        finished = c.post(f"/jobs/{finished_job['id']}/cancel")
        assert finished.status_code == 409 and finished.json()["type"] == "conflict"
        never = embedded_server.wait_for_job(queued["id"])
        assert never["status"] == "cancelled" and never["started_at"] is None and never["attempts"] == 0


def test_delete_a_finished_job_removes_it(embedded_server: LiveServer) -> None:
    with embedded_server.client() as c:
        job = embedded_server.wait_for_job(c.post("/jobs", json=SEED_EXAMPLE).json()["id"])
        assert c.delete(f"/jobs/{job['id']}").status_code == 204
        assert c.get(f"/jobs/{job['id']}").status_code == 404
        assert c.get(f"/jobs/{job['id']}/metrics").status_code == 404


def test_oversize_body_is_413_before_parsing(embedded_server: LiveServer) -> None:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["data"] = {"source": "inline", "x": [[0.5] * 32] * 20_000, "y": [[0.0]] * 20_000}
    with embedded_server.client() as c:
        response = c.post("/jobs", json=spec)
    assert response.status_code == 413
    assert response.json()["type"] == "payload_too_large" and "limit" in response.json()["detail"]


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("strict") / "home", env_extra={
        "TRAINSERVE_MAX_SUBMISSIONS_PER_MINUTE": "3", "TRAINSERVE_MAX_EPOCHS": "50",
        "TRAINSERVE_MAX_PARAMETERS": "10000"})
    yield server
    stop_server(server.proc)


def test_submissions_over_the_rate_limit_answer_429_with_retry_after(strict_server: LiveServer) -> None:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["training"]["epochs"] = 5
    with strict_server.client() as c:
        answers = [c.post("/jobs", json=spec) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [201, 201, 201]
    assert answers[3].status_code == 429
    assert int(answers[3].headers["retry-after"]) > 0 and answers[3].json()["type"] == "rate_limited"


def test_caps_answer_422_with_the_computed_figure(strict_server: LiveServer) -> None:
    spec = copy.deepcopy(SEED_EXAMPLE)
    spec["training"]["epochs"] = 51
    spec["model"]["layers"][0]["out_features"] = 512
    with strict_server.client() as c:
        response = c.post("/jobs/validate", json=spec).json()
    by_loc = {e["loc"]: e["msg"] for e in response["errors"]}
    assert "51" in by_loc["training.epochs"] and "50" in by_loc["training.epochs"]
    assert any("10,000" in msg or "10000" in msg for loc, msg in by_loc.items() if loc == "model")


def test_corrupt_checkpoint_is_refused_at_predict_time(embedded_server: LiveServer) -> None:
    import sqlite3

    with embedded_server.client() as c:
        job = embedded_server.wait_for_job(c.post("/jobs", json=SEED_EXAMPLE).json()["id"])
        db = sqlite3.connect(Path(embedded_server.home) / "trainserve.db")
        with db:
            for ckpt_id, weights in db.execute("SELECT id, weights FROM checkpoints WHERE job_id = ?", (job["id"],)).fetchall():
                flipped = weights[:-1] + bytes([weights[-1] ^ 0xFF])  # one bit pattern changed in the last byte
                db.execute("UPDATE checkpoints SET weights = ? WHERE id = ?", (flipped, ckpt_id))
        db.close()
        response = c.post("/predict", json={"job_id": job["id"], "inputs": [[0.0] * 32]})
        download = c.get(f"/jobs/{job['id']}/checkpoints/best")
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "corrupt_checkpoint" and "SHA-256" in response.json()["detail"]
    assert download.status_code == 409


PREDICT_CACHE_SECONDS = 5.0  # TRAINSERVE_PREDICT_CACHE_SECONDS' default, which the embedded server runs with


def answer_once_the_cache_expires(call: Any, *, last_accepted_at: float) -> int:
    """The status of a request sent once every cache entry the server can hold for it has expired.

    The server trusts a key, and a job's model lookup, for PREDICT_CACHE_SECONDS after it last asked the database,
    which it did before answering the last accepted request (`last_accepted_at`, time.monotonic(): the same
    system-wide clock the server's caches read). So a request sent after that bound must see the change, however
    slow the machine is; nothing here measures how long anything took."""
    time.sleep(max(0.0, last_accepted_at + PREDICT_CACHE_SECONDS + 0.05 - time.monotonic()))
    return int(call().status_code)


def test_a_revoked_key_stops_predicting_within_the_predict_cache_time(embedded_server: LiveServer,
                                                                     finished_job: dict[str, Any]) -> None:
    # The job belongs to tenant "default": a second key of that tenant predicts on it.
    key = server_cli(embedded_server, "keys", "create", "--tenant", "default")
    body = {"job_id": finished_job["id"], "inputs": [[0.0] * 32]}
    with embedded_server.client(api_key=key) as c:
        assert c.post("/predict", json=body).status_code == 200
        assert c.post("/predict", json=body).headers["x-model-cache"] == "hit"  # answered from memory
        accepted_at = time.monotonic()
        server_cli(embedded_server, "keys", "revoke", key)
        assert c.get("/jobs").status_code == 401  # everywhere else at once
        assert answer_once_the_cache_expires(lambda: c.post("/predict", json=body), last_accepted_at=accepted_at) == 401


def test_a_deleted_job_stops_predicting_within_the_predict_cache_time(embedded_server: LiveServer) -> None:
    with embedded_server.client() as c:
        job = embedded_server.wait_for_job(c.post("/jobs", json=SEED_EXAMPLE).json()["id"])
        body = {"job_id": job["id"], "inputs": [[0.0] * 32]}
        assert c.post("/predict", json=body).status_code == 200
        assert c.post("/predict", json=body).headers["x-model-cache"] == "hit"
        accepted_at = time.monotonic()
        assert c.delete(f"/jobs/{job['id']}").status_code == 204
        assert answer_once_the_cache_expires(lambda: c.post("/predict", json=body), last_accepted_at=accepted_at) == 404


@pytest.mark.parametrize("inputs, loc", [
    ([[0.0] * 31 + [10**400]], "inputs[0][31]"),  # past float64: cannot even be converted
    ([[1e39] + [0.0] * 31], "inputs[0][0]"),  # past float32, which models run in
    ([[[0.0] * 16, [10**400] + [0.0] * 15]], "inputs[0][16]"),  # a nested row takes the value-by-value path
])
def test_out_of_range_inputs_answer_422_with_their_path(embedded_server: LiveServer, finished_job: dict[str, Any],
                                                       inputs: list[Any], loc: str) -> None:
    with embedded_server.client() as c:
        response = c.post("/predict", json={"job_id": finished_job["id"], "inputs": inputs})
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["errors"]]


@pytest.mark.parametrize("path", ["/jobs", "/predict", "/datasets"])
def test_a_request_without_a_key_is_refused_before_its_body_is_read(embedded_server: LiveServer, path: str) -> None:
    # Over the body limit (413 if it were read) and not JSON (400 if it were parsed): the key is checked first.
    big = b"{" * (3 * 1024 * 1024)
    for headers in ({}, {"Authorization": "Bearer ts_not-a-key"}):
        response = httpx.post(embedded_server.url + path, content=big, timeout=60,
                              headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 401, (path, response.text)
        assert response.json()["type"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/jobs", "/jobs/validate", "/predict"])
@pytest.mark.parametrize("body", [b"{not json", b'{"job_id": "\xff\xfe"}', b"\xff\xfe\x00garbage"],
                         ids=["broken-json", "bad-utf8-in-string", "bad-utf8"])
def test_a_body_that_is_not_json_answers_400_on_every_route(embedded_server: LiveServer, path: str,
                                                            body: bytes) -> None:
    with embedded_server.client() as c:
        response = c.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "http_error" and response.json()["errors"] == []


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PATCH", "/jobs", "GET, POST"),
    ("PUT", "/jobs/some-job", "DELETE, GET"),
    ("GET", "/predict", "POST"),
])
def test_405_names_every_method_of_the_path(embedded_server: LiveServer, method: str, path: str, allow: str) -> None:
    with embedded_server.client() as c:
        response = c.request(method, path)
    assert response.status_code == 405
    assert response.json()["type"] == "method_not_allowed"
    assert response.headers["Allow"] == allow
