"""Sweep use cases: create, read, list, cancel, delete; and driving: ask for the next trials as trials end,
and decide at an epoch's end whether a trial is pruned. Trials are ordinary jobs (quotas and limits apply)."""

from __future__ import annotations

import base64
import logging
from collections import Counter
from datetime import datetime
from typing import Any

from optuna.trial import TrialState
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import jobs
from service.errors import NotFound, QuotaExceeded, SpecError, StateConflict
from service.models import Job, Sweep, utcnow
from service.schemas import (
    SweepBest,
    SweepCreate,
    SweepObjective,
    SweepPage,
    SweepPruner,
    SweepRead,
    SweepSearch,
    SweepTrial,
)
from service.settings import Settings
from service.spec import JobSpec
from service.sweeps.checks import check_sweep, planned_trials
from service.sweeps.space import parse_param, with_params
from service.sweeps.study import StoredTrial, build_study, distributions, frozen, load_trials, make_sampler

log = logging.getLogger(__name__)

Send = list[tuple[str, str]]  # (job_id, queue) pairs to hand the broker once the transaction has committed


class SweepNotFound(NotFound):
    def __init__(self, sweep_id: str):
        super().__init__(f"sweep {sweep_id} not found")


def create_sweep(session: Session, *, tenant: str, body: SweepCreate, settings: Settings) -> tuple[Sweep, Send]:
    """Check everything, store the sweep, and submit its first `parallel` trials (sent after commit)."""
    params = check_sweep(session, tenant=tenant, body=body, settings=settings)
    search = body.search.model_dump()
    search["trials"] = planned_trials(body, params)
    sweep = Sweep(tenant=tenant, name=body.name or body.spec.name, status="running",
                  spec=body.spec.model_dump(mode="json"), space=dict(body.space), search=search,
                  objective=body.objective.model_dump(), pruner=body.pruner.model_dump())
    session.add(sweep)
    session.flush()
    log.info("sweep.created sweep_id=%s tenant=%s trials=%d method=%s", sweep.id, tenant, search["trials"],
             search["method"])
    return sweep, advance_sweep(session, sweep_id=sweep.id, settings=settings)


