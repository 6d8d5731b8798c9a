"""GPU check, prepared to run in one go on a host with a CUDA device: a `gpu` worker trains the 784-512-256-10
classifier with `bf16-mixed`, and its samples/s is printed next to a hand-written CUDA loop on the same data.

    python -m bench.gpu_worker                       # on the GPU host (torch with CUDA installed)
    python -m bench.gpu_worker --device cpu --precision 32 --rows 4096 --epochs 3   # the same flow on a CPU

It starts `trainserve-server up` (embedded stack; its worker takes the gpu and cpu queues where CUDA works),
checks GET /workers shows a CUDA worker on the gpu queue, submits the job with training.device=cuda, and reads
the worker's own per-epoch `samples_per_s` points. The hand-written loop is what a PyTorch user writes for
this model: tensors on the device, a per-epoch shuffle, fused Adam, bf16 autocast. Both report the median
epoch after the first (which pays for CUDA kernels' first launch). Prints one Markdown table and writes
bench/results/gpu_worker.json. A benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.train_loop import CLASSIFIER, LR

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "gpu_worker.json"


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "gpu-check-784-512-256-10",
        "model": {"layers": CLASSIFIER.layers()},
        "loss": {"type": "CrossEntropyLoss"},
        "optimizer": {"type": "Adam", "lr": LR},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": 0, "device": args.device,
                     "precision": args.precision, "validation_split": 0.0},
        "data": {"source": "synthetic", "kind": "classification", "n_samples": args.rows, "n_features": 784,
                 "n_classes": 10},
    }


def run_service(args: argparse.Namespace) -> dict[str, Any]:
    from service.localstack import start_server, stop_server  # the launcher the end-to-end tests use

    with tempfile.TemporaryDirectory() as home:
        server = start_server(Path(home) / "home", env_extra={"TRAINSERVE_WORKER_METRICS_PORT": "0"}, timeout=180)
        try:
            with server.client(timeout=60) as http:
                workers = _wait_for_workers(http)
                submitted = time.monotonic()
                answer = http.post("/jobs", json=job_spec(args))
                if answer.status_code != 201:
                    raise SystemExit(f"the job was refused: {answer.status_code} {answer.text}")
                job = server.wait_for_job(answer.json()["id"], timeout=args.timeout)
                wall = time.monotonic() - submitted
                if job["status"] != "succeeded":
                    raise SystemExit(f"the job {job['status']}: {job['error']}\n{server.log_tail()}")
                points = http.get(f"/jobs/{job['id']}/metrics", params={"names": "samples_per_s"}).json()["points"]
        finally:
            stop_server(server.proc)
    per_epoch = [p["value"] for p in sorted(points, key=lambda p: p["step"])]
    return {"workers": workers, "samples_per_s_by_epoch": per_epoch, "samples_per_s": _steady(per_epoch),
            "submit_to_succeeded_s": wall}


def _wait_for_workers(http: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        items = http.get("/workers").json()["items"]
        if items:
            return list(items)
        time.sleep(0.5)
    raise SystemExit("no worker registered within 120 s")


def run_hand_written(args: argparse.Namespace) -> dict[str, Any]:
    """The loop a PyTorch user writes for this model on this device, timed per epoch."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = CLASSIFIER.build().to(device)
    x, y = CLASSIFIER.make_data(args.rows)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=device.type == "cuda")
    crit = torch.nn.CrossEntropyLoss()
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed"
           else contextlib.nullcontext())
    per_epoch = []
    for _ in range(args.epochs):
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(args.rows, device=device)
        xs, ys = x[perm], y[perm]
        for i in range(0, args.rows, args.batch_size):
            with amp:
                loss = crit(model(xs[i : i + args.batch_size]), ys[i : i + args.batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        per_epoch.append(args.rows / (time.perf_counter() - t0))
    return {"samples_per_s_by_epoch": per_epoch, "samples_per_s": _steady(per_epoch)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steady(per_epoch: list[float]) -> float:
    return statistics.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)


def device_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()} CPU (torch {torch.__version__})"


def markdown(args: argparse.Namespace, service: dict[str, Any], hand: dict[str, Any]) -> str:
    ratio = service["samples_per_s"] / hand["samples_per_s"]
    queue = "gpu" if args.device == "cuda" else "cpu"
    amp = ", bf16 autocast" if args.precision == "bf16-mixed" else ""
    lines = [
        f"784-512-256-10 classifier, {args.rows} rows x {args.epochs} epochs, batch {args.batch_size}, "
        f"{args.precision} on {device_name(args.device)}; median epoch after the first",
        "",
        "| contender | samples/s | vs hand-written |",
        "|---|---:|---:|",
        f"| trainserve worker on the `{queue}` queue (fit(), points + checkpoints on) "
        f"| {service['samples_per_s']:,.0f} | {ratio:.2f}x |",
        f"| hand-written {args.device} loop (per-epoch shuffle, Adam{amp}) | {hand['samples_per_s']:,.0f} | 1.00x |",
        "",
        f"submit-to-succeeded for the whole job: {service['submit_to_succeeded_s']:.1f} s; "
        f"worker: {service['workers'][0]['name']} queues={service['workers'][0]['queues']} "
        f"device={service['workers'][0]['device']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32"])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run this on the GPU host (or pass --device cpu --precision 32)", file=sys.stderr)
        return 3
    service = run_service(args)
    if args.device == "cuda" and not any("gpu" in w["queues"] and w["device"].startswith("cuda")
                                         for w in service["workers"]):
        print(f"no CUDA worker on the gpu queue: {service['workers']}", file=sys.stderr)
        return 1
    hand = run_hand_written(args)
    print(markdown(args, service, hand))
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({"args": vars(args), "device": device_name(args.device), "service": service,
                                        "hand_written": hand}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
