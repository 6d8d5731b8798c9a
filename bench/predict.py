"""Predict benchmark: req/s and latency of trainserve's ``POST /predict`` against the stack's floor and LitServe.

Owns the one Markdown table (plus ``bench/results/predict.json``) that backs the product's claim "a hot model
answers at >= 0.9x the throughput of a bare FastAPI + uvicorn handler running the same forward pass, with a
p50 within 20 % of it, and ahead of LitServe". Run ``python -m bench.predict`` from the repository root
(``--quick`` for a smoke run). A benchmark, not a test: nothing here asserts a time.

The model is trained by trainserve itself (784-512-256-10 on synthetic classification data, one epoch);
the floor (``bench._predict_floor``) and LitServe (``bench._predict_litserve``) load the very checkpoint
that ``GET /jobs/{id}/checkpoints/best`` returns. Every server runs in its own process group, the load
generator (``bench._predict_load``) in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "predict.json"
N_FEATURES, N_CLASSES = 784, 10
ROWS = (1, 256)
CONCURRENCY = (1, 16)
CONTENDERS = ("trainserve", "floor", "litserve")
TITLES = {"trainserve": "trainserve", "floor": "(a) floor", "litserve": "(b) LitServe"}
MEDIAN_KEYS = ("req_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")

CLASSIFIER_SPEC: dict[str, Any] = {
    "name": "bench-predict-784-512-256-10",
    "model": {"layers": [
        {"type": "Linear", "in_features": N_FEATURES, "out_features": 512}, {"type": "ReLU"},
        {"type": "Linear", "out_features": 256}, {"type": "ReLU"},
        {"type": "Linear", "out_features": N_CLASSES},
    ]},
    "loss": {"type": "CrossEntropyLoss"},
    "optimizer": {"type": "Adam", "lr": 0.001},
    "training": {"epochs": 1, "batch_size": 64, "seed": 0},
    "data": {"source": "synthetic", "kind": "classification", "n_samples": 1024, "n_features": N_FEATURES,
             "n_classes": N_CLASSES},
}


# --- servers ------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and all its descendants (API, workers, helper processes)."""
        return process_tree_cpu(self.proc.pid)


def process_tree_cpu(root: int) -> float:
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])  # fields[1] is ppid; utime and stime are fields[11] and [12]
        ticks[pid] = int(fields[11]) + int(fields[12])
    tree, grew = {root}, True
    while grew:
        found = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= found
        grew = bool(found)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def thread_env(threads: int) -> dict[str, str]:
    """The same torch intra-op thread count for every server (torch reads these when it starts)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextmanager
def trainserve_server(home: Path, threads: int) -> Iterator[tuple[Server, str]]:
    from service.localstack import start_server

    # Big batches: the service's default body limit, said here so the benchmark does not depend on it.
    live = start_server(home, env_extra={"TRAINSERVE_MAX_BODY_BYTES": str(32 * 1024 * 1024), **thread_env(threads)})
    try:
        yield Server("trainserve", live.url, live.proc, live.log_path), live.api_key
    finally:
        stop(live.proc)


@contextmanager
def peer_server(name: str, module: str, checkpoint: Path, checkpoint_id: str, workdir: Path,
                threads: int) -> Iterator[Server]:
    from service.localstack import free_port

    port = free_port()
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", module, str(checkpoint), checkpoint_id, str(port)], cwd=workdir,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **thread_env(threads)}, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_until_up(server, "/predict")
        yield server
    finally:
        stop(proc)


def wait_until_up(server: Server, path: str, timeout: float = 120) -> None:
    """Up means the port answers HTTP at all (a 405/422 to a GET is fine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_path.read_text()}")
        try:
            httpx.get(server.url + path, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{server.name} did not come up in {timeout}s:\n{server.log_path.read_text()}")


# --- the model ----------------------------------------------------------------------------------------


def train_classifier(client: httpx.Client, timeout: float = 600) -> dict[str, Any]:
    job = client.post("/jobs", json=CLASSIFIER_SPEC).raise_for_status().json()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job['id']}").raise_for_status().json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    if job["status"] != "succeeded":
        raise RuntimeError(f"the bench job ended {job['status']}: {job.get('error')}")
    return job


