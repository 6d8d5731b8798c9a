"""Lost workers, duplicate deliveries, concurrent SQLite writers and readiness, against real processes.

Each test kills or duplicates what a production deployment loses or duplicates: a worker process (SIGKILL to its
process group), a task message (sent again by name), a database (a closed port). The lease tests run on servers
of their own with short leases, on both stacks; PostgreSQL + Redis must be reachable under CI=true.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from service.queue import TRAIN_JOB, make_celery
from service.settings import Settings
from tests.conftest import (
    PG_ADMIN_URL,
    REDIS_URL,
    ROOT,
    LiveServer,
    create_pg_database,
    drop_pg_database,
    free_port,
    require_service,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.timeout(600)

# Short leases so a lost worker is noticed in seconds; 6 s rather than 3 s because a heavily loaded CI box can
# stall a heartbeat for a few seconds, and a spurious expiry would re-run a healthy job.
LEASE_ENV = {
    "TRAINSERVE_LEASE_SECONDS": "6",
    "TRAINSERVE_HEARTBEAT_SECONDS": "0.5",
    "TRAINSERVE_REAPER_INTERVAL_SECONDS": "0.5",
    "TRAINSERVE_MAX_ATTEMPTS": "3",
}
# A Redis database apart from conftest's (3 + the xdist worker's index), one per xdist worker too.
LEASE_REDIS_DB = 12 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)

# Dropout and shuffling draw from the RNGs every step, so an exact resume must restore them. 96 steps per
# epoch, 30 epochs and a checkpoint at each epoch end: a few seconds on an idle box (a minute on a loaded
# one), so a kill right after the first checkpoint lands well before the end.
EPOCHS, STEPS_PER_EPOCH = 30, 96
RESUME_SPEC: dict[str, Any] = {
    "name": "resume-me",
    "model": {"layers": [
        {"type": "Linear", "out_features": 64}, {"type": "ReLU"}, {"type": "Dropout", "p": 0.2},
        {"type": "Linear", "out_features": 64}, {"type": "ReLU"}, {"type": "Dropout", "p": 0.2},
        {"type": "Linear", "out_features": 1},
    ]},
    "loss": {"type": "MSELoss"},
    "optimizer": {"type": "Adam", "lr": 0.001},
    "training": {"epochs": EPOCHS, "batch_size": 32, "shuffle": True, "seed": 7, "log_every_steps": 1,
                 "checkpoint": {"every_epochs": 1}},
    "data": {"source": "synthetic", "kind": "regression", "n_samples": 32 * STEPS_PER_EPOCH, "n_features": 16},
}


def resume_spec(epochs: int, *, n_samples: int | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(RESUME_SPEC)
    spec["training"]["epochs"] = epochs
    if n_samples is not None:
        spec["data"]["n_samples"] = n_samples
    return spec


# --- helpers ------------------------------------------------------------------------------------------


def submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def train_loss_steps(client: httpx.Client, job_id: str) -> list[int]:
    response = client.get(f"/jobs/{job_id}/metrics", params={"names": "train_loss"})
    assert response.status_code == 200, response.text
    return [p["step"] for p in response.json()["points"]]


def final_weights(client: httpx.Client, job_id: str) -> dict[str, torch.Tensor]:
    response = client.get(f"/jobs/{job_id}/checkpoints/latest")
    assert response.status_code == 200, response.text
    return load_safetensors(response.content)


def kill_worker(server: LiveServer) -> None:
    # The worker leads its own process group: SIGKILL reaches it and any child at once, with no cleanup.
    try:
        os.killpg(server.worker_pid(), signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(what: str, predicate: Callable[[], bool], *, timeout: float, server: LiveServer | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{server.log_tail()}" if server else ""))


def server_settings(server: LiveServer) -> Settings:
    """The Settings the server's processes build from their environment, built here from the same values."""
    env = server.env
    return Settings(home=Path(env["TRAINSERVE_HOME"]), database_url=env.get("TRAINSERVE_DATABASE_URL", ""),
                    broker_url=env.get("TRAINSERVE_BROKER_URL", ""))


