"""Metric points: batched writes from the worker, filtered and downsampled reads, CSV."""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Sequence
from contextlib import closing
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Executable, Select, and_, bindparam, case, delete, func, null, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from service.models import MetricPoint, MetricSeries
from service.schemas import MetricPointRead

_COLUMNS = "job_id, name, step, epoch, value, time"


def record_points(session: Session, *, job_id: str, points: Sequence[dict[str, Any]]) -> None:
    """points: dicts with name, step, epoch, value, time; written in the session's transaction.

    One statement whose rows travel as one JSON parameter the database unpacks, rather than an ORM or Core insert
    (a parameter dict built and processed per row) or the drivers' own bulk paths (COPY, executemany), which
    still handle each row in Python. The worker's writer thread calls this while training runs in the same
    process: Python work here holds the GIL the training thread waits for, work inside the database does not.
    """
    if not points:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        _insert_points_postgresql(connection, job_id, points)
    else:
        _insert_points_sqlite(connection, job_id, points)
    _count_series(session, job_id, points)


def _count_series(session: Session, job_id: str, points: Sequence[dict[str, Any]]) -> None:
    """Keep each series' count, step range and stride (MetricSeries) in step with the points just written: one
    upsert for the whole batch, no read (the batch's own stride is worked out here, the join with what is stored
    in the database)."""
    steps_by_name: dict[str, list[int]] = {}
    for p in points:
        steps_by_name.setdefault(p["name"], []).append(p["step"])
    rows = []
    for name, steps in steps_by_name.items():
        steps.sort()
        rows.append({"job_id": job_id, "name": name, "count": len(steps), "first_step": steps[0],
                     "last_step": steps[-1], "stride": _stride([steps[0]], 0, steps[1:])})
    connection = session.connection()
    connection.execute(_series_upsert(connection.dialect.name), rows)


@functools.cache
def _series_upsert(dialect: str) -> Executable:
    """The series upsert, built once per dialect so its compiled SQL is reused (compiling it anew for each batch
    cost the worker's writer more than the points' COPY). Executed with one parameter set per series."""
    table = MetricSeries.__table__
    statement = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(MetricSeries)
    new, old = statement.excluded, table.c
    gap = new.first_step - old.last_step  # from the last stored step to the batch's first
    stride = case(
        (or_(old.stride.is_(None), new.stride.is_(None), gap <= 0), null()),
        (and_(or_(old.stride == 0, old.stride == gap), or_(new.stride == 0, new.stride == gap)), gap),
        else_=null())
    return statement.on_conflict_do_update(index_elements=[old.job_id, old.name], set_={
        "count": old.count + new.count,
        "first_step": case((new.first_step < old.first_step, new.first_step), else_=old.first_step),
        "last_step": case((new.last_step > old.last_step, new.last_step), else_=old.last_step),
        "stride": stride,
    })


def _stride(before: list[int], stride: int | None, steps: list[int]) -> int | None:
    """The series' step gap once `steps` follow `before` (its last step): 0 while it has one point, None once
    two gaps differ (or steps arrive out of order)."""
    if stride is None:
        return None
    previous = before[-1]
    for step in steps:
        gap = step - previous
        if gap <= 0 or (stride and gap != stride):
            return None
        stride, previous = gap, step
    return stride


def _batch_json(points: Sequence[dict[str, Any]]) -> str:
    """The batch as one JSON array of the points' dicts, encoded by orjson in C (datetimes included, as RFC 3339),
    for the database to unpack: the writer thread holds the GIL the training thread waits for only for this call,
    where binding six parameters a row, formatting a COPY row or converting a time in Python cost microseconds a
    point. JSON has no inf or NaN (orjson writes null): those values travel as the strings each database reads."""
    if not all(map(math.isfinite, (p["value"] for p in points))):
        points = [p if math.isfinite(p["value"]) else {**p, "value": _NON_FINITE[repr(float(p["value"]))]}
                  for p in points]
    return orjson.dumps(points, option=orjson.OPT_SERIALIZE_NUMPY).decode()


