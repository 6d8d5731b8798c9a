"""The worker's background writer (worker.recorder) against a real SQLite database: what fit() reports while the
writer is busy goes in one transaction, in order, and a write retried after a commit nobody heard stores nothing
twice, and a batch that finds the lease gone stores nothing. Then the same through the writer process: a run
stored in order, a lost lease, the process killed with a batch, a refused write, and its worker killed."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from service import db
from service.migrate import migrate_to_head
from service.models import Checkpoint, Job, MetricPoint, MetricSeries, utcnow
from service.settings import Settings
from service.spec import JobSpec
from worker.engine import CheckpointBlob, Point, Progress
from worker.recorder import BackgroundWriter, JobRecorder
from worker.writer_process import WriterProcess
from worker.writes import CheckpointWrite, LeaseLost, PointsWrite, WriterFailed, user_error

OWNER = "worker-1"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPEC = JobSpec.model_validate({
    "model": {"layers": [{"type": "Linear", "in_features": 4, "out_features": 1}]},
    "loss": {"type": "MSELoss"}, "optimizer": {"type": "SGD", "lr": 0.1},
    "training": {"epochs": 3, "checkpoint": {"every_epochs": 1, "keep_last": 5}},
    "data": {"source": "synthetic", "kind": "randn", "n_samples": 16, "n_features": 4, "n_targets": 1},
})


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    """service.db (which the writer writes through) on a migrated SQLite file of this test's own."""
    url = f"sqlite:///{tmp_path / 'writer.db'}"
    migrate_to_head(url)
    db.configure(Settings(database_url=url, home=tmp_path))
    try:
        yield db.get_engine()
    finally:
        db.get_engine().dispose()
        db.reset()


@pytest.fixture()
def job_id(engine: Engine) -> str:
    with Session(engine) as session, session.begin():
        job = Job(tenant="t", name="writer", status="running", spec=SPEC.model_dump(mode="json"), report={},
                  data_info={}, last_metrics={}, lease_owner=OWNER, lease_expires_at=utcnow() + timedelta(hours=1))
        session.add(job)
        session.flush()
        return job.id


def commits(engine: Engine) -> list[int]:
    """A list that grows by one at each commit on `engine`."""
    seen: list[int] = []
    event.listen(engine, "commit", lambda conn: seen.append(1))
    return seen


def points(epoch: int, steps: range) -> list[Point]:
    return [Point(name, step, epoch, 1.0 / step, T0 + timedelta(seconds=step)) for step in steps
            for name in ("train_loss", "lr")]


def blob(epoch: int, step: int) -> CheckpointBlob:
    return CheckpointBlob(step=step, epoch=epoch, weights=b"w%d" % step, state=b"s%d" % step, metrics={},
                          monitor="train_loss", monitor_value=1.0 / step, is_final=False)


def stored(engine: Engine, job_id: str) -> dict[str, Any]:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return {
            "epoch_step": (job.epoch, job.step),
            "checkpoints": sorted((step, epoch) for step, epoch in session.execute(
                select(Checkpoint.step, Checkpoint.epoch).where(Checkpoint.job_id == job_id))),
            "latest": session.scalar(select(Checkpoint.step).where(Checkpoint.id == job.latest_checkpoint_id)),
            "points": session.scalar(select(func.count()).select_from(MetricPoint).where(MetricPoint.job_id == job_id)),
            "series": {name: count for name, count in session.execute(
                select(MetricSeries.name, MetricSeries.count).where(MetricSeries.job_id == job_id))},
        }


def another_worker_takes_the_lease(engine: Engine, job_id: str) -> None:
    with Session(engine) as session, session.begin():
        job = session.get(Job, job_id)
        assert job is not None
        job.lease_owner = "worker-2"


def busy_writer(job_id: str) -> tuple[BackgroundWriter, JobRecorder, threading.Event]:
    """A started writer and its recorder, the writer held inside a first write (which writes nothing, so commits
    nothing) until the returned event is set: what is reported meanwhile queues up for its next transaction."""
    writer = BackgroundWriter(job_id=job_id, max_bytes=1 << 20)
    recorder = JobRecorder(job_id=job_id, owner=OWNER, spec=SPEC, writer=writer)
    busy, release = threading.Event(), threading.Event()

    class Hold:
        def apply(self, session: Session, is_retry: bool) -> None:
            busy.set()
            assert release.wait(30)

    writer.start()
    writer.submit(Hold(), size=1, what="hold")
    assert busy.wait(30)
    return writer, recorder, release