class ExtraWorker:
    """A second `trainserve-server worker` process consuming the same queue as the server's own worker."""

    def __init__(self, server: LiveServer, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], cwd=ROOT, env=server.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"extra worker exited with {self.proc.returncode}:\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.3)
        raise AssertionError(f"extra worker not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[[LiveServer], ExtraWorker]]:
    """Starts extra workers for a server; each is stopped at teardown, whatever the test did."""
    started: list[ExtraWorker] = []

    def spawn(server: LiveServer) -> ExtraWorker:
        worker = ExtraWorker(server, tmp_path / f"extra-worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()


def _require_pg_and_redis() -> None:
    import psycopg
    import redis

    require_service("PostgreSQL at " + PG_ADMIN_URL, lambda: psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close())
    require_service("Redis at " + REDIS_URL, lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())


# --- servers with short leases, one per stack -----------------------------------------------------------


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def leased_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp(f"leased-{request.param}") / "home"
    if request.param == "embedded":
        server = start_server(home, env_extra=LEASE_ENV)
        server.extra["stack"] = "embedded"
        yield server
        stop_server(server.proc)
        return
    import redis

    _require_pg_and_redis()
    broker_url = f"{REDIS_URL}/{LEASE_REDIS_DB}"
    redis.Redis.from_url(broker_url).flushdb()  # no task of an earlier run may reach this server's worker
    db_url = create_pg_database()
    try:
        server = start_server(home, env_extra={**LEASE_ENV, "TRAINSERVE_DATABASE_URL": db_url,
                                               "TRAINSERVE_BROKER_URL": broker_url})
        server.extra.update(stack="postgres", broker_url=broker_url)
        try:
            yield server
        finally:
            stop_server(server.proc)
    finally:
        drop_pg_database(db_url)
        redis.Redis.from_url(broker_url).flushdb()


def test_killed_worker_resumes_from_its_checkpoint_to_the_uninterrupted_weights(leased_server: LiveServer) -> None:
    server = leased_server
    with server.client() as c:
        reference_id = submit(c, RESUME_SPEC)
        reference = server.wait_for_job(reference_id, timeout=300)
        assert reference["status"] == "succeeded" and reference["attempts"] == 1, reference

        job_id = submit(c, RESUME_SPEC)

        def has_checkpoint() -> bool:
            return bool(c.get(f"/jobs/{job_id}/checkpoints").json()["items"])

        wait_until("the first checkpoint", has_checkpoint, timeout=240, server=server)
        before = c.get(f"/jobs/{job_id}").json()
        assert before["status"] == "running", before
        kill_worker(server)

        job = server.wait_for_job(job_id, timeout=360)
        assert job["status"] == "succeeded", job
        # attempts >= 2 proves the kill landed before the end and the job was taken up again.
        assert job["attempts"] >= 2, job
        assert f"job.resuming job_id={job_id}" in server.log_path.read_text(errors="replace")

        total = job["progress"]["total_steps"]
        assert total == reference["progress"]["total_steps"] == EPOCHS * STEPS_PER_EPOCH
        assert train_loss_steps(c, job_id) == list(range(1, total + 1))

        resumed, uninterrupted = final_weights(c, job_id), final_weights(c, reference_id)
    assert resumed.keys() == uninterrupted.keys() and resumed
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name


def test_duplicate_delivery_during_a_live_lease_trains_once(
        leased_server: LiveServer, spawn_worker: Callable[[LiveServer], ExtraWorker]) -> None:
    server = leased_server
    extra = spawn_worker(server)  # a second consumer, idle while the first trains, to take the duplicate
    extra.wait_ready()
    with server.client() as c:
        job_id = submit(c, RESUME_SPEC)
        server.wait_for_job(job_id, statuses=("running",), timeout=240)
        # The same task again, by name, as a broker redelivery would bring it.
        with make_celery(server_settings(server), "duplicate-sender") as producer:
            producer.send_task(TRAIN_JOB, args=[job_id], queue="cpu")
        marker = f"job.duplicate_delivery job_id={job_id}"

        def duplicate_seen() -> bool:
            return marker in extra.log() or marker in server.log_path.read_text(errors="replace")

        wait_until("the duplicate to be turned away", duplicate_seen, timeout=120, server=server)
        assert c.get(f"/jobs/{job_id}").json()["status"] == "running"
        job = server.wait_for_job(job_id, timeout=300)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert train_loss_steps(c, job_id) == list(range(1, job["progress"]["total_steps"] + 1))


def queued_messages_for(server: LiveServer, job_id: str) -> int:
    """Task messages still waiting in the broker: for this job (filesystem) or on the cpu queue (Redis)."""
    if server.extra["stack"] == "embedded":
        folder = server.home / "broker" / "queue"
        return sum(1 for path in folder.glob("*.msg") if job_id in path.read_text(errors="replace"))
    import redis

    client = redis.Redis.from_url(server.extra["broker_url"])
    try:
        return int(client.llen("cpu"))
    finally:
        client.close()


def test_a_job_whose_worker_always_dies_fails_after_the_attempt_cap(leased_server: LiveServer) -> None:
    server = leased_server
    with server.client() as c:
        job_id = submit(c, resume_spec(epochs=5000))
        killed_attempts: list[int] = []
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            # Each new attempt dies as soon as it starts: the supervisor restarts the worker, the reaper re-queues.
            if job["status"] == "running" and job["attempts"] not in killed_attempts:
                kill_worker(server)
                killed_attempts.append(job["attempts"])
            time.sleep(0.1)
        else:
            raise AssertionError(f"job still {job['status']} after the kills {killed_attempts}\n{server.log_tail()}")
    assert job["status"] == "failed", job
    assert killed_attempts == [1, 2, 3] and job["attempts"] == 3, (killed_attempts, job)
    assert "3" in job["error"] and "attempts" in job["error"].lower(), job["error"]
    # A message sent again while the restarted worker was still starting (the reaper's resend of an unclaimed
    # job) may still be waiting: the worker takes it and drops it, since the job is finished. Nothing is re-sent
    # for a finished job, so the broker empties.
    deadline = time.monotonic() + 120
    while queued_messages_for(server, job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queued_messages_for(server, job_id) == 0
    with server.client() as c:
        assert c.get(f"/jobs/{job_id}").json()["status"] == "failed"


# --- SQLite with several writers ------------------------------------------------------------------------


def test_sqlite_takes_the_api_and_two_workers_writing_at_once(
        embedded_server: LiveServer, spawn_worker: Callable[[LiveServer], ExtraWorker]) -> None:
    server = embedded_server
    extra = spawn_worker(server)
    extra.wait_ready()
    spec = resume_spec(epochs=8, n_samples=768)  # 24 steps an epoch: small jobs, many writes
    spec["training"]["checkpoint"] = {"every_epochs": 2}
    statuses: list[tuple[str, int]] = []
    with server.client() as c:
        job_ids = [submit(c, {**spec, "name": f"concurrent-{i}"}) for i in range(6)]
        deadline = time.monotonic() + 420
        finished: dict[str, dict[str, Any]] = {}
        while len(finished) < len(job_ids):
            assert time.monotonic() < deadline, f"jobs still running: {set(job_ids) - set(finished)}"
            # Read as hard as a dashboard with many tabs would, while both workers write points.
            for path in ("/jobs", *(f"/jobs/{j}" for j in job_ids), *(f"/jobs/{j}/metrics" for j in job_ids)):
                response = c.get(path)
                statuses.append((path, response.status_code))
                if path.count("/") == 2 and response.status_code == 200:
                    body = response.json()
                    if body["status"] in ("succeeded", "failed", "cancelled"):
                        finished[body["id"]] = body
    assert [s for s in statuses if s[1] >= 500] == []
    for job in finished.values():
        assert job["status"] == "succeeded", job
        assert "database is locked" not in (job["error"] or "")
    # Both workers trained some of them, so their writes did overlap.
    started_here = [j for j in job_ids if f"job.started job_id={j}" in extra.log()]
    assert 0 < len(started_here) < len(job_ids), started_here


# --- readiness ------------------------------------------------------------------------------------------


class ApiOnly:
    """`trainserve-server api` alone: it starts whatever the database and broker say, so readiness can be seen."""

    def __init__(self, home: Path, env_extra: dict[str, str]) -> None:
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "TRAINSERVE_HOME": str(home), "TRAINSERVE_PORT": str(port),
               "TRAINSERVE_HOST": "127.0.0.1", **env_extra}
        # Migrated first where the database answers, as `up` and the compose file's migrate service do (the API
        # refuses a database behind the migrations; an unreachable one it starts without, for /readyz to report).
        subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, env=env, capture_output=True,
                       timeout=120, check=False)
        self._log = open(home / "api.log", "wb")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "api"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.log_path = home / "api.log"

    def wait_live(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"api exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"api not up after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_server(self.proc)
        self._log.close()


@pytest.fixture
def spawn_api(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], ApiOnly]]:
    started: list[ApiOnly] = []

    def spawn(env_extra: dict[str, str]) -> ApiOnly:
        api = ApiOnly(tmp_path / f"home-{len(started)}", env_extra)
        started.append(api)
        return api

    yield spawn
    for api in started:
        api.stop()


def _closed_port() -> int:
    return free_port()  # bound and released at once: nothing listens there


@pytest.mark.parametrize(("part", "env_extra"), [
    ("database", lambda: {"TRAINSERVE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{_closed_port()}/none"}),
    ("broker", lambda: {"TRAINSERVE_BROKER_URL": f"redis://127.0.0.1:{_closed_port()}/0"}),
], ids=["database-down", "broker-down"])
def test_readyz_is_503_naming_the_part_that_is_down(
        spawn_api: Callable[[dict[str, str]], ApiOnly], part: str, env_extra: Callable[[], dict[str, str]]) -> None:
    api = spawn_api(env_extra())
    api.wait_live()
    health = httpx.get(f"{api.url}/healthz", timeout=10)
    ready = httpx.get(f"{api.url}/readyz", timeout=30)
    assert health.status_code == 200
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body[part].startswith("unavailable"), body
    other = "broker" if part == "database" else "database"
    assert body[other] == "ok", body


def test_readyz_is_200_when_the_database_and_broker_answer(stack: LiveServer) -> None:
    response = httpx.get(f"{stack.url}/readyz", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "database": "ok", "broker": "ok"}
