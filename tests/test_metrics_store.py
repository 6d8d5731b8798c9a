"""The metric store on SQLite and PostgreSQL: points written by record_points (a JSON batch the database
unpacks) read back unchanged, and downsampling done in SQL gives exactly what the Python `downsample()` gives."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from service.metrics import (
    downsample,
    drop_points_after,
    pick_positions,
    points_csv,
    read_points,
    read_points_page,
    record_points,
)
from service.models import Job, MetricSeries
from tests.conftest import migrated_sessions

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _series_steps() -> dict[str, list[int]]:
    """Series shaped like the worker's and unlike them: dense, strided, with random gaps, short, single."""
    rng = random.Random(7)
    return {
        "train_loss": list(range(1, 1001)),  # a point every step
        "lr": list(range(10, 5001, 10)),  # log_every_steps=10
        "val_loss": sorted(rng.sample(range(100_000), 777)),  # gaps everywhere
        "val_mae": [s + (s == 100) for s in range(0, 200, 2)],  # even steps but one: first + stride * p misses it
        "epoch_time_s": [3, 4, 5, 9, 20, 21, 50],
        "val_r2": [42],
    }


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, tmp_path_factory, "metrics")


def _job_with_points(sessions: sessionmaker[Session], steps: dict[str, list[int]]) -> str:
    with sessions() as session, session.begin():
        job = Job(tenant="t", name="metrics", status="succeeded", spec={}, report={}, data_info={}, last_metrics={})
        session.add(job)
        session.flush()
        points = [{"name": name, "step": step, "epoch": 1 + step // 100, "value": step / 7 + len(name),
                   "time": T0 + timedelta(milliseconds=step)}
                  for name, series in steps.items() for step in series]
        random.Random(3).shuffle(points)  # storage order must not matter
        record_points(session, job_id=job.id, points=points)
        return job.id


def _read(sessions: sessionmaker[Session], job_id: str, **query: Any) -> list[Any]:
    with sessions() as session:
        return read_points(session, job_id=job_id, **{"names": None, "since_step": None, "max_points": None, **query})


def test_points_read_back_as_written(sessions: sessionmaker[Session]) -> None:
    steps = _series_steps()
    job_id = _job_with_points(sessions, steps)
    points = _read(sessions, job_id)
    assert {(p.name, p.step) for p in points} == {(n, s) for n, series in steps.items() for s in series}
    p = next(p for p in points if p.name == "lr" and p.step == 20)
    assert (p.epoch, p.value) == (1, pytest.approx(20 / 7 + 2))
    assert p.time.replace(tzinfo=timezone.utc) == T0 + timedelta(milliseconds=20)


def test_point_times_read_back_to_the_microsecond_in_utc(sessions: sessionmaker[Session]) -> None:
    """The batch travels as JSON text (RFC 3339 times): whole seconds, microseconds and another offset than UTC
    come back as the same instants, and a float comes back as the same float."""
    times = {1: T0, 2: T0 + timedelta(microseconds=1), 3: T0 + timedelta(seconds=59, microseconds=999_999),
             4: datetime(2026, 1, 1, 2, 0, 0, 250, tzinfo=timezone(timedelta(hours=2)))}
    with sessions() as session, session.begin():
        job = Job(tenant="t", name="times", status="running", spec={}, report={}, data_info={}, last_metrics={})
        session.add(job)
        session.flush()
        record_points(session, job_id=job.id, points=[
            {"name": "loss", "step": step, "epoch": 1, "value": 0.1 + 0.2 + step, "time": when}
            for step, when in times.items()])
        job_id = job.id
    points = _read(sessions, job_id)
    assert [p.time.replace(tzinfo=timezone.utc) if p.time.tzinfo is None else p.time for p in points] == list(times.values())
    assert [p.value for p in points] == [0.1 + 0.2 + step for step in times]


@pytest.mark.parametrize("max_points", [1, 2, 3, 7, 10, 499, 500, 501, 776, 777, 1000, 5000])
def test_sql_downsampling_matches_python(sessions: sessionmaker[Session], max_points: int) -> None:
    steps = _series_steps()
    job_id = _job_with_points(sessions, steps)
    for filters in ({}, {"names": ["val_loss", "train_loss", "nothing"]}, {"since_step": 37},
                    {"names": ["lr", "val_r2"], "since_step": 4990}, {"since_step": 10**6}):
        everything = _read(sessions, job_id, **filters)
        sampled = _read(sessions, job_id, max_points=max_points, **filters)
        assert sampled == downsample(everything, max_points), filters
        for name in {p.name for p in everything}:
            full = [p.step for p in everything if p.name == name]
            kept = [p.step for p in sampled if p.name == name]
            assert len(kept) == min(len(full), max_points)
            assert kept[-1] == full[-1]
            if max_points > 1:
                assert kept[0] == full[0]


def test_downsampled_steps_are_evenly_spaced(sessions: sessionmaker[Session]) -> None:
    job_id = _job_with_points(sessions, _series_steps())
    kept = [p.step for p in _read(sessions, job_id, names=["train_loss"], max_points=10)]
    assert kept == [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000]
    kept = [p.step for p in _read(sessions, job_id, names=["epoch_time_s"], max_points=3)]
    assert kept == [3, 9, 50]


def test_a_cap_past_the_bound_parameter_limits(sessions: sessionmaker[Session]) -> None:
    # 40,000 kept steps are more than SQLite (32,766) and PostgreSQL (65,535 over two lists) bind as parameters.
    steps = {"train_loss": list(range(0, 150_000, 3))}
    job_id = _job_with_points(sessions, steps)
    sampled = _read(sessions, job_id, max_points=40_000)
    assert [p.step for p in sampled] == [steps["train_loss"][i] for i in pick_positions(50_000, 40_000)]


