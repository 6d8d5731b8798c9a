"""Comparing jobs side by side: each job's curves (downsampled) and the spec paths whose values differ."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service import jobs, metrics
from service.errors import SpecError
from service.schemas import ComparedJob, JobComparison, SeriesPoint

MAX_COMPARED_JOBS = 50
DEFAULT_MAX_POINTS = 500


def flatten_spec(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by path, written like error locs (`model.layers[0].out_features`). Lists holding objects are walked
    (layers); other lists (input_shape, inline data) are one value each."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.update(flatten_spec(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(doc, list) and any(isinstance(v, dict) for v in doc):
        for i, value in enumerate(doc):
            out.update(flatten_spec(value, f"{prefix}[{i}]"))
    else:
        out[prefix] = doc
    return out


def spec_diff(specs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The paths whose values differ, each with every spec's value in order (None where a spec lacks it)."""
    flat = [flatten_spec(spec) for spec in specs]
    paths: dict[str, None] = {}
    for leaves in flat:
        paths.update(dict.fromkeys(leaves))
    diff: dict[str, list[Any]] = {}
    for path in paths:
        values = [leaves.get(path) for leaves in flat]
        if any(v != values[0] for v in values[1:]):
            diff[path] = values
    return diff


def compare_jobs(session: Session, *, tenant: str, ids: list[str], names: list[str] | None,
                 max_points: int | None) -> JobComparison:
    """Another tenant's id answers 404 like a missing one; series are downsampled to max_points each."""
    if not ids:
        raise SpecError("name at least one job", [{"loc": "ids", "msg": "give job ids, comma-separated"}])
    if len(ids) > MAX_COMPARED_JOBS:
        raise SpecError(f"{len(ids)} jobs asked, at most {MAX_COMPARED_JOBS} are compared at once",
                        [{"loc": "ids", "msg": f"at most {MAX_COMPARED_JOBS} ids"}])
    rows = [jobs.get_job_or_raise(session, tenant=tenant, job_id=job_id) for job_id in ids]
    compared: list[ComparedJob] = []
    for job in rows:
        series: dict[str, list[SeriesPoint]] = {}
        for point in metrics.read_points(session, job_id=job.id, names=names, since_step=None,
                                         max_points=max_points or DEFAULT_MAX_POINTS):
            series.setdefault(point.name, []).append(SeriesPoint(step=point.step, value=point.value))
        read = jobs.job_read(session, job, full=False)
        compared.append(ComparedJob(id=job.id, name=job.name, status=read.status, best=read.best, series=series))
    return JobComparison(jobs=compared, spec_diff=spec_diff([job.spec for job in rows]))