def download_best(client: httpx.Client, job_id: str, dest: Path) -> str:
    """Writes the best checkpoint's safetensors to ``dest``; returns its checkpoint id."""
    answer = client.get(f"/jobs/{job_id}/checkpoints/best").raise_for_status()
    dest.write_bytes(answer.content)
    return answer.headers["X-Checkpoint-Id"]


def request_body(job_id: str, n_rows: int, seed: int = 0) -> bytes:
    """``n_rows`` MNIST-like rows (pixels in [0, 1), three decimals), as trainserve's PredictRequest."""
    rng = random.Random(seed)
    rows = [[round(rng.random(), 3) for _ in range(N_FEATURES)] for _ in range(n_rows)]
    return json.dumps({"job_id": job_id, "checkpoint": "best", "inputs": rows}).encode()


def check_same_answers(servers: list[Server], headers: dict[str, str], body: bytes) -> None:
    """Fairness: every contender must give the same answer (labels equal, probabilities to float32 noise)."""
    answers = {s.name: httpx.post(s.url + "/predict", content=body, timeout=60,
                                  headers={**headers, "Content-Type": "application/json"}).raise_for_status().json()
               for s in servers}
    ref = answers["trainserve"]
    for name, answer in answers.items():
        if sorted(answer) != sorted(ref) or answer["predictions"] != ref["predictions"] \
                or answer["classes"] != ref["classes"] or answer["checkpoint_id"] != ref["checkpoint_id"]:
            raise RuntimeError(f"{name} answers differently from trainserve:\n{answer}\nvs\n{ref}")
        np.testing.assert_allclose(answer["probabilities"], ref["probabilities"], rtol=1e-4, atol=1e-6)


# --- measuring ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    rows: int
    concurrency: int


@dataclass
class CellResult:
    cell: Cell
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def median(self, name: str, key: str) -> float | None:
        values = [run[key] for run in self.runs.get(name, [])]
        return statistics.median(values) if values else None


