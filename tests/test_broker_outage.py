"""A broker that is down when a job is submitted loses nothing: the job is stored and sent once it is back."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.spec import SEED_EXAMPLE
from tests.conftest import free_port, require_service, start_server, stop_server

pytestmark = pytest.mark.timeout(240)


class RedisProcess:
    """A throwaway redis-server on a port of our own, so the test can stop and restart "the broker"."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


def _missing() -> None:
    raise FileNotFoundError("redis-server is not on PATH")


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    # The same rule as every PostgreSQL/Redis test: a failure under CI=true, a skip with the reason elsewhere.
    require_service("redis-server (to stop and restart a broker)", lambda: shutil.which("redis-server") or _missing())
    redis = RedisProcess(free_port(), tmp_path)
    redis.start()
    yield redis
    redis.stop()


def test_a_job_submitted_while_the_broker_is_down_runs_once_it_is_back(tmp_path: Path,
                                                                        redis_process: RedisProcess) -> None:
    server = start_server(tmp_path / "home", env_extra={
        "TRAINSERVE_BROKER_URL": f"redis://127.0.0.1:{redis_process.port}/0",
        "TRAINSERVE_REAPER_INTERVAL_SECONDS": "1",
    })
    try:
        redis_process.stop()
        with server.client() as c:
            response = c.post("/jobs", json=SEED_EXAMPLE)
            assert response.status_code == 201, response.text
            job = response.json()
            assert job["status"] == "queued"
            ready = httpx.get(f"{server.url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["broker"] == "unavailable"
            # No fixed sleep: wait (with a deadline) until a reaper pass has tried to send the job again while
            # the broker is down, then check that this left it queued, not failed or marked as sent.
            failed_send = "job.enqueue_failed job_id=" + job["id"]
            deadline = time.monotonic() + 60
            while server.log_path.read_text().count(failed_send) < 2:
                assert time.monotonic() < deadline, "no reaper pass tried to send the job\n" + server.log_tail()
                time.sleep(0.2)
            seen = c.get(f"/jobs/{job['id']}").json()
            assert seen["status"] == "queued" and seen["attempts"] == 0
        redis_process.start()
        done = server.wait_for_job(job["id"], timeout=150)
        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 1
        assert "job.enqueue_failed job_id=" + job["id"] in server.log_path.read_text()
    finally:
        stop_server(server.proc)