def test_writes_queued_while_the_writer_is_busy_go_in_one_transaction_in_order(engine: Engine, job_id: str) -> None:
    writer, recorder, release = busy_writer(job_id)
    seen = commits(engine)
    # An epoch's end (points, progress, its checkpoint), then the next epoch's first points and progress: the
    # progress written after the checkpoint must be what the job row says at the end.
    recorder.points(points(1, range(1, 5)))
    recorder.progress(Progress(1, 3, 4, 12, 1.0))
    recorder.checkpoint(blob(1, 4))
    recorder.points(points(2, range(5, 7)))
    recorder.progress(Progress(2, 3, 6, 12, 1.5))
    release.set()
    writer.flush()
    writer.close()
    assert len(seen) == 1  # the hold wrote nothing; the five writes, one commit
    assert stored(engine, job_id) == {"epoch_step": (2, 6), "checkpoints": [(4, 1)], "latest": 4, "points": 12,
                                      "series": {"train_loss": 6, "lr": 6}}


def test_a_write_retried_after_a_commit_nobody_heard_stores_nothing_twice(
        engine: Engine, job_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection drops as the commit's answer is on its way: the writer retries the whole transaction,
    and the points and checkpoint it finds already stored are not written again."""
    commit, lost = engine.dialect.do_commit, []

    def commit_then_lose_the_answer(dbapi_connection: Any) -> None:
        commit(dbapi_connection)
        if not lost:
            lost.append(1)
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(engine.dialect, "do_commit", commit_then_lose_the_answer)
    writer, recorder, release = busy_writer(job_id)
    recorder.points(points(1, range(1, 5)))
    recorder.progress(Progress(1, 3, 4, 12, 1.0))
    recorder.checkpoint(blob(1, 4))
    release.set()
    writer.flush()
    writer.close()
    assert lost == [1]
    assert stored(engine, job_id) == {"epoch_step": (1, 4), "checkpoints": [(4, 1)], "latest": 4, "points": 8,
                                      "series": {"train_loss": 4, "lr": 4}}


def test_a_batch_that_finds_the_lease_gone_stores_nothing_and_stops_the_run(engine: Engine, job_id: str) -> None:
    """Another worker took the job over: the batch's points, progress and checkpoint are rolled back together (the
    job row's changes, checked against the lease, are written last in the transaction) and training is told."""
    writer, recorder, release = busy_writer(job_id)
    another_worker_takes_the_lease(engine, job_id)
    recorder.points(points(1, range(1, 5)))
    recorder.progress(Progress(1, 3, 4, 12, 1.0))
    release.set()
    with pytest.raises(LeaseLost):
        writer.flush()
    writer.close()
    assert stored(engine, job_id) == {"epoch_step": (0, 0), "checkpoints": [], "latest": None, "points": 0,
                                      "series": {}}
    with pytest.raises(LeaseLost):  # every later report says so too: the run stops
        recorder.checkpoint(blob(1, 4))


# The worker's default: the same writes applied by its writer process (worker.writer_process).

def until(condition: Callable[[], bool], what: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {deadline_s} s: {what}"
        time.sleep(0.02)


@pytest.fixture()
def writer_process(engine: Engine) -> Iterator[WriterProcess]:
    process = WriterProcess(db.current_settings())
    try:
        yield process
    finally:
        process.close()


def process_writer(job_id: str, process: WriterProcess) -> tuple[BackgroundWriter, JobRecorder]:
    writer = BackgroundWriter(job_id=job_id, max_bytes=1 << 20, apply=process.apply)
    writer.start()
    return writer, JobRecorder(job_id=job_id, owner=OWNER, spec=SPEC, writer=writer)


def test_the_writer_process_stores_a_run_in_order_and_stops_it_once_the_lease_is_gone(
        engine: Engine, job_id: str, writer_process: WriterProcess) -> None:
    writer, recorder = process_writer(job_id, writer_process)
    recorder.points(points(1, range(1, 5)))
    recorder.progress(Progress(1, 3, 4, 12, 1.0))
    recorder.checkpoint(blob(1, 4))
    writer.flush()
    assert writer_process.pid not in (None, os.getpid())
    expected = {"epoch_step": (1, 4), "checkpoints": [(4, 1)], "latest": 4, "points": 8,
                "series": {"train_loss": 4, "lr": 4}}
    assert stored(engine, job_id) == expected
    another_worker_takes_the_lease(engine, job_id)
    recorder.points(points(2, range(5, 7)))
    recorder.progress(Progress(2, 3, 6, 12, 1.5))
    with pytest.raises(LeaseLost):
        writer.flush()
    writer.close()
    assert stored(engine, job_id) == expected


def test_a_checkpoint_reaches_the_writer_process_byte_for_byte_without_a_copy_for_the_trip(
        engine: Engine, job_id: str, writer_process: WriterProcess) -> None:
    """Its blobs leave the pickle as buffers of their own, sent from where they lie (a checkpoint may be gigabytes:
    pickled whole, it would take as much memory again in the training process), and are stored as they were."""
    weights, state = os.urandom(3 << 20), os.urandom(5 << 20)  # each more than a pipe holds
    write = CheckpointWrite(job_id, OWNER, step=4, epoch=1, weights=weights, state=state, monitor="train_loss",
                            monitor_value=0.5, is_final=False, keep_last=5, keep_best=True, mode="min")
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(write, protocol=5, buffer_callback=buffers.append)
    assert len(head) < 1024 and [buffer.raw().obj for buffer in buffers] == [weights, state]
    assert all(buffer.raw().obj is blob for buffer, blob in zip(buffers, (weights, state), strict=True))
    assert pickle.loads(pickle.dumps(write)) == write  # an older protocol carries them inside the pickle
    writer_process.apply([write], "checkpoint")
    with Session(engine) as session:
        row = session.execute(select(Checkpoint.weights, Checkpoint.state).where(Checkpoint.job_id == job_id)).one()
    assert (row.weights, row.state) == (weights, state)


def test_a_writer_process_killed_with_a_batch_is_replaced_and_the_batch_stored_once(
        engine: Engine, job_id: str, writer_process: WriterProcess) -> None:
    """Killed while it waits for the database (another connection holds SQLite's write lock): the next process
    gets the batch again, as a retry, and the run goes on with nothing lost or doubled."""
    writer, recorder = process_writer(job_id, writer_process)
    recorder.points(points(1, range(1, 3)))
    writer.flush()
    first_pid = writer_process.pid
    assert first_pid is not None
    with engine.connect() as lock_holder:
        lock_holder.exec_driver_sql("UPDATE jobs SET name = name")  # BEGIN IMMEDIATE: the write lock, held
        recorder.points(points(1, range(3, 5)))
        recorder.progress(Progress(1, 3, 4, 12, 1.0))
        recorder.checkpoint(blob(1, 4))
        os.kill(first_pid, signal.SIGKILL)
        until(lambda: writer_process.pid not in (None, first_pid), "a new writer process")
        lock_holder.rollback()
    writer.flush()
    writer.close()
    assert stored(engine, job_id) == {"epoch_step": (1, 4), "checkpoints": [(4, 1)], "latest": 4, "points": 8,
                                      "series": {"train_loss": 4, "lr": 4}}


def test_a_write_the_database_refuses_fails_the_run_with_words_and_no_sql(
        engine: Engine, job_id: str, writer_process: WriterProcess) -> None:
    writer, _ = process_writer(job_id, writer_process)
    writer.submit(PointsWrite("no-such-job", OWNER, [{"name": "loss", "step": 1, "epoch": 1, "value": 1.0,
                                                     "time": T0}], {}), size=1, what="points")
    with pytest.raises(WriterFailed) as failed:
        writer.flush()
    writer.close()
    assert user_error(failed.value) == (
        "internal error: the database refused a write (IntegrityError); see the worker log")


def test_the_writer_process_leaves_when_its_worker_dies(engine: Engine) -> None:
    """A worker killed outright (SIGKILL, out of memory) leaves no writer process behind."""
    worker = subprocess.Popen([sys.executable, "-c", (
        "import sys\n"
        "from service import db\n"
        "from service.settings import Settings\n"
        "from worker.writer_process import WriterProcess\n"
        "process = WriterProcess(Settings(database_url=sys.argv[1], home=sys.argv[2]))\n"
        "process.start()\n"
        "print(process.pid, flush=True)\n"
        "sys.stdin.read()\n"), str(engine.url), str(db.current_settings().home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        assert alive(child)
        worker.kill()
        worker.wait()
        until(lambda: not alive(child), "the writer process gone")
    finally:
        worker.kill()
        worker.wait()


def alive(pid: int) -> bool:
    """Running (a finished process not yet reaped by its new parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
