"""End-to-end benchmark: the seed example submitted to trainserve, against the seed article's hand-written script.

trainserve: ``POST /jobs`` with ``examples/seed_mlp.json`` -> the job's ``finished_at`` (succeeded), on
PostgreSQL + Redis and on the embedded SQLite + filesystem broker; its ``started_at`` splits that into waiting
and running. Peers, measured in the same run:

- the seed loop: the article's script as the tests run it (``service.seed_reference.seed_reference_losses``:
  the same 128 x 32 random data, the literal 100-step loop of ``service.seed_reference.hand_written_losses``), timed
  in this warm process under one torch thread, as the worker trains a model this small (and as the tests run
  it: on a busy 2-core machine two OpenMP threads make this loop up to 100 times slower);
- the script as a process: what ``OMP_NUM_THREADS=1 python seed.py`` costs, i.e. a fresh interpreter importing
  torch (timed as a subprocess) plus the seed loop.

Run ``python -m bench.e2e [--quick]`` from the repository root. A benchmark, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._report import Row, header, load_average, rows_table, write_json
from bench._stack import STACK_TITLES, STACKS, submit, timestamp, trainserve, wait_finished
from bench.train_loop import num_threads
from service.seed_reference import seed_reference_losses

ROOT = Path(__file__).resolve().parent.parent
SEED_SPEC = ROOT / "examples" / "seed_mlp.json"
REDIS_DB = 11
WARMUP = 2


def time_seed_loop(repeats: int) -> list[float]:
    times = []
    with num_threads(1):
        seed_reference_losses()  # warm-up: the first optimizer step pulls in parts of torch
        for _ in range(repeats):
            started = time.perf_counter()
            seed_reference_losses()
            times.append(time.perf_counter() - started)
    return times


def time_torch_process(repeats: int) -> list[float]:
    """Wall time of a fresh interpreter that imports torch and exits: what running a script costs before line 1."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - started)
    return times


def time_trainserve(stack: str, repeats: int) -> dict[str, list[float]]:
    spec = json.loads(SEED_SPEC.read_text())
    runs: dict[str, list[float]] = {"submit -> succeeded": [], "submit -> running": [], "running -> succeeded": []}
    with trainserve(stack, redis_db=REDIS_DB) as server, server.client() as client:
        for i in range(WARMUP + repeats):  # the warm-up also waits for the worker, which starts after the API
            before = time.time()
            job = wait_finished(client, submit(client, spec)["id"], first_wait=0.1, timeout=120)
            if i < WARMUP:
                continue
            started, finished = timestamp(job["started_at"]), timestamp(job["finished_at"])
            runs["submit -> succeeded"].append(finished - before)
            runs["submit -> running"].append(started - before)
            runs["running -> succeeded"].append(finished - started)
    return runs


def table_rows(loop: list[float], torch_process: list[float], served: dict[str, dict[str, list[float]]]) -> list[Row]:
    loop_ms = statistics.median(loop) * 1000
    script_ms = statistics.median(torch_process) * 1000 + loop_ms
    rows = [Row("the seed loop, 1 thread (ms)", loop_ms, "the seed loop", loop_ms, unit="ms", note="the peer itself"),
            Row("the script as a process (ms)", script_ms, "the seed loop", loop_ms, unit="ms",
                note=f"python -c 'import torch' {statistics.median(torch_process) * 1000:.0f} ms + the loop")]
    for stack in STACKS:
        runs = {k: statistics.median(v) * 1000 for k, v in served[stack].items()}
        title = STACK_TITLES[stack]
        rows += [
            Row(f"trainserve submit -> succeeded, {title} (ms)", runs["submit -> succeeded"],
                "the script as a process", script_ms, unit="ms"),
            Row(f"trainserve submit -> succeeded, {title} (ms)", runs["submit -> succeeded"], "the seed loop",
                loop_ms, unit="ms", note=f"waiting {runs['submit -> running']:.0f} ms (submit -> running)"),
            Row(f"of which running -> succeeded, {title} (ms)", runs["running -> succeeded"], "the seed loop",
                loop_ms, unit="ms", note="claim, data, model, 100 steps, points, checkpoint, finish"),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON (bench/results/e2e.json)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 10
    started, load = time.perf_counter(), load_average()

    served: dict[str, dict[str, list[float]]] = {}
    loop: list[float] = []
    torch_process: list[float] = []
    for stack in STACKS:  # the peers are timed between the stacks too, so a slow spell hits both sides
        loop += time_seed_loop(repeats)
        torch_process += time_torch_process(max(2, repeats // 3))
        served[stack] = time_trainserve(stack, repeats)
    rows = table_rows(loop, torch_process, served)

    print(header("bench.e2e", load, args.quick))
    print(f"median of {repeats} jobs per stack (after {WARMUP} warm-up jobs) and {len(loop)} loops\n")
    print(rows_table(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    payload: dict[str, Any] = {"quick": args.quick, "load_average_start": load, "load_average_end": load_average(),
                               "rows": [r.to_json() for r in rows], "seed_loop_s": loop,
                               "torch_import_process_s": torch_process, "trainserve_s": served}
    write_json("e2e", payload, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
