"""Metric points: batched writes from the worker, filtered and downsampled reads, CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from service.models import MetricPoint
from service.schemas import MetricPointRead


def record_points(session: Session, *, job_id: str, points: Sequence[dict[str, Any]]) -> None:
    """points: dicts with name, step, epoch, value, time. One INSERT for the whole batch."""
    if points:
        session.execute(insert(MetricPoint), [{"job_id": job_id, **p} for p in points])


def drop_points_after(session: Session, *, job_id: str, step: int) -> None:
    # A resumed run recomputes everything after its checkpoint: replace those points, never duplicate them.
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step))


def read_points(session: Session, *, job_id: str, names: list[str] | None, since_step: int | None,
                max_points: int | None) -> list[MetricPointRead]:
    query = select(MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value, MetricPoint.time) \
        .where(MetricPoint.job_id == job_id)
    if names:
        query = query.where(MetricPoint.name.in_(names))
    if since_step is not None:
        query = query.where(MetricPoint.step > since_step)
    rows = session.execute(query.order_by(MetricPoint.name, MetricPoint.step)).all()
    points = [MetricPointRead(name=r.name, step=r.step, epoch=r.epoch, value=r.value, time=r.time) for r in rows]
    return downsample(points, max_points) if max_points else points


def read_new_points(session: Session, *, job_id: str, names: list[str] | None, since_step: int | None,
                    after_id: int) -> tuple[list[MetricPointRead], int]:
    """Points stored after the one with id `after_id`, in storage order: a stream's cursor.

    Steps cannot serve as that cursor: an epoch's val_loss carries the step of a train_loss point that may
    already have been sent. Only one worker writes a job's points (the lease), so ids grow in commit order.
    """
    query = select(MetricPoint.id, MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value,
                   MetricPoint.time).where(MetricPoint.job_id == job_id, MetricPoint.id > after_id)
    if names:
        query = query.where(MetricPoint.name.in_(names))
    if since_step is not None:
        query = query.where(MetricPoint.step > since_step)
    rows = session.execute(query.order_by(MetricPoint.id)).all()
    points = [MetricPointRead(name=r.name, step=r.step, epoch=r.epoch, value=r.value, time=r.time) for r in rows]
    return points, (rows[-1].id if rows else after_id)


def downsample(points: list[MetricPointRead], max_points: int) -> list[MetricPointRead]:
    """At most max_points per series, evenly spaced by position, first and last kept."""
    by_name: dict[str, list[MetricPointRead]] = {}
    for p in points:
        by_name.setdefault(p.name, []).append(p)
    out: list[MetricPointRead] = []
    for series in by_name.values():
        if len(series) <= max_points:
            out.extend(series)
        elif max_points == 1:
            out.append(series[-1])
        else:
            last = len(series) - 1
            picks = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
            out.extend(series[i] for i in picks)
    return out


def points_csv(points: list[MetricPointRead]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "step", "epoch", "value", "time"])
    for p in points:
        time = p.time.isoformat() if isinstance(p.time, datetime) else str(p.time)
        writer.writerow([p.name, p.step, p.epoch, repr(p.value), time])
    return buf.getvalue()