def test_pick_positions() -> None:
    assert pick_positions(3, 5) == [0, 1, 2]
    assert pick_positions(5, 1) == [4]
    assert pick_positions(5, 3) == [0, 2, 4]
    assert pick_positions(4, 3) == [0, 2, 3]  # 1.5 rounds to even, as Python's round() does


def test_non_finite_values_are_stored_and_read_back_as_null(sessions: sessionmaker[Session]) -> None:
    """val_r2 of a constant target is -inf and a diverged loss NaN: the write succeeds, the read says null."""
    values = {1: float("-inf"), 2: float("inf"), 3: float("nan"), 4: 0.5}
    with sessions() as session, session.begin():
        job = Job(tenant="t", name="inf", status="running", spec={}, report={}, data_info={}, last_metrics={})
        session.add(job)
        session.flush()
        record_points(session, job_id=job.id, points=[
            {"name": "val_r2", "step": step, "epoch": step, "value": value, "time": T0} for step, value in values.items()])
        job_id = job.id
    points = _read(sessions, job_id)
    assert [(p.step, p.value) for p in points] == [(1, None), (2, None), (3, None), (4, 0.5)]
    assert [p.value for p in _read(sessions, job_id, max_points=2)] == [None, 0.5]
    assert points_csv(points).splitlines()[1:3] == ["val_r2,1,1,,2026-01-01T00:00:00+00:00",
                                                     "val_r2,2,2,,2026-01-01T00:00:00+00:00"]


def _read_page(sessions: sessionmaker[Session], job_id: str, since_step: int | None, limit: int) -> Any:
    with sessions() as session:
        return read_points_page(session, job_id=job_id, names=None, since_step=since_step, max_points=None,
                                limit=limit)


@pytest.mark.parametrize("limit", [50, 10_000])
def test_a_read_is_bounded_and_its_cursor_reads_on_without_gaps_or_repeats(
        sessions: sessionmaker[Session], limit: int) -> None:
    steps = _series_steps()
    job_id = _job_with_points(sessions, steps)
    read: list[tuple[str, int]] = []
    since: int | None = None
    pages = 0
    while True:
        points, since = _read_page(sessions, job_id, since, limit)
        pages += 1
        # Whole steps only: a page passes the cap by at most the other series' points at its last step.
        assert len(points) <= max(limit, 1) + len(steps) - 1
        read += [(p.name, p.step) for p in points]
        if since is None:
            break
        assert points and max(p.step for p in points) == since
    expected = sorted((n, s) for n, series in steps.items() for s in series)
    assert sorted(read) == expected and len(read) == len(expected)
    assert pages >= len(expected) // (limit + len(steps))


def _series_rows(sessions: sessionmaker[Session], job_id: str) -> dict[str, tuple[int, int, int, int | None]]:
    with sessions() as session:
        rows = session.scalars(select(MetricSeries).where(MetricSeries.job_id == job_id))
        return {r.name: (r.count, r.first_step, r.last_step, r.stride) for r in rows}


def test_series_counts_and_strides_are_kept_at_write_time_and_after_a_resume(
        sessions: sessionmaker[Session]) -> None:
    job_id = _job_with_points(sessions, _series_steps())
    series = _series_rows(sessions, job_id)
    assert series["train_loss"] == (1000, 1, 1000, 1)
    assert series["lr"] == (500, 10, 5000, 10)
    assert series["val_loss"][3] is None and series["val_mae"][3] is None  # uneven gaps: no stride
    assert series["val_r2"] == (1, 42, 42, 0)  # one point: no gap yet
    with sessions() as session, session.begin():  # the worker's batches, in order: the stride holds across them
        record_points(session, job_id=job_id, points=[
            {"name": "lr", "step": s, "epoch": 1, "value": 1.0, "time": T0} for s in (5010, 5020)])
        record_points(session, job_id=job_id, points=[
            {"name": "val_r2", "step": 52, "epoch": 1, "value": 1.0, "time": T0}])
    series = _series_rows(sessions, job_id)
    assert series["lr"] == (502, 10, 5020, 10) and series["val_r2"] == (2, 42, 52, 10)
    with sessions() as session, session.begin():  # a resume from step 500 replaces what came after
        drop_points_after(session, job_id=job_id, step=500)
    series = _series_rows(sessions, job_id)
    assert series["train_loss"] == (500, 1, 500, 1) and series["lr"] == (50, 10, 500, 10)
    assert series["val_r2"] == (2, 42, 52, 10) and series["val_mae"][3] is None


def test_a_downsampled_read_of_a_strided_series_counts_and_scans_nothing(sessions: sessionmaker[Session]) -> None:
    job_id = _job_with_points(sessions, {"train_loss": list(range(5, 300_005, 5))})
    statements: list[str] = []
    with sessions() as session:
        engine = session.get_bind()
        listener = lambda *args: statements.append(str(args[2]).lower())  # noqa: E731 (statement text)
        event.listen(engine, "before_cursor_execute", listener)
        try:
            sampled = read_points(session, job_id=job_id, names=None, since_step=None, max_points=500)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    assert [p.step for p in sampled] == [5 + 5 * i for i in pick_positions(60_000, 500)]
    # The counts and the stride come from metric_series: no count(), no grouping, no modulo scan of the points.
    scans = ("count(", "group by", "metric_points.step -", "row_number")
    assert statements and not any(scan in s for s in statements for scan in scans), statements
