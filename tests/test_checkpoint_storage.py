"""Storing a large checkpoint: on PostgreSQL its blobs are streamed in pieces (COPY, binary format) and come back
as the one-statement INSERT stores them, every column alike; and the worker's writer process, which stores them,
needs about one checkpoint's worth of memory to do so, and keeps none of it once the batch is written."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service import checkpoints
from service.checkpoints import CheckpointPointers, record_checkpoint
from service.db import is_transient
from service.models import Checkpoint, Job, utcnow
from service.settings import Settings
from tests.conftest import migrated_sessions
from worker.writer_process import WriterProcess
from worker.writes import CheckpointWrite

OWNER = "worker-1"
MIB = 2**20


@pytest.fixture(scope="module", params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def pg_sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, tmp_path_factory, "checkpoints")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, tmp_path_factory, "writer-memory")


def new_job(sessions: sessionmaker[Session]) -> str:
    with sessions() as session, session.begin():
        job = Job(tenant="t", name="big", status="running", spec={}, report={}, data_info={}, last_metrics={},
                  lease_owner=OWNER, lease_expires_at=utcnow() + timedelta(hours=1))
        session.add(job)
        session.flush()
        return job.id


def stored_row(sessions: sessionmaker[Session], ckpt_id: str) -> dict[str, Any]:
    with sessions() as session:
        row = session.execute(select(Checkpoint).where(Checkpoint.id == ckpt_id)).scalar_one()
        return {column.key: getattr(row, column.key) for column in Checkpoint.__table__.columns if column.key != "id"}


@pytest.mark.parametrize(("weights_size", "state_size", "value", "is_final"), [
    (3 * MIB + 7, 5 * MIB + 1, 0.125, False),  # pieces and a partial last piece in both blobs
    (2 * MIB, 0, None, True),  # a best-weights checkpoint: no state; no monitored value (NULL)
])
def test_a_checkpoint_streamed_into_postgresql_is_stored_as_the_insert_stores_it(
        pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, weights_size: int, state_size: int,
        value: float | None, is_final: bool) -> None:
    weights, state = os.urandom(weights_size), os.urandom(state_size)
    when = datetime(2026, 12, 1, 13, 5, 59, 123_457, tzinfo=timezone.utc)
    monkeypatch.setattr(checkpoints, "utcnow", lambda: when)
    rows = []
    for streamed_from in (1 << 62, 0):  # the one-statement INSERT, then COPY in pieces of an odd size
        monkeypatch.setattr(checkpoints, "STREAM_BLOBS_FROM_BYTES", streamed_from)
        monkeypatch.setattr(checkpoints, "BLOB_PIECE_BYTES", 65_537)
        job_id = new_job(pg_sessions)
        with pg_sessions() as session, session.begin():
            ckpt_id = record_checkpoint(session, job=CheckpointPointers(job_id, None, None), step=123_456, epoch=-1,
                                        metric="val_loss", value=value, weights=weights, state=state,
                                        is_final=is_final, keep_last=3, keep_best=True, mode="min")
        rows.append({**stored_row(pg_sessions, ckpt_id), "job_id": None})
    inserted, streamed = rows
    assert streamed == inserted
    assert (streamed["weights"], streamed["state"], streamed["value"], streamed["created_at"]) == (
        weights, state, value, when)
    assert streamed["size_bytes"] == weights_size + state_size and streamed["weights_sha256"] == checkpoints.sha256(weights)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the writer's memory from /proc")
def test_the_writer_process_keeps_no_checkpoint_once_written_and_streams_it_into_postgresql(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """A checkpoint of S bytes arrives in the writer as S bytes (its blobs, read off the pipe). Bound as an
    INSERT's parameters, PostgreSQL's driver copied them whole once more (2S); streamed, the rest is a piece and
    the driver's buffer, a few MiB. SQLite copies a bound blob and builds the row from it (3S), so only the idle
    part is checked there. Once written, the process references none of it: not the batch, nor (SQLite) the copy
    the driver's cached INSERT kept of its last bound blobs, its connection closed (the next batch gets another).
    Each blob is larger than glibc's largest mmap threshold (32 MiB), so every copy of it is a mapping of its own,
    returned to the system when freed: what the process still holds is what something still references."""
    size = 2 * 40 * MIB
    job_id = new_job(sessions)
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    process = WriterProcess(Settings(database_url=url, home=tmp_path))
    try:
        process.start()
        process.apply([], "warm-up")  # connected, tables reflected: what it holds before any checkpoint
        assert process.pid is not None
        before = status_kib(process.pid, "VmHWM")
        write = CheckpointWrite(job_id, OWNER, step=1, epoch=1, weights=os.urandom(size // 2),
                                state=os.urandom(size // 2), monitor="loss", monitor_value=1.0, is_final=False,
                                keep_last=2, keep_best=True, mode="min")
        process.apply([write], "checkpoint")
        grown = (status_kib(process.pid, "VmHWM") - before) * 1024
        idle = (status_kib(process.pid, "VmRSS") - before) * 1024
        process.apply([CheckpointWrite(job_id, OWNER, step=2, epoch=2, weights=b"w", state=b"s", monitor="loss",
                                       monitor_value=0.5, is_final=True, keep_last=2, keep_best=True, mode="min")],
                      "checkpoint")
    finally:
        process.close()
    assert idle < size / 4, f"the idle writer holds {idle / MIB:.0f} MiB after a {size // MIB} MiB checkpoint"
    if sessions.kw["bind"].dialect.name == "postgresql":
        assert 0.75 * size <= grown < 1.5 * size, f"storing {size // MIB} MiB took {grown / MIB:.0f} MiB more"
    with sessions() as session:
        sizes = session.scalars(select(Checkpoint.size_bytes).where(Checkpoint.job_id == job_id)
                                .order_by(Checkpoint.step)).all()
    assert sizes == [size, 2]


def test_a_connection_lost_while_streaming_is_a_database_outage_the_writer_retries(
        pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """COPY runs on the driver's own connection: its errors must reach the writer's retry loop as SQLAlchemy's
    own statements' do, a lost connection as an outage (retried for as long as it lasts), not as a failed job."""
    monkeypatch.setattr(checkpoints, "STREAM_BLOBS_FROM_BYTES", 0)
    job_id = new_job(pg_sessions)
    with pg_sessions() as session:
        backend = session.scalar(text("SELECT pg_backend_pid()"))
        with pg_sessions() as admin, admin.begin():
            assert admin.scalar(text("SELECT pg_terminate_backend(:pid, 30000)"), {"pid": backend})  # waits: gone
        with pytest.raises(DBAPIError) as lost:
            record_checkpoint(session, job=CheckpointPointers(job_id, None, None), step=1, epoch=1, metric="loss",
                              value=1.0, weights=os.urandom(MIB), state=b"", is_final=False, keep_last=1,
                              keep_best=True, mode="min")
    assert lost.value.connection_invalidated and is_transient(lost.value)
