"""Scale-out on PostgreSQL + Redis: one API, three separate worker processes, as on three hosts.

- 30 jobs submitted at once all succeed, each trained exactly once, spread over the idle workers, while a
  long job holds the third worker (prefetch 1: nothing waits behind it).
- A `cuda` job is never taken by a CPU-only worker: it stays queued and says why.
- The API's and the workers' Prometheus series move when jobs run and predictions are served.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    REDIS_URL,
    ROOT,
    TEST_LIMITS,
    create_pg_database,
    drop_pg_database,
    free_port,
    require_service,
)

pytestmark = pytest.mark.postgres

N_WORKERS = 3
SEED = json.loads((ROOT / "examples" / "seed_mlp.json").read_text())


def small_spec(i: int) -> dict[str, Any]:
    spec = copy.deepcopy(SEED)
    spec["name"] = f"small-{i}"
    spec["training"].update(epochs=5, seed=i)
    return spec


def long_spec() -> dict[str, Any]:
    """Far longer than the 30 small jobs take together; the test cancels it once it has seen what it needs."""
    spec = copy.deepcopy(SEED)
    spec["name"] = "long"
    spec["training"].update(epochs=200, batch_size=1, log_every_steps=100)
    spec["data"].update(n_samples=2000)
    return spec


@dataclass
class Cluster:
    url: str
    api_key: str
    env: dict[str, str]
    home: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_ports: list[int] = field(default_factory=list)
    worker_logs: list[Path] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {self.api_key}"})

    def worker_log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for path in self.worker_logs:
            for raw in path.read_text(errors="replace").splitlines():
                if raw.startswith("{"):
                    lines.append({**json.loads(raw), "_log": path.name})
        return lines

    def tails(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in [self.home / "api.log", *self.worker_logs])


def _cli(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    import psycopg
    import redis

    from tests.conftest import PG_ADMIN_URL

    require_service("PostgreSQL at " + PG_ADMIN_URL, lambda: psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close())
    require_service("Redis at " + REDIS_URL, lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())
    # A Redis database no other test's workers listen on (conftest's postgres_server uses 3 + xdist index).
    db = 7 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    redis.Redis.from_url(f"{REDIS_URL}/{db}").flushdb()
    pg_url = create_pg_database()
    home = tmp_path_factory.mktemp("cluster")
    port = free_port()
    env = {**os.environ, **TEST_LIMITS, "TRAINSERVE_HOME": str(home), "TRAINSERVE_DATABASE_URL": pg_url,
           "TRAINSERVE_BROKER_URL": f"{REDIS_URL}/{db}", "TRAINSERVE_PORT": str(port), "TRAINSERVE_HOST": "127.0.0.1",
           "TRAINSERVE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    assert subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, env=env,
                          capture_output=True).returncode == 0
    key = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "default"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    c = Cluster(url=f"http://127.0.0.1:{port}", api_key=key, env=env, home=home)
    c.procs.append(_cli("api", env=env, log=home / "api.log"))
    for i in range(N_WORKERS):
        # Separate processes with their own names and metrics ports, as they would be on separate hosts.
        wport = free_port()
        log = home / f"worker-{i}.log"
        c.procs.append(_cli("worker", "--queues", "cpu", env={**env, "TRAINSERVE_WORKER_METRICS_PORT": str(wport)},
                            log=log))
        c.worker_ports.append(wport)
        c.worker_logs.append(log)
    try:
        deadline = time.monotonic() + 90
        with c.client() as http:
            while time.monotonic() < deadline:
                try:
                    if len(http.get("/workers").json()["items"]) == N_WORKERS:
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                time.sleep(0.5)
            else:
                raise AssertionError("the cluster did not come up:\n" + c.tails())
        yield c
    finally:
        _stop(c.procs)
        drop_pg_database(pg_url)


def scrape(url: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value}, summed over repeated keys."""
    out: Counter[str] = Counter()
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] += float(value)
    return dict(out)


def scrape_workers(c: Cluster) -> dict[str, float]:
    total: Counter[str] = Counter()
    for port in c.worker_ports:
        total.update(scrape(f"http://127.0.0.1:{port}/metrics"))
    return dict(total)


def wait_for(predicate: Any, *, timeout: float, what: str, c: Cluster) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{c.tails()}")


