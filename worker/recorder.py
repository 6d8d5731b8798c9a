"""What a training run writes to the database, written off the training thread, in order, through any outage.

fit() reports points, progress and checkpoints through JobRecorder's callbacks. Each becomes a write (data, see
worker.writes) on a bounded queue that one background thread applies in the order fit() reported them, so the
training step never waits for the database. Whatever is queued when the thread comes for work goes in one
transaction (an epoch's end queues points, progress and a checkpoint together): a transaction's own cost
(session, commit) is much of a small write's. By default the thread hands each batch to the worker's writer
process (worker.writer_process) and waits for its answer without holding the interpreter lock, so the database
work takes nothing of it from training; TRAINSERVE_WRITER=thread applies batches on the thread itself.
While the database is away the writer retries for as long as the outage lasts (an outage never fails a job); once
the buffer is full, the training thread waits, so memory stays bounded. The job-row changes of a transaction's
writes (last metrics, progress, checkpoint pointers) go in one UPDATE at its end that also checks the lease: a
transaction that finds the lease gone (another worker resumed the job) is rolled back whole, and stops everything.
Nothing is lost on a kill: a resumed run replays from its latest written checkpoint.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable

from service.spec import JobSpec
from worker.engine import CheckpointBlob, Point, Progress
from worker.observability import SAMPLES_PER_SECOND, STEPS
from worker.writes import CheckpointWrite, PointsWrite, ProgressWrite, Write, apply_writes, write_until_done

POINT_BYTES = 200  # a buffered point's rough footprint, for the byte budget
# Applies one batch in one transaction, however long the database is away; raises LeaseLost and the like.
ApplyBatch = Callable[[list[Write], str], None]


def apply_here(batch: list[Write], what: str) -> None:
    """A batch applied on the calling thread (TRAINSERVE_WRITER=thread)."""
    write_until_done(lambda session, is_retry: apply_writes(batch, session, is_retry), what=what)


class BackgroundWriter(threading.Thread):
    """Applies writes in order on one thread; the producer waits only when max_bytes are already buffered."""

    def __init__(self, *, job_id: str, max_bytes: int, apply: ApplyBatch = apply_here) -> None:
        super().__init__(name=f"writer-{job_id}", daemon=True)
        self.job_id, self.max_bytes, self._apply = job_id, max_bytes, apply
        self._items: collections.deque[tuple[Write, int, str]] = collections.deque()
        self._buffered = 0
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def submit(self, write: Write, *, size: int, what: str) -> None:
        with self._cond:
            self._raise_error()
            # Always admit one item, however large, so a checkpoint bigger than the budget still goes through.
            while self._items and self._buffered + size > self.max_bytes and self._error is None:
                self._cond.wait()
            self._raise_error()
            self._items.append((write, size, what))
            self._buffered += size
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until everything submitted so far is written (however long the database is away)."""
        with self._cond:
            while (self._items or self._busy) and self._error is None:
                self._cond.wait()
            self._raise_error()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                batch = list(self._items)
                self._items.clear()
                self._busy = True
            written = sum(size for _, size, _ in batch)
            try:
                self._apply([write for write, _, _ in batch], "+".join(dict.fromkeys(what for _, _, what in batch)))
            except BaseException as exc:  # LeaseLost, or a bug: hand it to the training thread
                with self._cond:
                    self._error = exc
                    self._items.clear()
                    self._busy = False
                    self._cond.notify_all()
                return
            del batch  # written: a checkpoint's blobs are not kept while the thread waits for the next batch
            with self._cond:
                self._buffered -= written
                self._busy = False
                self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


class JobRecorder:
    """fit()'s callbacks: each queues one write, applied in order and only while we hold the lease."""

    def __init__(self, *, job_id: str, owner: str, spec: JobSpec, writer: BackgroundWriter, start_step: int = 0,
                 last_metrics: dict[str, float] | None = None) -> None:
        self.job_id, self.owner, self.spec, self.writer = job_id, owner, spec, writer
        self.last_step = start_step  # a resumed run's steps count from its checkpoint
        # Only the lease holder writes last_metrics, so this copy is the truth: no read before each write.
        self.last_metrics: dict[str, float | None] = dict(last_metrics or {})

    def points(self, points: list[Point]) -> None:
        # Plain dicts, not dataclasses.asdict (which deep-copies field by field: 13 us a point).
        rows = [{"name": p.name, "step": p.step, "epoch": p.epoch, "value": p.value, "time": p.time} for p in points]
        for p in points:
            # JSON has no inf or NaN (PostgreSQL's json column refuses them): a non-finite latest value is null.
            self.last_metrics[p.name] = p.value if math.isfinite(p.value) else None
            if p.name == "samples_per_s":
                SAMPLES_PER_SECOND.set(p.value)
        self.writer.submit(PointsWrite(self.job_id, self.owner, rows, dict(self.last_metrics)),
                           size=POINT_BYTES * len(rows), what="points")

    def progress(self, progress: Progress) -> None:
        STEPS.inc(max(0, progress.step - self.last_step))
        self.last_step = progress.step
        self.writer.submit(ProgressWrite(self.job_id, self.owner, epoch=progress.epoch, step=progress.step,
                                         total_steps=progress.total_steps, epochs=progress.epochs),
                           size=POINT_BYTES, what="progress")

    def checkpoint(self, blob: CheckpointBlob) -> None:
        policy = self.spec.training.checkpoint
        write = CheckpointWrite(self.job_id, self.owner, step=blob.step, epoch=blob.epoch, weights=blob.weights,
                                state=blob.state, monitor=blob.monitor, monitor_value=blob.monitor_value,
                                is_final=blob.is_final, keep_last=policy.keep_last, keep_best=policy.keep_best,
                                mode=policy.mode)
        self.writer.submit(write, size=len(blob.weights) + len(blob.state), what="checkpoint")