_NON_FINITE = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def _insert_points_postgresql(connection: Connection, job_id: str, points: Sequence[dict[str, Any]]) -> None:
    # json_to_recordset parses each field as its column's type (text to float8 takes "NaN" and "Infinity").
    with closing(connection.connection.cursor()) as cursor:
        cursor.execute(_POSTGRESQL_INSERT, (job_id, _batch_json(points)))


_POSTGRESQL_INSERT = f"""INSERT INTO {MetricPoint.__tablename__} ({_COLUMNS})
SELECT %s, p.name, p.step, p.epoch, p.value, p.time
FROM json_to_recordset(%s::json) AS p(name text, step integer, epoch integer, value double precision,
                                      time timestamptz)"""


def _insert_points_sqlite(connection: Connection, job_id: str, points: Sequence[dict[str, Any]]) -> None:
    # SQLite unpacks the batch itself (json_each), with the GIL released. Times are written in SQLAlchemy's SQLite
    # text format, as every other write does: strftime reads the RFC 3339 time (moving an offset to UTC) to the
    # second, and the microseconds, which it would round to milliseconds, are taken from the text.
    connection.exec_driver_sql(_SQLITE_INSERT, (job_id, _batch_json(points)))


# SQLite stores a NaN REAL as NULL, which the NOT NULL column refuses; as text it is kept (and read back by
# finite_or_none). Infinities are ordinary REALs there (9e999 is how SQL spells one).
_SQLITE_INSERT = f"""INSERT INTO {MetricPoint.__tablename__} ({_COLUMNS})
SELECT ?, p.name, p.step, p.epoch,
  CASE p.value WHEN 'Infinity' THEN 9e999 WHEN '-Infinity' THEN -9e999 ELSE p.value END,
  strftime('%Y-%m-%d %H:%M:%S', p.time)
    || CASE substr(p.time, 20, 1) WHEN '.' THEN substr(p.time, 20, 7) ELSE '.000000' END
FROM (SELECT json_extract(value, '$.name') AS name, json_extract(value, '$.step') AS step,
             json_extract(value, '$.epoch') AS epoch, json_extract(value, '$.value') AS value,
             json_extract(value, '$.time') AS time
      FROM json_each(?)) AS p"""


def drop_points_after(session: Session, *, job_id: str, step: int) -> None:
    # A resumed run recomputes everything after its checkpoint: replace those points, never duplicate them.
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step))
    recount_series(session, job_id=job_id)


def recount_series(session: Session, *, job_id: str) -> None:
    """MetricSeries rebuilt from the points themselves (after a resume dropped some, or points loaded by other
    means than record_points: rare, so a scan is fine)."""
    session.execute(delete(MetricSeries).where(MetricSeries.job_id == job_id))
    counts = session.execute(select(MetricPoint.name, func.count(), func.min(MetricPoint.step),
                                    func.max(MetricPoint.step))
                             .where(MetricPoint.job_id == job_id).group_by(MetricPoint.name)).all()
    for name, count, first, last in counts:
        strided = _even_stride(session, [MetricPoint.job_id == job_id, MetricPoint.name == name], count) \
            if count > 1 else (first, 0)
        session.add(MetricSeries(job_id=job_id, name=name, count=count, first_step=first, last_step=last,
                                 stride=strided[1] if strided else None))


_POINT_COLUMNS = (MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value, MetricPoint.time)


def finite_or_none(value: Any) -> float | None:
    """A stored value as the API serves it: non-finite (inf, -inf, NaN) is null, as JSON has no such numbers.

    A constant validation target makes val_r2 -inf, and a diverged run NaN: they are kept as stored and only
    shown as null (JSON and the stream) or an empty cell (CSV).
    """
    number = float(value)  # SQLite hands back NaN, stored as text, as the string 'NaN'
    return number if math.isfinite(number) else None


def _to_read(row: Any) -> MetricPointRead:
    return MetricPointRead(name=row.name, step=row.step, epoch=row.epoch, value=finite_or_none(row.value),
                           time=row.time)


def _filters(job_id: str, names: list[str] | None, since_step: int | None) -> list[ColumnElement[bool]]:
    where = [MetricPoint.job_id == job_id]
    if names:
        where.append(MetricPoint.name.in_(names))
    if since_step is not None:
        where.append(MetricPoint.step > since_step)
    return where