def get_sweep_or_raise(session: Session, *, tenant: str, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or sweep.tenant != tenant:
        raise SweepNotFound(sweep_id)
    return sweep


def sweep_read(session: Session, sweep: Sweep, *, full: bool = True) -> SweepRead:
    stored = load_trials(session, sweep)
    mode = sweep.objective["mode"]
    # Epochs done: the last epoch whose end reported the objective (a trial stopped early in an epoch it had
    # just begun, as a pruned one is, did not do that epoch).
    trials = [SweepTrial(number=t.number, job_id=t.job_id, params=t.params, status=t.status,  # type: ignore[arg-type]
                         value=t.value(mode), epochs=max(t.epochs, default=0)) for t in stored]
    best = _best(stored, mode)
    return SweepRead(
        id=sweep.id, name=sweep.name, status=sweep.status, created_at=sweep.created_at,  # type: ignore[arg-type]
        finished_at=sweep.finished_at, space=sweep.space, search=SweepSearch(**sweep.search),
        objective=SweepObjective(**sweep.objective), pruner=SweepPruner(**sweep.pruner),
        counts=dict(Counter(t.status for t in stored)),
        best=SweepBest(job_id=best.job_id, params=best.params, value=best.value(mode)) if best else None,  # type: ignore[arg-type]
        trials=trials, spec=sweep.spec if full else None)


def _best(trials: list[StoredTrial], mode: str) -> StoredTrial | None:
    # Pruned trials count too: their best epoch is a real measurement of those params.
    scored = [t for t in trials if t.status in ("succeeded", "pruned") and t.value(mode) is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda t: t.value(mode))  # type: ignore[arg-type, return-value]


def _cursor(created_at: datetime, sweep_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{sweep_id}".encode()).decode()


def list_sweeps(session: Session, *, tenant: str, limit: int, cursor: str | None) -> SweepPage:
    query = select(Sweep).where(Sweep.tenant == tenant)
    if cursor:
        try:
            created_raw, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
            created = datetime.fromisoformat(created_raw)
        except Exception as exc:
            raise SpecError("invalid cursor", [{"loc": "cursor", "msg": "not a cursor this API returned"}]) from exc
        query = query.where((Sweep.created_at < created) | ((Sweep.created_at == created) & (Sweep.id < last_id)))
    rows = list(session.scalars(query.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)))
    next_cursor = _cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return SweepPage(items=[sweep_read(session, s, full=False) for s in rows[:limit]], next_cursor=next_cursor)


def cancel_sweep(session: Session, *, tenant: str, sweep_id: str) -> Sweep:
    """No new trials; queued trials never start, running ones stop at their next step."""
    sweep = get_sweep_or_raise(session, tenant=tenant, sweep_id=sweep_id)
    if sweep.status != "running":
        raise StateConflict(f"sweep {sweep_id} is already {sweep.status}")
    sweep.status, sweep.finished_at = "cancelled", utcnow()
    active = session.scalars(select(Job.id).where(Job.sweep_id == sweep.id, Job.status.in_(("queued", "running"))))
    for job_id in list(active):
        jobs.cancel_job(session, tenant=tenant, job_id=job_id)
    log.info("sweep.cancelled sweep_id=%s", sweep_id)
    return sweep


def delete_sweep(session: Session, *, tenant: str, sweep_id: str) -> None:
    """A finished sweep with its trials (their metrics and checkpoints go with them)."""
    sweep = get_sweep_or_raise(session, tenant=tenant, sweep_id=sweep_id)
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.sweep_id == sweep.id, Job.status.in_(("queued", "running")))) or 0
    if sweep.status == "running" or active:
        raise StateConflict(f"sweep {sweep_id} is {sweep.status} with {active} trials queued or running; "
                            "cancel it and let its trials stop before deleting it")
    jobs.delete_jobs(session, Job.sweep_id == sweep.id)
    session.execute(delete(Sweep).where(Sweep.id == sweep.id))
    log.info("sweep.deleted sweep_id=%s", sweep_id)


# --- driving ------------------------------------------------------------------------------------------


def advance_sweep(session: Session, *, sweep_id: str, settings: Settings) -> Send:
    """Submit trials until `parallel` run at once or all `trials` exist; finish the sweep when all have ended.

    Idempotent and safe to call from any process at any time: the sweep row is locked, and a trial number is
    unique per sweep, so a race ends in an IntegrityError (rolled back, nothing sent) rather than a 13th trial.
    """
    sweep = session.get(Sweep, sweep_id, with_for_update=True)
    if sweep is None or sweep.status != "running":
        return []
    stored = load_trials(session, sweep)
    active = sum(t.status in ("queued", "running") for t in stored)
    total, parallel = int(sweep.search["trials"]), int(sweep.search["parallel"])
    if len(stored) >= total and active == 0:
        best = _best(stored, sweep.objective["mode"])
        sweep.status, sweep.finished_at = ("succeeded" if best else "failed"), utcnow()
        log.info("sweep.finished sweep_id=%s status=%s", sweep.id, sweep.status)
        return []
    slots = min(parallel - active, total - len(stored))
    if slots <= 0:
        return []
    send: Send = []
    dists = distributions(sweep.space)
    paths = {key: parse_param(key, raw, None).parts for key, raw in sweep.space.items()}
    number = max((t.number for t in stored), default=-1) + 1
    study = build_study(sweep, stored, number=number)
    for _ in range(slots):
        study.sampler = make_sampler(sweep, number)
        asked = study.ask(dists)
        trial = {"number": number, "params": dict(asked.params),
                 "system_attrs": dict(frozen(study, -1).system_attrs)}
        try:
            job = _submit_trial(session, sweep=sweep, trial=trial, paths=paths, settings=settings)
        except QuotaExceeded as exc:
            # The tenant is at its limit: the next trial is asked for when one of its jobs ends.
            log.info("sweep.waiting sweep_id=%s reason=%s", sweep.id, exc.detail)
            break
        except IntegrityError:
            log.info("sweep.advance_raced sweep_id=%s number=%d: another process submitted it", sweep.id, number)
            return []
        if job.status == "queued":
            send.append((job.id, job.queue))
        number += 1
    return send


