"""Memory benchmark: resident memory of the API and the worker at rest, under load, and with a bounded model cache.

On each stack, with TRAINSERVE_MODEL_CACHE_SIZE set small, it measures RSS (the process and its children) of
the API and of the worker:

- at rest, after one job has run, against a fresh Python process that has only imported torch (the least any
  process serving a torch model holds);
- under load, the peak while the worker trains a wide MLP and clients send /predict requests at the same
  time, against the same process just before (with the model cache full);
- the model cache: the API's RSS after predicting with 1, CACHE_SIZE and 3 x CACHE_SIZE distinct jobs' models
  (each 7.1 MiB of weights). A bounded cache plateaus: the last ratio stays near 1.0x, where an unbounded one
  would grow by 2 x CACHE_SIZE x 7.1 MiB.

Run ``python -m bench.memory [--quick]`` from the repository root. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench._report import Row, header, load_average, rows_table, write_json
from bench._stack import NO_QUOTAS, STACK_TITLES, STACKS, api_pid, rss_bytes, seed_spec, submit, trainserve, wait_finished
from service.localstack import LiveServer

REDIS_DB = 12
CACHE_SIZE = 4
WIDTHS = (784, 1024, 1024, 10)  # the wide MLP: 1.9 M parameters
WEIGHT_BYTES = 4 * sum(w_in * w_out + w_out for w_in, w_out in zip(WIDTHS, WIDTHS[1:]))  # float32
MIB = 1024 * 1024


def wide_spec(name: str, *, n_samples: int, epochs: int, batch_size: int) -> dict[str, Any]:
    """The wide MLP on synthetic classification data; plain SGD, so checkpoints carry no optimizer state."""
    layers: list[dict[str, Any]] = []
    for i, width in enumerate(WIDTHS[1:]):
        if i:
            layers.append({"type": "ReLU"})
        layers.append({"type": "Linear", "out_features": width})
    layers[0]["in_features"] = WIDTHS[0]
    return {
        "name": name,
        "model": {"layers": layers},
        "loss": {"type": "CrossEntropyLoss"},
        "optimizer": {"type": "SGD", "lr": 0.01},
        "training": {"epochs": epochs, "batch_size": batch_size, "seed": 0},
        "data": {"source": "synthetic", "kind": "classification", "n_samples": n_samples, "n_features": WIDTHS[0],
                 "n_classes": WIDTHS[-1]},
    }


def torch_process_rss() -> int:
    """RSS of a fresh interpreter right after `import torch`."""
    code = ("import torch\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')))")
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout) * 1024


def predict_body(job_id: str, rows: int = 8) -> dict[str, Any]:
    rng = random.Random(0)
    return {"job_id": job_id, "checkpoint": "latest",
            "inputs": [[round(rng.random(), 3) for _ in range(WIDTHS[0])] for _ in range(rows)]}


def predict(client: httpx.Client, job_id: str) -> None:
    answer = client.post("/predict", json=predict_body(job_id))
    if answer.status_code != 200:
        raise RuntimeError(f"/predict answered {answer.status_code}: {answer.text}")


@contextmanager
def peak_rss(pids: dict[str, int], every: float = 0.05) -> Iterator[dict[str, int]]:
    """The largest RSS seen for each named process tree while the block runs (sampled every `every` s)."""
    peaks = {name: rss_bytes(pid) for name, pid in pids.items()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every):
            for name, pid in pids.items():
                peaks[name] = max(peaks[name], rss_bytes(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        done.set()
        sampler.join()


def keep_predicting(server: LiveServer, job_id: str, stop: threading.Event) -> Callable[[], int]:
    """Starts a client thread sending /predict until `stop` is set; returns a function giving its request count."""
    count = [0]

    def run() -> None:
        with server.client() as client:
            while not stop.is_set():
                predict(client, job_id)
                count[0] += 1

    threading.Thread(target=run, daemon=True).start()
    return lambda: count[0]


def measure_stack(stack: str, quick: bool) -> dict[str, Any]:
    n_models = 3 * CACHE_SIZE
    env = {"TRAINSERVE_MODEL_CACHE_SIZE": str(CACHE_SIZE), **NO_QUOTAS}
    with trainserve(stack, redis_db=REDIS_DB, env=env) as server, server.client(timeout=120) as client:
        wait_finished(client, submit(client, seed_spec(epochs=1))["id"], timeout=120)  # the worker is up
        pids = {"api": api_pid(server), "worker": server.worker_pid()}
        time.sleep(1.0)
        rest = {name: rss_bytes(pid) for name, pid in pids.items()}

        models = [submit(client, wide_spec(f"bench-memory-{i}", n_samples=256, epochs=1, batch_size=256))["id"]
                  for i in range(n_models)]
        for job_id in models:
            wait_finished(client, job_id, poll=0.1)
        after: list[int] = []  # the API's RSS after predicting with models[0], models[0:2], ...
        for job_id in models:
            predict(client, job_id)
            after.append(rss_bytes(pids["api"]))
        for job_id in models:  # a second pass: every request now evicts the least recently used model
            predict(client, job_id)
        before_load = {name: rss_bytes(pid) for name, pid in pids.items()}

        busy = wide_spec("bench-memory-load", n_samples=1024 if quick else 4096, epochs=2, batch_size=64)
        stop = threading.Event()
        with peak_rss(pids) as peaks:
            counters = [keep_predicting(server, job_id, stop) for job_id in models[:2]]
            wait_finished(client, submit(client, busy)["id"], poll=0.2, timeout=600)
            stop.set()
        requests = sum(counter() for counter in counters)
    return {"rest": rest, "before_load": before_load, "peak": dict(peaks), "after_predicts": after,
            "predicts_under_load": requests}


def table_rows(results: dict[str, Any], floor: int) -> list[Row]:
    rows: list[Row] = []
    for stack in STACKS:
        got, title = results[stack], STACK_TITLES[stack]
        rest, before, peak, after = got["rest"], got["before_load"], got["peak"], got["after_predicts"]
        for name in ("api", "worker"):
            rows.append(Row(f"{name} RSS at rest, {title} (MiB)", rest[name] / MIB, "python + import torch",
                            floor / MIB, unit="MiB"))
        for name in ("api", "worker"):
            rows.append(Row(f"{name} RSS peak under load, {title} (MiB)", peak[name] / MIB, f"{name} just before",
                            before[name] / MIB, unit="MiB",
                            note=f"training the wide MLP + {got['predicts_under_load']} /predict requests"))
        rows.append(Row(f"api RSS after {CACHE_SIZE} distinct models, {title} (MiB)", after[CACHE_SIZE - 1] / MIB,
                        "after 1 model", after[0] / MIB, unit="MiB", note="the cache filling up"))
        rows.append(Row(f"api RSS after {len(after)} distinct models, {title} (MiB)", after[-1] / MIB,
                        f"after {CACHE_SIZE} (TRAINSERVE_MODEL_CACHE_SIZE)", after[CACHE_SIZE - 1] / MIB, unit="MiB",
                        note=f"unbounded: +{(len(after) - CACHE_SIZE) * WEIGHT_BYTES / MIB:.0f} MiB of weights; after a "
                             f"second pass over all {before['api'] / MIB:.1f} MiB"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter training under load: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON (bench/results/memory.json)")
    args = parser.parse_args(argv)
    started, load = time.perf_counter(), load_average()

    floor = torch_process_rss()
    results = {stack: measure_stack(stack, args.quick) for stack in STACKS}
    rows = table_rows(results, floor)

    print(header("bench.memory", load, args.quick))
    print(f"RSS of each process tree (pages shared between processes counted in each); cache size {CACHE_SIZE}\n")
    print(rows_table(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    write_json("memory", {"quick": args.quick, "load_average_start": load, "load_average_end": load_average(),
                          "cache_size": CACHE_SIZE, "torch_process_rss": floor, "rows": [r.to_json() for r in rows],
                          "measured": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