def test_thirty_jobs_each_run_once_and_none_waits_behind_a_long_one(cluster: Cluster) -> None:
    c = cluster
    with c.client() as http:
        # The long job first, the 30 right behind it: a worker that reserved more than the one message it
        # runs (prefetch > 1) would sit on some of the 30 for the long job's whole run.
        long_job = http.post("/jobs", json=long_spec()).json()
        with ThreadPoolExecutor(10) as pool:  # all at once, from many connections
            answers = list(pool.map(lambda i: httpx.post(f"{c.url}/jobs", json=small_spec(i), timeout=30,
                                                         headers={"Authorization": f"Bearer {c.api_key}"}), range(30)))
        assert [a.status_code for a in answers] == [201] * 30, [a.text for a in answers if a.status_code != 201]
        ids = [a.json()["id"] for a in answers]

        def all_finished() -> list[dict[str, Any]] | None:
            jobs = [http.get(f"/jobs/{i}").json() for i in ids]
            return jobs if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs) else None

        finished = wait_for(all_finished, timeout=180, what="the 30 jobs", c=c)
        # The long job is still running: the 30 went to the two idle workers, none sat in the busy one's prefetch.
        assert http.get(f"/jobs/{long_job['id']}").json()["status"] == "running"
        assert [j["status"] for j in finished] == ["succeeded"] * 30, [j["error"] for j in finished]
        assert all(j["attempts"] == 1 for j in finished)

        # While it trains, the long job's throughput shows on the API's and on its worker's series.
        api_rate = wait_for(lambda: scrape(f"{c.url}/metrics").get("trainserve_training_samples_per_second", 0),
                            timeout=60, what="samples/s on the API", c=c)
        assert api_rate > 0
        assert scrape_workers(c)["trainserve_worker_training_samples_per_second"] > 0

        # One lease history per job: exactly one worker started it, once.
        started = [line for line in c.worker_log_lines() if line["message"].startswith("job.started")]
        starts = Counter(line["job_id"] for line in started)
        assert all(starts[i] == 1 for i in [*ids, long_job["id"]]), starts
        long_worker = next(line["_log"] for line in started if line["job_id"] == long_job["id"])
        small_workers = Counter(line["_log"] for line in started if line["job_id"] in ids)
        assert long_worker not in small_workers, "a small job ran on the worker busy with the long one"
        assert len(small_workers) == N_WORKERS - 1, small_workers  # both idle workers took a share

        # One series of points per job: every logged step once, none repeated, up to the last step.
        for job in finished[:10]:
            points = http.get(f"/jobs/{job['id']}/metrics", params={"names": "train_loss"}).json()["points"]
            steps = [p["step"] for p in points]
            assert steps == list(range(1, job["progress"]["total_steps"] + 1))

        assert http.post(f"/jobs/{long_job['id']}/cancel").status_code == 200
        wait_for(lambda: http.get(f"/jobs/{long_job['id']}").json()["status"] == "cancelled", timeout=60,
                 what="the long job to stop", c=c)
        workers = http.get("/workers").json()["items"]
        assert len(workers) == N_WORKERS and all(w["queues"] == ["cpu"] and w["device"] == "cpu" for w in workers)


