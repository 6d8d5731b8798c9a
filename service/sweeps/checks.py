"""Everything checked before a sweep is stored: the space against the spec, the space's extreme values through
the same static check and caps as POST /jobs, the search against the caps, and the objective against what the
spec produces. Problems come back as error items with their locs, all at once."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.datainfo import task_kind
from service.errors import ErrorItem, SpecError, validation_items
from service.jobs import analyse_spec
from service.schemas import SweepCreate
from service.settings import Settings
from service.spec import JobSpec
from service.sweeps.space import Param, SpaceError, fractional_probe, grid_size, parse_param, space_loc, with_params

_VALIDATION_METRICS = {"classification": ("val_loss", "val_accuracy"), "binary": ("val_loss", "val_accuracy"),
                       "regression": ("val_loss", "val_mae", "val_r2")}


def check_sweep(session: Session, *, tenant: str, body: SweepCreate, settings: Settings) -> list[Param]:
    """The parsed space, or SpecError naming every problem (nothing is stored or queued then)."""
    errors: list[ErrorItem] = []
    spec_doc = body.spec.model_dump(mode="json")
    base = analyse_spec(session, tenant=tenant, spec=body.spec, settings=settings)
    if not base.ok:
        errors += [{"loc": f"spec.{e['loc']}" if e["loc"] else "spec", "msg": e["msg"]} for e in base.report["errors"]]
    params: list[Param] = []
    for key, raw in body.space.items():
        try:
            params.append(parse_param(key, raw, spec_doc))
        except SpaceError as exc:
            errors.append({"loc": exc.loc, "msg": exc.msg})
    errors += _check_search(body, params, settings)
    errors += _check_objective(body)
    if not errors:
        errors += _check_extremes(session, tenant=tenant, spec_doc=spec_doc, params=params, settings=settings)
    if errors:
        head = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:3])
        raise SpecError(f"the sweep has {len(errors)} problem{'s' if len(errors) != 1 else ''}: {head}", errors)
    return params


def _check_search(body: SweepCreate, params: list[Param], settings: Settings) -> list[ErrorItem]:
    errors: list[ErrorItem] = []
    search = body.search
    if search.trials > settings.max_sweep_trials:
        errors.append({"loc": "search.trials", "msg": f"{search.trials} trials asked, the limit is "
                                                      f"{settings.max_sweep_trials} (TRAINSERVE_MAX_SWEEP_TRIALS)"})
    if search.parallel > settings.max_sweep_parallel:
        errors.append({"loc": "search.parallel", "msg": f"{search.parallel} parallel trials asked, the limit is "
                                                        f"{settings.max_sweep_parallel} (TRAINSERVE_MAX_SWEEP_PARALLEL)"})
    if search.parallel > settings.max_running_jobs_per_tenant:
        errors.append({"loc": "search.parallel", "msg": f"{search.parallel} parallel trials, but a tenant runs at "
                                                        f"most {settings.max_running_jobs_per_tenant} jobs at once"})
    if search.method == "grid":
        for param in params:
            if param.kind != "choice":
                errors.append({"loc": space_loc(param.key), "msg": f"grid search takes choice only, not {param.kind}"})
    return errors


def _check_objective(body: SweepCreate) -> list[ErrorItem]:
    metric, spec = body.objective.metric, body.spec
    task = task_kind(spec.loss.type)
    produced = ["train_loss", *_VALIDATION_METRICS.get(task, ("val_loss",))]
    if metric not in produced:
        why = (f"{metric} is not a metric trainserve records" if metric not in
               {m for ms in _VALIDATION_METRICS.values() for m in ms} else
               f"{metric} is not computed for {spec.loss.type}")
        return [{"loc": "objective.metric", "msg": f"{why}; this spec produces {', '.join(produced)}"}]
    has_validation = spec.training.validation_split > 0 or bool(getattr(spec.data, "validation_dataset_id", None))
    if metric.startswith("val_") and not has_validation:
        return [{"loc": "objective.metric", "msg": f"{metric} needs validation data, and the spec has none: set "
                                                   "training.validation_split or data.validation_dataset_id"}]
    return []


def _probe(session: Session, *, tenant: str, spec_doc: dict[str, Any], params: list[Param],
           values: dict[str, Any], settings: Settings) -> list[ErrorItem]:
    """Problems of the spec with these values put in: structure (pydantic), then the static check and caps."""
    doc = with_params(spec_doc, values, {p.key: p.parts for p in params})
    try:
        spec = JobSpec.model_validate(doc)
    except ValidationError as exc:
        return validation_items(exc.errors())
    analysis = analyse_spec(session, tenant=tenant, spec=spec, settings=settings)
    return [] if analysis.ok else list(analysis.report["errors"])


def _owner(params: list[Param], loc: str) -> Param | None:
    """The space key an error's loc falls under, if any."""
    for param in params:
        if loc == param.key or loc.startswith(param.key + ".") or loc.startswith(param.key + "["):
            return param
    return None


def _check_extremes(session: Session, *, tenant: str, spec_doc: dict[str, Any], params: list[Param],
                    settings: Settings) -> list[ErrorItem]:
    """Each key's extremes on their own (so a problem is pinned to its key), then every key at its lowest and
    every key at its highest together (the smallest and the largest configuration)."""
    errors: list[ErrorItem] = []
    seen: set[tuple[str, str]] = set()

    def add(param: Param, what: str, problems: list[ErrorItem]) -> None:
        for problem in problems:
            msg = f"with {what}: {problem['loc'] or 'spec'}: {problem['msg']}"
            if (param.key, msg) not in seen:
                seen.add((param.key, msg))
                errors.append({"loc": space_loc(param.key), "msg": msg})

    for param in params:
        probe = fractional_probe(param)
        if probe is not None and _probe(session, tenant=tenant, spec_doc=spec_doc, params=params,
                                        values={param.key: probe}, settings=settings):
            # The range's ends may be whole numbers: a value inside shows whether the field takes fractions.
            errors.append({"loc": space_loc(param.key), "msg": f"{param.key} does not take {param.kind} values "
                                                               f"such as {probe:g}; use int_uniform or a choice"})
            continue
        for value in param.extremes():
            add(param, f"{param.key}={value!r}", _probe(session, tenant=tenant, spec_doc=spec_doc, params=params,
                                                       values={param.key: value}, settings=settings))
    if errors or len(params) < 2:
        return errors
    for end, pick in (("lowest", Param.low), ("highest", Param.high)):
        values = {p.key: pick(p) for p in params}
        for problem in _probe(session, tenant=tenant, spec_doc=spec_doc, params=params, values=values,
                              settings=settings):
            owner = _owner(params, problem["loc"]) or params[0]
            add(owner, f"every space key at its {end} value", [problem])
    return errors


def planned_trials(body: SweepCreate, params: list[Param]) -> int:
    """How many trials the sweep runs: `trials`, or for grid search at most every combination."""
    if body.search.method == "grid":
        return min(body.search.trials, grid_size(params))
    return body.search.trials