def run_load(server: Server, headers: dict[str, str], body_file: Path, concurrency: int, warmup_s: float,
             duration_s: float) -> dict[str, Any]:
    """One measurement: the load generator in its own process; the server's CPU time over the same span."""
    spec = {"url": server.url + "/predict", "headers": headers, "body_file": str(body_file),
            "concurrency": concurrency, "warmup_s": warmup_s, "duration_s": duration_s}
    cpu0 = server.cpu_seconds()
    done = subprocess.run([sys.executable, "-m", "bench._predict_load"], input=json.dumps(spec).encode(),
                          capture_output=True, cwd=ROOT, check=False, timeout=warmup_s + duration_s + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed on {server.name}:\n{done.stderr.decode()}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["server_cpu_s"] = server.cpu_seconds() - cpu0
    result["server_cpu_ms_per_request"] = result["server_cpu_s"] * 1000 / result["requests_total"]
    if result["errors"]:
        raise RuntimeError(f"{server.name} answered {result['errors']} errors, first: {result['first_error']}")
    return result


def measure(servers: dict[str, Server], headers: dict[str, str], bodies: dict[int, Path], repeats: int,
            warmup_s: float, duration_s: float) -> list[CellResult]:
    """Every cell, every contender, ``repeats`` times; the contenders' order rotates each repeat so that a
    slow spell of the shared machine hits all of them alike."""
    results = [CellResult(Cell(r, c)) for r in ROWS for c in CONCURRENCY]
    for rep in range(repeats):
        for result in results:
            shift = rep % len(CONTENDERS)
            order = CONTENDERS[shift:] + CONTENDERS[:shift]
            for name in order:
                run = run_load(servers[name], headers, bodies[result.cell.rows], result.cell.concurrency,
                               warmup_s, duration_s)
                result.runs.setdefault(name, []).append(run)
                log.info("repeat %d rows %d conc %d %s: %.0f req/s p50 %.2f ms", rep, result.cell.rows,
                         result.cell.concurrency, name, run["req_per_s"], run["p50_ms"])
    return results


def idle_cpu_share(servers: dict[str, Server], seconds: float = 3.0) -> dict[str, float]:
    """CPU each server burns while nobody calls it: it competes with whichever server is being measured."""
    before = {name: s.cpu_seconds() for name, s in servers.items()}
    time.sleep(seconds)
    return {name: round((s.cpu_seconds() - before[name]) / seconds, 3) for name, s in servers.items()}


# --- reporting ----------------------------------------------------------------------------------------


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def goals(result: CellResult) -> dict[str, bool | None]:
    def ratio(name: str, key: str) -> float | None:
        return _ratio(result.median("trainserve", key), result.median(name, key))

    tput_floor, p50_floor = ratio("floor", "req_per_s"), ratio("floor", "p50_ms")
    tput_lit = ratio("litserve", "req_per_s")
    return {
        "throughput >= 0.9x floor": None if tput_floor is None else tput_floor >= 0.9,
        "p50 <= 1.2x floor": None if p50_floor is None else p50_floor <= 1.2,
        "throughput > LitServe": None if tput_lit is None else tput_lit > 1.0,
    }


def markdown_table(results: list[CellResult]) -> str:
    cols = ["rows/request", "concurrency"]
    for name in CONTENDERS:
        cols += [f"{TITLES[name]} req/s", f"{TITLES[name]} p50 ms", f"{TITLES[name]} p99 ms"]
    cols += ["trainserve/(a) req/s", "trainserve/(a) p50", "trainserve/(b) req/s", "goals met",
             "trainserve/(a) CPU per request"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for result in results:
        cells = [str(result.cell.rows), str(result.cell.concurrency)]
        for name in CONTENDERS:
            cells += [_fmt(result.median(name, "req_per_s"), 0), _fmt(result.median(name, "p50_ms"), 2),
                      _fmt(result.median(name, "p99_ms"), 2)]
        ts = {key: result.median("trainserve", key) for key in ("req_per_s", "p50_ms")}
        met = goals(result)
        cells += [_fmt_ratio(_ratio(ts["req_per_s"], result.median("floor", "req_per_s"))),
                  _fmt_ratio(_ratio(ts["p50_ms"], result.median("floor", "p50_ms"))),
                  _fmt_ratio(_ratio(ts["req_per_s"], result.median("litserve", "req_per_s"))),
                  f"{sum(bool(v) for v in met.values())}/{len(met)}",
                  _fmt_ratio(_ratio(result.median("trainserve", "server_cpu_ms_per_request"),
                                    result.median("floor", "server_cpu_ms_per_request")))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loadgen_note(results: list[CellResult]) -> str:
    """How much CPU the load generator took next to the server: on 2 cores they share the machine."""
    shares = []
    for result in results:
        for name, runs in result.runs.items():
            for run in runs:
                total = run["loadgen_cpu_s"] + run["server_cpu_s"]
                shares.append(run["loadgen_cpu_s"] / total if total else 0.0)
    return (f"load generator: a separate process (asyncio + uvloop, raw keep-alive HTTP/1.1) on the same 2 cores; "
            f"it used {min(shares):.0%}-{max(shares):.0%} of the CPU that it and the server used together "
            f"(median {statistics.median(shares):.0%})")


def header(repeats: int, quick: bool, warmup_s: float, duration_s: float, load: tuple[list[float], list[float]],
           body_sizes: dict[int, int], threads: int) -> str:
    import torch

    sizes = ", ".join(f"{rows} row(s) {size / 1024:,.0f} KiB" for rows, size in body_sizes.items())
    return (f"torch {torch.__version__} | {os.cpu_count()} logical CPUs | CPU: {cpu_model()} | Python "
            f"{platform.python_version()} | torch threads per server {threads} | median of {repeats} interleaved "
            f"repeats of {warmup_s:g} s warm-up + {duration_s:g} s measured per cell{' (--quick)' if quick else ''} "
            f"| request bodies: {sizes} | load average 1/5/15 min at start {load[0]}, at end {load[1]}")


def results_json(results: list[CellResult], meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "contenders": TITLES, "cells": [
        {"rows": r.cell.rows, "concurrency": r.cell.concurrency,
         "median": {name: {key: r.median(name, key) for key in MEDIAN_KEYS} for name in CONTENDERS},
         "trainserve_over_floor_req_per_s": _ratio(r.median("trainserve", "req_per_s"), r.median("floor", "req_per_s")),
         "trainserve_over_floor_p50": _ratio(r.median("trainserve", "p50_ms"), r.median("floor", "p50_ms")),
         "trainserve_over_litserve_req_per_s": _ratio(r.median("trainserve", "req_per_s"),
                                                      r.median("litserve", "req_per_s")),
         "goals": goals(r), "runs": r.runs}
        for r in results]}


# --- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2 s per cell: a ~1 minute smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per cell (default 3, quick 1)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per run (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of every server (default 1: on 2 cores two OpenMP threads per "
                             "forward pass fight the other requests and the load generator)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    repeats = args.repeats or (1 if args.quick else 3)
    duration_s = args.duration or (2.0 if args.quick else 5.0)
    warmup_s = 0.5 if args.quick else 1.0

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        trainserve, api_key = stack.enter_context(trainserve_server(workdir / "home", args.threads))
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=trainserve.url, headers=headers, timeout=60) as client:
            job = train_classifier(client)
            checkpoint_id = download_best(client, job["id"], workdir / "best.safetensors")
        log.info("trained job %s, checkpoint %s", job["id"], checkpoint_id)
        servers = {"trainserve": trainserve}
        for name, module in (("floor", "bench._predict_floor"), ("litserve", "bench._predict_litserve")):
            servers[name] = stack.enter_context(
                peer_server(name, module, workdir / "best.safetensors", checkpoint_id, workdir, args.threads))
        check_same_answers(list(servers.values()), headers, request_body(job["id"], 4, seed=1))
        bodies = {}
        for rows in ROWS:
            bodies[rows] = workdir / f"body-{rows}.json"
            bodies[rows].write_bytes(request_body(job["id"], rows))
        idle = idle_cpu_share(servers)
        load_start = load_average()
        results = measure(servers, headers, bodies, repeats, warmup_s, duration_s)
        load = (load_start, load_average())
        body_sizes = {rows: path.stat().st_size for rows, path in bodies.items()}

    print(header(repeats, args.quick, warmup_s, duration_s, load, body_sizes, args.threads))
    print()
    print(markdown_table(results))
    print()
    print(f"(a) floor: a bare FastAPI route on uvicorn, same checkpoint and answer, no auth/DB/validation. "
          f"(b) LitServe {_version('litserve')}, defaults (1 API process + 1 inference worker). "
          f"goals: trainserve/(a) req/s >= 0.90x, p50 <= 1.20x (a), req/s > (b).")
    print(loadgen_note(results))
    print(f"idle CPU share of each server before measuring (cores): {idle}")
    print(f"(total {time.perf_counter() - started:.0f} s)")

    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": args.quick, "repeats": repeats,
            "warmup_s": warmup_s, "duration_s": duration_s, "load_average_start": load[0], "load_average_end": load[1],
            "python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "body_bytes": body_sizes, "idle_cpu_share": idle, "litserve": _version("litserve"), "threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results_json(results, meta), indent=2) + "\n")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
