"""Cancel latency: POST /jobs/{id}/cancel on a running job -> the job's finished_at, on both stacks.

The worker looks for a cancel every TRAINSERVE_CANCEL_POLL_SECONDS (0.5 s by default) and stops at the next
optimizer step, then writes what it buffered and finishes; the goal is a cancel that takes effect within 1 s.
The peer is that goal itself. Run ``python -m bench.cancel [--quick]`` from the repository root. A benchmark,
not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench._report import Row, header, load_average, percentile, rows_table, write_json
from bench._stack import NO_QUOTAS, STACK_TITLES, STACKS, submit, timestamp, trainserve

GOAL_S = 1.0
REDIS_DB = 13


def running_job_spec() -> dict[str, Any]:
    """A job that runs until it is cancelled: many tiny steps."""
    return {
        "name": "bench-cancel",
        "model": {"layers": [{"type": "Linear", "out_features": 64}, {"type": "ReLU"},
                             {"type": "Linear", "out_features": 1}]},
        "loss": {"type": "MSELoss"}, "optimizer": {"type": "Adam", "lr": 0.001},
        "training": {"max_steps": 5_000_000, "batch_size": 32, "checkpoint": {"every_epochs": 100_000}},
        "data": {"source": "synthetic", "kind": "regression", "n_samples": 4096, "n_features": 32},
    }


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = dict(client.get(f"/jobs/{job_id}").json())
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise RuntimeError(f"job {job_id} not {statuses} after {timeout} s")


def cancel_latencies(stack: str, samples: int) -> list[float]:
    """Seconds from the cancel request's start to the job's finished_at, one running job at a time."""
    latencies = []
    with trainserve(stack, redis_db=REDIS_DB, env=NO_QUOTAS) as server, server.client() as client:
        for _ in range(samples):
            job = submit(client, running_job_spec())
            wait_status(client, job["id"], {"running"})
            time.sleep(0.7)  # well into training, at a random point of the cancel poll's cycle
            asked = time.time()
            client.post(f"/jobs/{job['id']}/cancel").raise_for_status()
            done = wait_status(client, job["id"], {"cancelled", "succeeded", "failed"})
            if done["status"] != "cancelled":
                raise RuntimeError(f"bench job {job['id']} ended {done['status']}")
            latencies.append(timestamp(done["finished_at"]) - asked)
    return latencies


def table_rows(results: dict[str, list[float]]) -> list[Row]:
    rows = []
    for stack, latencies in results.items():
        title = STACK_TITLES[stack]
        rows.append(Row(f"cancel -> cancelled p50, {title} (s)", statistics.median(latencies), "the goal", GOAL_S,
                        unit="s", digits=2, note=f"{len(latencies)} cancels of a running job"))
        rows.append(Row(f"cancel -> cancelled max, {title} (s)", max(latencies), "the goal", GOAL_S, unit="s",
                        digits=2, note=f"p90 {percentile(latencies, 90):.2f} s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cancel", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON (bench/results/cancel.json)")
    args = parser.parse_args(argv)
    samples = 3 if args.quick else 12
    started, load = time.perf_counter(), load_average()
    results = {stack: cancel_latencies(stack, samples) for stack in STACKS}
    rows = table_rows(results)
    print(header("bench.cancel", load, args.quick))
    print(rows_table(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    write_json("cancel", {"quick": args.quick, "load_average_start": load, "load_average_end": load_average(),
                          "rows": [r.to_json() for r in rows], "latencies_s": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
