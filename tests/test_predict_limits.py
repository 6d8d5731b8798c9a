"""/predict against a real server: an answer too large to build is refused before the forward pass, and
concurrent requests for a model not yet in memory load it once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import LiveServer


def wide_regression_spec(n_targets: int, *, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"layers": [{"type": "Linear", "out_features": n_targets}]},
        "loss": {"type": "MSELoss"},
        "optimizer": {"type": "SGD", "lr": 0.01},
        "training": {"epochs": 1, "batch_size": 16, "seed": 0, "device": "cpu"},
        "data": {"source": "synthetic", "kind": "regression", "n_samples": 16, "n_features": 2, "n_targets": n_targets},
    }


def trained_job(server: LiveServer, spec: dict[str, Any]) -> str:
    with server.client() as client:
        response = client.post("/jobs", json=spec)
        assert response.status_code == 201, response.text
        job_id: str = response.json()["id"]
    job = server.wait_for_job(job_id)
    assert job["status"] == "succeeded", job
    return job_id


def test_an_answer_past_the_value_cap_is_a_422_naming_the_figure(embedded_server: LiveServer) -> None:
    job_id = trained_job(embedded_server, wide_regression_spec(5_000, name="wide-output"))
    with embedded_server.client() as client:
        too_many = client.post("/predict", json={"job_id": job_id, "inputs": [[0.5, -0.5]] * 1_001})
        assert too_many.status_code == 422, too_many.text
        (error,) = too_many.json()["errors"]
        assert error["loc"] == "inputs"
        assert "1,001 rows × 5,000 outputs is 5,005,000 values, more than the limit of 5,000,000" in error["msg"]
        # The cap holds the same once the model is in memory (the hot path), and a smaller batch is answered.
        fits = client.post("/predict", json={"job_id": job_id, "inputs": [[0.5, -0.5]] * 3})
        assert fits.status_code == 200, fits.text
        assert len(fits.json()["predictions"]) == 3 and len(fits.json()["predictions"][0]) == 5_000
        again = client.post("/predict", json={"job_id": job_id, "inputs": [[0.5, -0.5]] * 1_001})
        assert again.status_code == 422 and "5,005,000 values" in again.text


def test_concurrent_requests_for_a_cold_model_load_it_once(embedded_server: LiveServer) -> None:
    job_id = trained_job(embedded_server, wide_regression_spec(3, name="single-flight"))
    body = {"job_id": job_id, "inputs": [[1.0, 2.0]]}

    def ask(_: int) -> httpx.Response:
        with embedded_server.client() as client:
            return client.post("/predict", json=body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({answer.text for answer in answers}) == 1  # one model, one answer
    loads = [line for line in embedded_server.log_path.read_text(errors="replace").splitlines()
             if "predict.model_loaded" in line and job_id in line]
    assert len(loads) == 1, loads
