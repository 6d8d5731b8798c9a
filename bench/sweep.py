"""Sweep benchmark: early stopping (ASHA) against the same trials trained in full, and the service's overhead per
trial against Optuna driving the same training in a plain script.

On the embedded stack (SQLite + filesystem broker), with ``examples/digits_cnn.json`` and
``examples/digits_cnn_space.json`` (learning rate, first convolution's width, batch size):

- ASHA: ``POST /sweeps`` with N random trials (seed 0), objective val_accuracy (max), pruner ``asha`` (reduction
  factor 3), once per grace period ``min_epochs`` (1 and 3: how early the first cut may come);
- full: the same sweep without a pruner. Random search proposes trial n from (seed, n) alone, so both sweeps
  train the same N configurations; the difference is only where ASHA stopped a trial;
- Optuna in-process: a plain script, an Optuna study fed those same N configurations (``enqueue_trial``), each
  trained by ``worker.engine.fit()`` called directly, the digits data loaded once.

Goals (issue 13): ASHA's best val_accuracy within half a point of the full sweep's, with at most half the optimizer
steps. Run ``python -m bench.sweep [--quick] [--trials N] [--epochs E]`` from the repository root. A benchmark,
not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from bench._report import Row, header, load_average, rows_table, write_json
from bench._stack import NO_QUOTAS, timestamp, trainserve
from service.nets import build_model
from service.spec import JobSpec
from service.sweeps.space import parse_path, with_params
from service.sweeps.study import distributions
from worker.data import load_data
from worker.engine import fit

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "examples" / "digits_cnn.json"
SPACE_PATH = ROOT / "examples" / "digits_cnn_space.json"
OBJECTIVE = "val_accuracy"
REDIS_DB = 10  # unused on the embedded stack; named for symmetry with the other benchmarks


def sweep_body(spec: dict[str, Any], space: dict[str, Any], *, trials: int, parallel: int, seed: int,
               pruner: str, min_epochs: int = 1) -> dict[str, Any]:
    return {"name": f"bench-sweep-{pruner}", "spec": spec, "space": space,
            "search": {"method": "random", "trials": trials, "parallel": parallel, "seed": seed},
            "objective": {"metric": OBJECTIVE, "mode": "max"},
            "pruner": {"type": pruner, "min_epochs": min_epochs, "reduction_factor": 3}}


def run_sweep(client: httpx.Client, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """The finished sweep, each trial with its job's optimizer steps, and the sweep's wall time (server clock)."""
    r = client.post("/sweeps", json=body)
    r.raise_for_status()
    sweep_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        sweep = client.get(f"/sweeps/{sweep_id}").json()
        if sweep["status"] in ("succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"sweep {sweep_id} still {sweep['status']} after {timeout}s")
        time.sleep(0.5)
    for trial in sweep["trials"]:
        trial["steps"] = int(client.get(f"/jobs/{trial['job_id']}").json()["progress"]["step"])
    sweep["wall_s"] = timestamp(sweep["finished_at"]) - timestamp(sweep["created_at"])
    return dict(sweep)


def run_optuna(spec: dict[str, Any], space: dict[str, Any], configurations: list[dict[str, Any]]) -> dict[str, Any]:
    """Optuna driving fit() in this process over the given configurations, one after another."""
    paths = {key: parse_path(key) or [] for key in space}
    dists = distributions(space)  # the service's own, so a value means the same on both sides
    data = load_data(JobSpec.model_validate(spec))  # once: the space changes nothing the data depends on
    input_shape = tuple(data.x_train.shape[1:])
    steps: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, dist) for key, dist in dists.items()}
        trial_spec = JobSpec.model_validate(with_params(spec, params, paths))
        values: list[float] = []
        result = fit(build_model(trial_spec, input_shape), trial_spec, data,
                     on_points=lambda points: values.extend(p.value for p in points if p.name == OBJECTIVE))
        steps.append(result.steps)
        return max(values)

    warm = JobSpec.model_validate({**spec, "training": {**spec["training"], "epochs": 1}})
    fit(build_model(warm, input_shape), warm, data)  # warm-up, untimed: the worker's first trial is untimed too
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for params in configurations:
        study.enqueue_trial(params)  # the very trials the service ran
    started = time.perf_counter()
    study.optimize(objective, n_trials=len(configurations))
    return {"wall_s": time.perf_counter() - started, "best": study.best_value, "steps": steps,
            "values": [t.value for t in study.trials]}


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


def table_rows(ashas: dict[int, dict[str, Any]], full: dict[str, Any], script: dict[str, Any]) -> list[Row]:
    n = len(full["trials"])
    best_full = full["best"]["value"] * 100 if full["best"] else None
    steps_full = sum(t["steps"] for t in full["trials"])
    rows: list[Row] = []
    for grace, asha in ashas.items():
        name = f"ASHA, min_epochs {grace}"
        best = asha["best"]["value"] * 100 if asha["best"] else None
        pruned = sum(t["status"] == "pruned" for t in asha["trials"])
        rows += [
            Row(f"best {OBJECTIVE}, {name} (%)", best, f"the {n} trials in full", best_full, unit="points",
                digits=2, note="goal: within 0.5 points"),
            Row(f"optimizer steps, {name}", sum(t["steps"] for t in asha["trials"]), f"the {n} trials in full",
                steps_full, digits=0, note=f"goal: at most 0.50x; {pruned} of {n} trials pruned"),
            Row(f"trainserve wall per trial, {name} (s)", asha["wall_s"] / n, "trainserve, full (s)",
                full["wall_s"] / n, unit="s", digits=2, note="what early stopping saves per trial"),
        ]
    return rows + [
        Row("trainserve wall per trial, full (s)", full["wall_s"] / n, "Optuna + fit() in-process (s)",
            script["wall_s"] / n, unit="s", digits=2, note="the difference: the service's overhead per trial"),
        Row(f"best {OBJECTIVE}, Optuna in-process (%)", script["best"] * 100, "trainserve, full", best_full,
            unit="points", digits=2, note="the same configurations: the same training"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 trials of 1 epoch")
    parser.add_argument("--trials", type=int, default=None, help="trials per sweep (default 12)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the example's 15)")
    parser.add_argument("--parallel", type=int, default=1, help="trials at once in each sweep (default 1)")
    parser.add_argument("--min-epochs", default="1,3", help="ASHA grace periods to run, comma-separated (default 1,3)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON (bench/results/sweep.json)")
    args = parser.parse_args(argv)
    trials = args.trials or (2 if args.quick else 12)
    spec, space = json.loads(SPEC_PATH.read_text()), json.loads(SPACE_PATH.read_text())
    if args.epochs or args.quick:
        spec["training"]["epochs"] = args.epochs or 1
    epochs = spec["training"]["epochs"]
    graces = [g for g in (int(x) for x in args.min_epochs.split(",")) if g <= epochs]
    started, load = time.perf_counter(), load_average()

    with trainserve("embedded", redis_db=REDIS_DB, env=NO_QUOTAS) as server, server.client(timeout=60) as client:
        timeout = 600 + 120 * trials * epochs
        # Warm-up, untimed: the worker starts after the API, and its first training pays torch's first-call costs.
        warm = {**spec, "training": {**spec["training"], "epochs": 1}}
        run_sweep(client, sweep_body(warm, space, trials=1, parallel=1, seed=99, pruner="none"), timeout=timeout)
        ashas = {grace: run_sweep(client, sweep_body(spec, space, trials=trials, parallel=args.parallel, seed=0,
                                                     pruner="asha", min_epochs=grace), timeout=timeout)
                 for grace in graces}
        full = run_sweep(client, sweep_body(spec, space, trials=trials, parallel=args.parallel, seed=0,
                                            pruner="none"), timeout=timeout)
    same = all([t["params"] for t in asha["trials"]] == [t["params"] for t in full["trials"]]
               for asha in ashas.values())
    script = run_optuna(spec, space, [t["params"] for t in full["trials"]])
    rows = table_rows(ashas, full, script)

    print(header("bench.sweep", load, args.quick))
    print(f"{trials} random trials of {epochs} epochs on digits (seed 0, {args.parallel} at a time), embedded stack,"
          f" ASHA with reduction factor 3; every sweep proposed the same trials: {same}\n")
    print(rows_table(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    payload = {"quick": args.quick, "trials": trials, "epochs": epochs, "parallel": args.parallel,
               "same_trials": same, "load_average_start": load, "load_average_end": load_average(),
               "rows": [r.to_json() for r in rows], "asha": {str(g): a for g, a in ashas.items()}, "full": full, "optuna_in_process": script}
    write_json("sweep", payload, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