def test_a_cuda_job_waits_for_a_gpu_worker_and_says_why(cluster: Cluster) -> None:
    c = cluster
    spec = small_spec(99)
    spec["training"]["device"] = "cuda"
    gpu_messages = scrape(f"{c.url}/metrics").get('trainserve_broker_queue_messages{queue="gpu"}', 0)
    done_key = 'trainserve_worker_jobs_total{status="succeeded"}'
    done_before = scrape_workers(c).get(done_key, 0)
    with c.client() as http:
        job = http.post("/jobs", json=spec).json()
        assert job["queue"] == "gpu"
        # No sleep to prove a negative: CPU jobs sent after it run to the end, so the CPU workers were fetching
        # messages after it was sent, and its own message is still waiting in the broker, never taken.
        cpu_jobs = [http.post("/jobs", json=small_spec(100 + i)).json()["id"] for i in range(N_WORKERS)]
        wait_for(lambda: all(http.get(f"/jobs/{i}").json()["status"] == "succeeded" for i in cpu_jobs), timeout=120,
                 what="the CPU jobs sent after the cuda one", c=c)
        # Their workers count a job just after writing its status: wait for that too, so the next test's
        # before/after counts see none of these.
        wait_for(lambda: scrape_workers(c).get(done_key, 0) >= done_before + N_WORKERS, timeout=60,
                 what="the workers to count the CPU jobs", c=c)
        assert scrape(f"{c.url}/metrics")['trainserve_broker_queue_messages{queue="gpu"}'] == gpu_messages + 1
        seen = http.get(f"/jobs/{job['id']}").json()
        assert seen["status"] == "queued" and seen["attempts"] == 0
        assert "no live worker consumes the 'gpu' queue" in seen["waiting_reason"]
        assert "trainserve-server worker --queues gpu" in seen["waiting_reason"]
        listed = [j for j in http.get("/jobs", params={"status": "queued"}).json()["items"] if j["id"] == job["id"]]
        assert listed[0]["waiting_reason"] == seen["waiting_reason"]
        series = scrape(f"{c.url}/metrics")
        assert series['trainserve_queue_depth{queue="gpu"}'] >= 1
        assert series['trainserve_workers{queue="gpu"}'] == 0
        assert series['trainserve_workers{queue="cpu"}'] == N_WORKERS
        assert not any(line.get("job_id") == job["id"] for line in c.worker_log_lines())
        assert http.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_a_gpu_worker_refuses_to_start_without_cuda(cluster: Cluster) -> None:
    # CUDA hidden from the process, so this holds on a GPU host too: there it is what a host whose driver is
    # missing or whose devices are all taken looks like.
    env = {**cluster.env, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "service.cli", "worker", "--queues", "gpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no usable CUDA device" in done.stderr


def test_prometheus_series_move_with_jobs_and_predictions(cluster: Cluster) -> None:
    c = cluster
    api_before, workers_before = scrape(f"{c.url}/metrics"), scrape_workers(c)
    with c.client() as http:
        job = http.post("/jobs", json=small_spec(7)).json()
        wait_for(lambda: http.get(f"/jobs/{job['id']}").json()["status"] == "succeeded", timeout=60,
                 what="the job", c=c)
        rows = [[0.1] * 32, [0.2] * 32]
        for _ in range(3):
            assert http.post("/predict", json={"job_id": job["id"], "inputs": rows}).status_code == 200
    api, workers = scrape(f"{c.url}/metrics"), scrape_workers(c)

    def moved(series: dict[str, float], before: dict[str, float], key: str) -> float:
        return series.get(key, 0) - before.get(key, 0)

    assert moved(api, api_before, 'trainserve_http_requests_total{method="POST",route="/jobs",status="201"}') == 1
    assert moved(api, api_before, 'trainserve_http_request_duration_seconds_count{method="POST",route="/predict"}') == 3
    assert moved(api, api_before, 'trainserve_jobs{status="succeeded"}') >= 1
    assert moved(api, api_before, "trainserve_model_cache_misses_total") >= 1
    assert moved(api, api_before, "trainserve_model_cache_hits_total") >= 2
    assert moved(api, api_before, 'trainserve_predict_duration_seconds_count{cache="hit"}') >= 2
    assert moved(api, api_before, "trainserve_predict_rows_total") == 6
    assert 'trainserve_broker_queue_messages{queue="cpu"}' in api
    assert moved(workers, workers_before, 'trainserve_worker_jobs_total{status="succeeded"}') == 1
    assert moved(workers, workers_before, "trainserve_worker_training_steps_total") == 5
    assert moved(workers, workers_before, "trainserve_worker_job_duration_seconds_count") == 1
    # Request logs are JSON lines that carry the job id of the route they served.
    api_lines = [json.loads(x) for x in (c.home / "api.log").read_text().splitlines() if x.startswith("{")]
    assert any(line.get("job_id") == job["id"] and line["message"].startswith("http.request")
               and re.search(r"route=/jobs/\{job_id\}", line["message"]) for line in api_lines)


def test_a_stopping_worker_hands_its_job_back_to_another(cluster: Cluster) -> None:
    """Scaling down (SIGTERM, as `docker compose up --scale worker=2` sends) must neither wait for a job that may
    run for hours nor leave it until its lease runs out: the job goes back to the queue and another worker
    resumes it. Runs last in this module: it stops one of the three workers."""
    c = cluster
    with c.client() as http:
        job = http.post("/jobs", json=long_spec()).json()
        wait_for(lambda: http.get(f"/jobs/{job['id']}").json()["status"] == "running", timeout=60,
                 what="the job to start", c=c)
        owner_log = wait_for(lambda: next((line["_log"] for line in c.worker_log_lines()
                                           if line["message"].startswith("job.started")
                                           and line["job_id"] == job["id"]), None), timeout=30, what="its log", c=c)
        proc = c.procs[1 + [p.name for p in c.worker_logs].index(owner_log)]
        os.killpg(proc.pid, 15)
        proc.wait(timeout=120)  # a deadline, not a measure: the job itself would run for many minutes
        # The worker stopped because it handed the job back, not because the job ended; attempts staying 1
        # below shows no lease ran out either (a lease lost to a dead worker counts an attempt).
        assert any(line["message"].startswith("job.handed_back") and line["job_id"] == job["id"]
                   for line in c.worker_log_lines())
        assert http.get(f"/jobs/{job['id']}").json()["status"] in ("queued", "running")

        def resumed_elsewhere() -> bool:
            return any(line["message"].startswith("job.started") and line["job_id"] == job["id"]
                       and line["_log"] != owner_log for line in c.worker_log_lines())

        wait_for(resumed_elsewhere, timeout=60, what="another worker to take the job", c=c)
        seen = http.get(f"/jobs/{job['id']}").json()
        assert seen["status"] == "running"
        assert seen["attempts"] == 1, "a handed-back delivery does not count against TRAINSERVE_MAX_ATTEMPTS"
        handed = [line for line in c.worker_log_lines() if line["message"].startswith("job.handed_back")]
        assert [line["job_id"] for line in handed] == [job["id"]] and handed[0]["_log"] == owner_log
        assert len(http.get("/workers").json()["items"]) == N_WORKERS - 1  # it withdrew from the registry
        http.post(f"/jobs/{job['id']}/cancel")
        wait_for(lambda: http.get(f"/jobs/{job['id']}").json()["status"] == "cancelled", timeout=60,
                 what="the job to stop", c=c)