def read_points(session: Session, *, job_id: str, names: list[str] | None, since_step: int | None,
                max_points: int | None) -> list[MetricPointRead]:
    """Points ordered by name then step; with max_points, each series downsampled as `downsample()` does."""
    where = _filters(job_id, names, since_step)
    if not max_points:
        return [_to_read(r) for r in session.execute(_points(where))]
    return _read_downsampled(session, where, max_points, _known_series(session, job_id, names, since_step))


def read_points_page(session: Session, *, job_id: str, names: list[str] | None, since_step: int | None,
                     max_points: int | None, limit: int) -> tuple[list[MetricPointRead], int | None]:
    """`read_points` bounded to about `limit` points, and the `since_step` that continues it (None: all read).

    Without max_points the page holds whole steps in step order: every series' points up to a step, so that
    `since_step=<that step>` reads on with nothing skipped or repeated. One step's points always fit in a page,
    even if they alone number more than `limit`. A downsampled read is its own bound (max_points per series).
    """
    where = _filters(job_id, names, since_step)
    if max_points:
        return _read_downsampled(session, where, max_points, _known_series(session, job_id, names, since_step)), None
    query = select(*_POINT_COLUMNS).where(*where).order_by(MetricPoint.step, MetricPoint.name)
    rows = session.execute(query.limit(limit + 1)).all()
    if len(rows) <= limit:
        next_step = None
    else:
        cut = rows[limit].step  # the first step not known to be whole in this page
        rows = [r for r in rows if r.step < cut]
        if not rows:  # one step with more than `limit` points: that step alone
            rows = session.execute(_points([*where, MetricPoint.step == cut])).all()
        next_step = rows[-1].step
    points = sorted((_to_read(r) for r in rows), key=lambda p: (p.name, p.step))
    return points, next_step


def _points(where: list[ColumnElement[bool]], *more: ColumnElement[bool]) -> Select:
    return select(*_POINT_COLUMNS).where(*where, *more).order_by(MetricPoint.name, MetricPoint.step)


def _known_series(session: Session, job_id: str, names: list[str] | None,
                  since_step: int | None) -> list[MetricSeries] | None:
    """The series a whole-series read covers, as counted at write time; None where they cannot answer (a read
    from a step on), and the points are counted instead."""
    if since_step is not None:
        return None
    query = select(MetricSeries).where(MetricSeries.job_id == job_id).order_by(MetricSeries.name)
    if names:
        query = query.where(MetricSeries.name.in_(names))
    # None where nothing was counted (no points yet, or points not written by record_points): count them.
    return list(session.scalars(query)) or None


def _read_downsampled(session: Session, where: list[ColumnElement[bool]], max_points: int,
                      series: list[MetricSeries] | None) -> list[MetricPointRead]:
    """Downsampling in SQL: of a series over the cap only the kept points are read as rows.

    Each series' count comes from MetricSeries (kept at write time) or, for a read from a step on, from one pass
    over the (job_id, name, step) index. The series within the cap are read whole; each larger one by the steps
    at the positions `pick_positions` keeps: computed from its stride where it has one, with no scan at all.
    """
    counts: list[tuple[str, int, tuple[int, int] | None]]
    if series is None:
        counts = [(name, count, None) for name, count in session.execute(
            select(MetricPoint.name, func.count()).where(*where).group_by(MetricPoint.name)
            .order_by(MetricPoint.name))]
    else:
        counts = [(s.name, s.count, (s.first_step, s.stride) if s.stride else None) for s in series]
    kept: dict[str, list[MetricPointRead]] = {name: [] for name, _, _ in counts}
    small = [name for name, count, _ in counts if count <= max_points]
    if small:
        for row in session.execute(_points(where, MetricPoint.name.in_(small))):
            kept[row.name].append(_to_read(row))
    for name, count, strided in counts:
        if count > max_points:
            in_series = [*where, MetricPoint.name == name]
            steps = _kept_steps(session, in_series, count, max_points, strided)
            rows = session.execute(_points(in_series, MetricPoint.step.in_(_literal_ints(steps))))
            kept[name] = [_to_read(r) for r in rows]
    return [p for points in kept.values() for p in points]