def _submit_trial(session: Session, *, sweep: Sweep, trial: dict[str, Any], paths: dict[str, Any],
                  settings: Settings) -> Job:
    doc = with_params(sweep.spec, trial["params"], paths)
    doc["name"] = f"{sweep.name or 'sweep'}-trial-{trial['number']}"[:200]
    trial_of = (sweep.id, trial["number"], trial)
    try:
        spec = JobSpec.model_validate(doc)
        job, _ = jobs.submit_job(session, tenant=sweep.tenant, spec=spec, idempotency_key=None, settings=settings,
                                 trial_of=trial_of)
    except SpecError as exc:
        # A value inside the space that the static check refuses (the extremes passed): a failed trial, not a stall.
        job = Job(tenant=sweep.tenant, name=doc["name"], status="failed", spec=doc, report={"ok": False},
                  data_info={}, error=exc.detail, finished_at=utcnow(), last_metrics={})
        job.sweep_id, job.trial_number, job.trial = trial_of
        session.add(job)
        session.flush()
    log.info("sweep.trial_submitted sweep_id=%s number=%d job_id=%s params=%s", sweep.id, trial["number"], job.id,
             trial["params"])
    return job


def running_sweep_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Sweep.id).where(Sweep.status == "running")))


def should_prune(session: Session, *, job_id: str, epoch: int) -> bool:
    """At an epoch's end (its points stored): does the sweep's pruner stop this trial? Records what the pruner
    remembers (ASHA's rungs) on the trial, for the decisions that follow."""
    job = session.get(Job, job_id)
    if job is None or job.sweep_id is None or not job.trial:
        return False
    sweep = session.get(Sweep, job.sweep_id)
    if sweep is None or sweep.pruner.get("type", "none") == "none":
        return False
    stored = load_trials(session, sweep)
    index = next((i for i, t in enumerate(stored) if t.job_id == job_id), None)
    if index is None or epoch not in stored[index].epochs:
        return False
    stored[index].status = "running"  # whatever the row says now, the decision is about a running trial
    study = build_study(sweep, stored, cut=(job_id, epoch))
    trial = frozen(study, index)
    assert trial.state == TrialState.RUNNING
    pruned = study.pruner.prune(study, trial)
    attrs = dict(frozen(study, index).system_attrs)
    if attrs != job.trial.get("system_attrs", {}):
        job.trial = {**job.trial, "system_attrs": attrs}
    if pruned:
        log.info("sweep.trial_pruned sweep_id=%s job_id=%s epoch=%d value=%s", sweep.id, job_id, epoch,
                 stored[index].epochs[epoch])
    return bool(pruned)


def pruning_metric(session: Session, *, job_id: str) -> str | None:
    """The metric whose epoch-end points the worker must check, or None when nothing can prune this job."""
    row = session.execute(
        select(Sweep.objective, Sweep.pruner).join(Job, Job.sweep_id == Sweep.id).where(Job.id == job_id)
    ).first()
    if row is None or row.pruner.get("type", "none") == "none":
        return None
    return str(row.objective["metric"])


__all__ = [
    "SweepNotFound", "create_sweep", "get_sweep_or_raise", "sweep_read", "list_sweeps", "cancel_sweep",
    "delete_sweep", "advance_sweep", "running_sweep_ids", "should_prune", "pruning_metric",
]
