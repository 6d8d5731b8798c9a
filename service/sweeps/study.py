"""Optuna, rebuilt on demand: the sweep's state lives in our tables, and each decision (the next trial's params,
prune or not) is made by an in-memory study rebuilt from the stored trials, so any API or worker process can
decide, a sweep goes on across restarts, and the same sweep with the same seed proposes the same trials."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Job, MetricPoint, Sweep
from service.sweeps.space import parse_param

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say what happened, with ids

_STATES = {"succeeded": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
           "cancelled": TrialState.FAIL, "queued": TrialState.RUNNING, "running": TrialState.RUNNING}


@dataclass
class StoredTrial:
    """A trial as our tables hold it: its job, params, status, and the objective at each epoch end."""

    number: int
    job_id: str
    params: dict[str, Any]
    status: str
    system_attrs: dict[str, Any]
    epochs: dict[int, float] = field(default_factory=dict)  # epoch -> objective at its end

    def value(self, mode: str) -> float | None:
        """The trial's objective: its best epoch-end value."""
        if not self.epochs:
            return None
        return max(self.epochs.values()) if mode == "max" else min(self.epochs.values())


def load_trials(session: Session, sweep: Sweep) -> list[StoredTrial]:
    rows = session.execute(
        select(Job.id, Job.status, Job.trial, Job.trial_number)
        .where(Job.sweep_id == sweep.id).order_by(Job.trial_number)
    ).all()
    trials = [StoredTrial(number=int(r.trial_number), job_id=r.id, params=dict((r.trial or {}).get("params", {})),
                          status=r.status, system_attrs=dict((r.trial or {}).get("system_attrs", {})))
              for r in rows]
    by_job = {t.job_id: t for t in trials}
    if by_job:
        # The objective's epoch-end value is the last point of each epoch (val_* have one per epoch).
        last_step: dict[tuple[str, int], int] = defaultdict(lambda: -1)
        for point in session.execute(
            select(MetricPoint.job_id, MetricPoint.epoch, MetricPoint.step, MetricPoint.value)
            .where(MetricPoint.job_id.in_(list(by_job)), MetricPoint.name == sweep.objective["metric"])
        ):
            key = (point.job_id, point.epoch)
            if point.step > last_step[key]:
                last_step[key] = point.step
                by_job[point.job_id].epochs[int(point.epoch)] = float(point.value)
    return trials


def distributions(space: dict[str, Any]) -> dict[str, BaseDistribution]:
    return {key: parse_param(key, raw, None).distribution() for key, raw in space.items()}


def trial_seed(sweep: Sweep, number: int) -> int:
    # One seed per (sweep seed, trial number): a proposal does not depend on which process asked, or when.
    return (int(sweep.search.get("seed") or 0) * 1_000_003 + number) % (2**32)


def make_sampler(sweep: Sweep, number: int) -> BaseSampler:
    method, seed = sweep.search["method"], trial_seed(sweep, number)
    if method == "grid":
        # The seed shuffles the grid, and the stored grid_ids index that order: one seed for the whole sweep.
        grid = {key: list(raw["choice"]) for key, raw in sweep.space.items()}
        return GridSampler(grid, seed=int(sweep.search.get("seed") or 0))
    if method == "tpe":
        return TPESampler(seed=seed)
    return RandomSampler(seed=seed)


def make_pruner(sweep: Sweep) -> BasePruner:
    pruner = sweep.pruner
    kind, min_epochs = pruner.get("type", "none"), int(pruner.get("min_epochs", 1))
    if kind == "median":
        return MedianPruner(n_startup_trials=int(pruner.get("startup_trials", 1)), n_warmup_steps=min_epochs - 1)
    if kind == "asha":
        return SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=int(pruner.get("reduction_factor", 3)))
    return NopPruner()


def build_study(sweep: Sweep, trials: list[StoredTrial], *, number: int = 0,
                cut: tuple[str, int] | None = None) -> optuna.Study:
    """An in-memory study holding every stored trial. `cut` = (job_id, epoch): that trial's points after the
    epoch are left out, so a prune decision sees what it would have seen at that epoch's end."""
    study = optuna.create_study(direction="maximize" if sweep.objective["mode"] == "max" else "minimize",
                                sampler=make_sampler(sweep, number), pruner=make_pruner(sweep))
    dists = distributions(sweep.space)
    mode = sweep.objective["mode"]
    for trial in trials:
        state = _STATES.get(trial.status, TrialState.FAIL)
        epochs = trial.epochs
        if cut is not None and trial.job_id == cut[0]:
            epochs = {e: v for e, v in epochs.items() if e <= cut[1]}
        value = trial.value(mode)
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL  # it never reported its objective: nothing to learn from
        study.add_trial(create_trial(
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            params={k: v for k, v in trial.params.items() if k in dists},
            distributions={k: d for k, d in dists.items() if k in trial.params},
            intermediate_values=epochs,
            system_attrs=trial.system_attrs,
        ))
    return study


def frozen(study: optuna.Study, index: int) -> FrozenTrial:
    return study.get_trials(deepcopy=False)[index]