def _kept_steps(session: Session, in_series: list[ColumnElement[bool]], count: int, max_points: int,
                strided: tuple[int, int] | None) -> list[int]:
    positions = pick_positions(count, max_points)
    strided = strided or _even_stride(session, in_series, count)
    if strided is not None:
        first, stride = strided
        return [first + stride * p for p in positions]
    # Steps with uneven gaps: number them in step order (from the index alone) and keep the picked numbers.
    ranked = select(MetricPoint.step, (func.row_number().over(order_by=MetricPoint.step) - 1).label("position")) \
        .where(*in_series).subquery()
    return list(session.scalars(select(ranked.c.step).where(ranked.c.position.in_(_literal_ints(positions)))))


def _even_stride(session: Session, in_series: list[ColumnElement[bool]], count: int) -> tuple[int, int] | None:
    """(first step, stride) when a series of count >= 2 points has steps first, first + stride, first + 2 stride...

    That is what the worker writes (a point every log_every_steps steps), and then the point at position p has
    step first + stride * p, with no need to number the rows. The proof: the count distinct steps lie in
    [first, first + stride * (count - 1)], and if all are congruent to first modulo stride there are exactly count
    such values, so the steps are all of them. With stride 1 the congruence always holds.
    """
    def bound(aggregate: Any) -> Any:
        # Separate scalar subqueries: each min() or max() alone is one index probe in both databases.
        return select(aggregate(MetricPoint.step)).where(*in_series).scalar_subquery()

    first, last = session.execute(select(bound(func.min), bound(func.max))).one()
    stride, remainder = divmod(last - first, count - 1)
    if remainder:
        return None
    if stride > 1:
        off_stride = select(MetricPoint.step).where(*in_series, (MetricPoint.step - first) % stride != 0).limit(1)
        if session.scalar(off_stride) is not None:
            return None
    return first, stride


def _literal_ints(values: list[int]) -> Any:
    # Rendered into the SQL as literals: max_points may be 100,000, past the bound-parameter limits of SQLite
    # builds (32,766) and PostgreSQL (65,535). They are integers we computed, so nothing here is user text.
    return bindparam("kept", values, expanding=True, literal_execute=True)


def read_new_points(session: Session, *, job_id: str, names: list[str] | None, since_step: int | None,
                    after_id: int) -> tuple[list[MetricPointRead], int]:
    """Points stored after the one with id `after_id`, in storage order: a stream's cursor.

    Steps cannot serve as that cursor: an epoch's val_loss carries the step of a train_loss point that may
    already have been sent. Only one worker writes a job's points (the lease), so ids grow in commit order.
    """
    query = select(MetricPoint.id, *_POINT_COLUMNS) \
        .where(*_filters(job_id, names, since_step), MetricPoint.id > after_id)
    rows = session.execute(query.order_by(MetricPoint.id)).all()
    return [_to_read(r) for r in rows], (rows[-1].id if rows else after_id)


def pick_positions(n: int, max_points: int) -> list[int]:
    """The positions (0-based, ascending) kept from a series of n points: all of them within max_points, else
    max_points evenly spaced ones with the first and the last (just the last when max_points is 1)."""
    if n <= max_points:
        return list(range(n))
    if max_points == 1:
        return [n - 1]
    last = n - 1
    return sorted({round(i * last / (max_points - 1)) for i in range(max_points)})


def downsample(points: list[MetricPointRead], max_points: int) -> list[MetricPointRead]:
    """At most max_points per series, evenly spaced by position, first and last kept: in Python, on points already
    read, what read_points does in SQL (the tests hold the two to the same answer)."""
    by_name: dict[str, list[MetricPointRead]] = {}
    for p in points:
        by_name.setdefault(p.name, []).append(p)
    out: list[MetricPointRead] = []
    for series in by_name.values():
        out.extend(series[i] for i in pick_positions(len(series), max_points))
    return out


def points_csv(points: list[MetricPointRead]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "step", "epoch", "value", "time"])
    for p in points:
        time = p.time.isoformat() if isinstance(p.time, datetime) else str(p.time)
        # A non-finite value (served as null) is an empty cell.
        writer.writerow([p.name, p.step, p.epoch, "" if p.value is None else repr(p.value), time])
    return buf.getvalue()
