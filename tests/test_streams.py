"""Live metric streams cost the server a poll loop each: they are capped per tenant, end when their key is
revoked, and say nothing about the database's internals when something goes wrong."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.conftest import ROOT, LiveServer

pytestmark = pytest.mark.timeout(300)

NEVER_ENDING: dict[str, Any] = {
    "name": "streamed",
    "model": {"layers": [{"type": "Linear", "out_features": 1}]},
    "loss": {"type": "MSELoss"}, "optimizer": {"type": "SGD", "lr": 0.01},
    "training": {"max_steps": 5_000_000, "batch_size": 8, "log_every_steps": 50,
                 "checkpoint": {"every_epochs": 100_000}},
    "data": {"source": "synthetic", "kind": "regression", "n_samples": 64, "n_features": 2},
}


def server_cli(server: LiveServer, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=server.env,
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


@pytest.fixture
def tenant(embedded_server: LiveServer) -> Iterator[tuple[httpx.Client, str, str]]:
    """A client of a tenant of its own with one never-ending job, and a second key of that tenant (the test may
    revoke it; the job is cancelled at the end with the first)."""
    name = f"streams-{uuid.uuid4().hex[:8]}"
    key, second_key = (server_cli(embedded_server, "keys", "create", "--tenant", name) for _ in range(2))
    with embedded_server.client(api_key=key) as client:
        job = client.post("/jobs", json=NEVER_ENDING).json()
        try:
            yield client, second_key, job["id"]
        finally:
            client.post(f"/jobs/{job['id']}/cancel")


def test_streams_past_the_tenant_cap_get_429_and_a_closed_one_frees_its_slot(
        embedded_server: LiveServer, tenant: tuple[httpx.Client, str, str]) -> None:
    client, _key, job_id = tenant
    cap = Settings().max_streams_per_tenant
    with contextlib.ExitStack() as streams:
        for _ in range(cap):
            response = streams.enter_context(client.stream("GET", f"/jobs/{job_id}/metrics/stream"))
            assert response.status_code == 200
        refused = client.get(f"/jobs/{job_id}/metrics/stream")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] and "TRAINSERVE_MAX_STREAMS_PER_TENANT" in refused.json()["detail"]
    # The server frees a slot when it notices the client left (its next keep-alive write): poll for it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with client.stream("GET", f"/jobs/{job_id}/metrics/stream") as response:
            if response.status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError("no stream slot came free after every stream was closed")


def test_a_stream_ends_with_an_error_event_when_its_key_is_revoked(
        embedded_server: LiveServer, tenant: tuple[httpx.Client, str, str]) -> None:
    _client, key, job_id = tenant
    events: list[str] = []
    with embedded_server.client(api_key=key, timeout=60) as client, \
            client.stream("GET", f"/jobs/{job_id}/metrics/stream") as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
                if len(events) == 1:
                    server_cli(embedded_server, "keys", "revoke", key)
            elif events and events[-1] == "error" and line.startswith("data: "):
                assert "revoked" in line
                break
    assert events[-1] == "error"
