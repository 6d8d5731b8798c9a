"""Queue benchmark: submit-to-running latency and no-op job throughput, against a raw Redis queue.

Peers, all measured in this one run on this machine:

- floor: a raw Redis LPUSH -> BRPOP between two processes (``bench._redis_floor``) on the same Redis server.
- Celery probe: a bare Celery worker with trainserve's own Celery configuration (``bench._celery_probe``) on
  each broker: send_task -> task body, which is the broker and transport options alone.
- trainserve: ``POST /jobs`` of the seed example with one epoch -> the job's ``started_at`` (set by the worker's
  claim, as the task body begins), on PostgreSQL + Redis and on the embedded SQLite + filesystem broker. The
  job's ``created_at`` (set by the API as it stores the job) splits that into the API's part and the rest.

Throughput sends a burst of messages / tasks / jobs and counts from the first one's start to the last one's end.
Run ``python -m bench.queue [--quick]`` from the repository root. A benchmark, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench._redis_floor import ACKS, QUEUE, RESULT
from bench._report import Row, header, load_average, percentile, rows_table, write_json
from bench._stack import NO_QUOTAS, STACK_TITLES, STACKS, cpu_seconds, redis_url, seed_spec, submit, timestamp, trainserve, \
    wait_finished
from service.queue import celery_config, make_celery
from service.settings import Settings
from service.localstack import stop_server

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 10
WARMUP = 5
BURST_SEQ = 1_000_000  # sequence numbers of throughput messages start here, after the latency samples'
BROKERS = {"postgres": "redis", "embedded": "filesystem"}


@dataclass
class Sizes:
    samples: int  # latency samples per contender
    burst: int  # messages / tasks / jobs per throughput run
    idle_s: float  # how long a resting worker's CPU is watched
    jitter_s: float  # the longest random pause before a latency sample

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        jitter = filesystem_polling_s()
        return cls(20, 30, 2.0, jitter) if quick else cls(100, 100, 5.0, jitter)


def filesystem_polling_s() -> float:
    """How often an idle worker on the filesystem broker looks for messages, as trainserve configures it."""
    with tempfile.TemporaryDirectory() as tmp:
        options = celery_config(Settings(home=Path(tmp), broker_url="filesystem://"))["broker_transport_options"]
    return float(options["polling_interval"])


@dataclass
class Measured:
    latency_ms: list[float]  # one per sample, sequential, on an idle consumer
    per_s: float  # throughput of the burst
    idle_cpu_percent: float | None = None  # of one core, while nothing is queued
    parts_ms: dict[str, list[float]] = field(default_factory=dict)  # named parts of each latency sample

    def p(self, q: float, part: str | None = None) -> float:
        return percentile(self.parts_ms[part] if part else self.latency_ms, q)

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "p50_ms": self.p(50), "p99_ms": self.p(99), "per_s": self.per_s,
                "idle_cpu_percent": self.idle_cpu_percent, "parts_ms": self.parts_ms,
                "parts_p50_ms": {k: self.p(50, k) for k in self.parts_ms}}


def pause(sizes: Sizes) -> None:
    """A random wait before each latency sample. A polling consumer (the filesystem broker) looks for messages
    every polling interval, counted from when it went idle: without the jitter every sample would land at the
    same point of that cycle and show one fixed delay instead of its spread."""
    time.sleep(random.uniform(0, sizes.jitter_s))


def idle_cpu_percent(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds * 100


# --- floor: raw Redis ---------------------------------------------------------------------------------


def measure_floor(sizes: Sizes) -> Measured:
    url = redis_url(REDIS_DB)
    client = redis.Redis.from_url(url)
    consumer = subprocess.Popen([sys.executable, "-m", "bench._redis_floor", url], cwd=ROOT, start_new_session=True)
    try:
        for seq in range(WARMUP + sizes.samples):  # one message at a time: the consumer is idle when each arrives
            pause(sizes)
            client.lpush(QUEUE, f"{seq} {time.time()!r}")
            if client.brpop([ACKS], timeout=30) is None:
                raise RuntimeError("the Redis floor consumer does not answer")
        for seq in range(BURST_SEQ, BURST_SEQ + sizes.burst):
            client.lpush(QUEUE, f"{seq} {time.time()!r}")
        client.lpush(QUEUE, "stop")
        answer = client.brpop([RESULT], timeout=60)
    finally:
        stop_server(consumer)  # it has exited after "stop" unless something failed
    if answer is None:
        raise RuntimeError("the Redis floor consumer sent no result")
    received: list[list[float]] = json.loads(answer[1])
    latency = [(got - sent) * 1000 for seq, sent, got in received if WARMUP <= seq < BURST_SEQ]
    burst = [(sent, got) for seq, sent, got in received if seq >= BURST_SEQ]
    return Measured(latency, len(burst) / (max(g for _, g in burst) - min(s for s, _ in burst)))


# --- middle: a bare Celery worker with trainserve's configuration -------------------------------------


class ProbeLog:
    """The probe worker's output file, read as it grows: {seq: time.time() as the task body began}."""

    def __init__(self, path: Path) -> None:
        path.touch()
        self._file = open(path)
        self.started: dict[int, float] = {}
        self._partial = ""  # a line the probe was still writing when we read

    def wait_for(self, seq: int, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while seq not in self.started:
            *lines, self._partial = (self._partial + self._file.read()).split("\n")
            for line in lines:
                number, when = line.split()
                self.started[int(number)] = float(when)
            if seq not in self.started:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Celery probe never ran task {seq}")
                time.sleep(0.0005)
        return self.started[seq]

    def close(self) -> None:
        self._file.close()


@contextmanager
def celery_probe(broker: str, home: Path) -> Iterator[tuple[Any, ProbeLog, int]]:
    """(sender app, the probe's log, the probe worker's pid), the worker ready."""
    broker_url = redis_url(REDIS_DB) if broker == "redis" else "filesystem://"
    env = {**os.environ, "TRAINSERVE_HOME": str(home), "TRAINSERVE_BROKER_URL": broker_url,
           "BENCH_PROBE_OUT": str(home / "probe.out")}
    sender = make_celery(Settings(home=home, broker_url=broker_url), "bench-sender")
    log = ProbeLog(home / "probe.out")
    with open(home / "probe.log", "wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench._celery_probe", "worker", "--queues", "cpu", "--pool", "solo",
             "--concurrency", "1", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sender.send_task("bench.probe", args=[-1], queue="cpu")
        log.wait_for(-1, timeout=120)  # the worker is up and consuming
        yield sender, log, worker.pid
    finally:
        log.close()
        stop_server(worker)


def measure_probe(broker: str, sizes: Sizes) -> Measured:
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp, celery_probe(broker, Path(tmp)) as (app, log, pid):
        idle = idle_cpu_percent(pid, sizes.idle_s)
        latency = []
        for seq in range(WARMUP + sizes.samples):
            pause(sizes)
            sent = time.time()
            app.send_task("bench.probe", args=[seq], queue="cpu")
            began = log.wait_for(seq)
            if seq >= WARMUP:
                latency.append((began - sent) * 1000)
        first = time.time()
        for seq in range(BURST_SEQ, BURST_SEQ + sizes.burst):
            app.send_task("bench.probe", args=[seq], queue="cpu")
        last = max(log.wait_for(seq) for seq in range(BURST_SEQ, BURST_SEQ + sizes.burst))
    return Measured(latency, sizes.burst / (last - first), idle)


# --- trainserve ---------------------------------------------------------------------------------------


def measure_trainserve(stack: str, sizes: Sizes) -> Measured:
    spec = seed_spec(epochs=1, name="bench-queue")
    with trainserve(stack, redis_db=REDIS_DB, env=NO_QUOTAS) as server, server.client() as client:
        for _ in range(WARMUP):  # the API answers before the worker is up: these wait for it too
            wait_finished(client, submit(client, spec)["id"], timeout=120)
        idle = idle_cpu_percent(server.worker_pid(), sizes.idle_s)
        parts: dict[str, list[float]] = {"POST answered": [], "API: POST -> stored": [], "stored -> running": []}
        latency = []
        for _ in range(sizes.samples):
            pause(sizes)
            before = time.time()
            job = submit(client, spec)
            answered = time.time()
            # The first poll comes after the job has most likely started: polls take CPU from the worker.
            done = wait_finished(client, job["id"], first_wait=0.05)
            started, stored = timestamp(done["started_at"]), timestamp(done["created_at"])
            latency.append((started - before) * 1000)
            parts["POST answered"].append((answered - before) * 1000)
            parts["API: POST -> stored"].append((stored - before) * 1000)
            parts["stored -> running"].append((started - stored) * 1000)
        ids = [submit(client, spec)["id"] for _ in range(sizes.burst)]
        jobs = [wait_finished(client, job_id, poll=0.1) for job_id in ids]
    first = min(timestamp(j["started_at"]) for j in jobs)
    last = max(timestamp(j["finished_at"]) for j in jobs)
    return Measured(latency, sizes.burst / (last - first), idle, parts)


# --- report -------------------------------------------------------------------------------------------


FLOOR = "raw Redis LPUSH -> BRPOP"


def latency_rows(title: str, got: Measured, peer: str, floor: Measured, note: str = "") -> list[Row]:
    return [Row(f"{title} p{q} (ms)", got.p(q), f"{peer} p{q}", floor.p(q), unit="ms", digits=2, note=note)
            for q in (50, 99)]


def table_rows(results: dict[str, Measured]) -> list[Row]:
    floor = results["floor"]
    rows = latency_rows("raw Redis LPUSH -> BRPOP", floor, FLOOR, floor, "the floor itself")
    for stack in STACKS:
        broker = BROKERS[stack]
        probe, served = results[f"probe {broker}"], results[stack]
        idle = f"worker idle CPU {served.idle_cpu_percent:.1f}% of a core"
        rows += latency_rows(f"trainserve submit -> running, {STACK_TITLES[stack]}", served, FLOOR, floor, idle)
        rows += latency_rows(f"Celery probe send_task -> task body, {broker}", probe, FLOOR, floor,
                             f"probe idle CPU {probe.idle_cpu_percent:.1f}% of a core")
        rows.append(Row(f"of which stored -> running p50 (ms), {STACK_TITLES[stack]}", served.p(50, "stored -> running"),
                        f"Celery probe send_task -> task body p50, {broker}", probe.p(50), unit="ms", digits=2,
                        note="commit, enqueue, delivery, claim"))
        rows.append(Row(f"of which POST -> stored p50 (ms), {STACK_TITLES[stack]}", served.p(50, "API: POST -> stored"),
                        f"{FLOOR} p50", floor.p(50), unit="ms", digits=2,
                        note=f"HTTP, auth, checks, quotas; POST answered after {served.p(50, 'POST answered'):.1f} ms"))
    rows.append(Row("raw Redis messages/s", floor.per_s, FLOOR, floor.per_s, unit="/s", digits=0, note="the floor"))
    for stack in STACKS:
        broker = BROKERS[stack]
        rows.append(Row(f"trainserve no-op jobs/s, {STACK_TITLES[stack]}", results[stack].per_s, f"{FLOOR} messages/s",
                        floor.per_s, unit="/s", digits=1, note="seed example, 1 epoch, one worker"))
        rows.append(Row(f"Celery probe no-op tasks/s, {broker}", results[f"probe {broker}"].per_s,
                        f"{FLOOR} messages/s", floor.per_s, unit="/s", digits=1))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON (bench/results/queue.json)")
    args = parser.parse_args(argv)
    sizes = Sizes.for_run(args.quick)
    started, load = time.perf_counter(), load_average()

    results: dict[str, Measured] = {"floor": measure_floor(sizes)}
    for stack in STACKS:
        results[f"probe {BROKERS[stack]}"] = measure_probe(BROKERS[stack], sizes)
        results[stack] = measure_trainserve(stack, sizes)
    rows = table_rows(results)

    print(header("bench.queue", load, args.quick))
    print(f"{sizes.samples} sequential latency samples per row, bursts of {sizes.burst}\n")
    print(rows_table(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    write_json("queue", {"quick": args.quick, "sizes": vars(sizes), "load_average_start": load,
                         "load_average_end": load_average(), "rows": [r.to_json() for r in rows],
                         "measured": {k: v.to_json() for k, v in results.items()}}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
