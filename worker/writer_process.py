"""The worker's writer process: applies a run's writes (worker.writes) in a process of its own.

A writer thread in the training process holds the interpreter lock for SQLAlchemy's Python, and training (which
lets go of the lock in every PyTorch op) waits for it at each hand-over: measured in bench.metrics_store, that
cost training 5-21 points more than the same writes made from another process. So the worker's BackgroundWriter
thread only pickles a batch, hands it to this process over a pipe and waits for the answer, with the lock
released; the transaction, its retries through an outage and the lease check run here.

One process per worker process, started with the worker (warm for the first job) and reused by every job, one
batch at a time. It lives as long as its parent: it leaves at the end of its pipe, and stops retrying an outage
once its parent is gone. Should it die (killed, out of memory), the next batch starts another and resends the
lost one as a retry, which stores nothing twice (see worker.writes).

Run as ``python -m worker.writer_process IN_FD OUT_FD``; its first message is the settings to connect with.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from service import db
from service.logs import current_job_id, setup_logging
from service.settings import Settings
from worker.writes import LeaseLost, Write, WriterFailed, apply_writes, user_error, write_until_done

log = logging.getLogger(__name__)

# A process that dies before answering this many times in a row is not a passing accident (it cannot start, or
# every attempt of this batch kills it): the batch fails, and with it the run, with a clear error.
MAX_DEATHS_IN_A_ROW = 3


class WriterProcess:
    """The training side of one writer process: apply(batch) sends it and waits for its answer."""

    def __init__(self, settings: Settings) -> None:
        self.database_url = settings.database_url
        self._settings = settings.model_dump_json().encode()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._inbox: Connection | None = None  # answers from the process
        self._outbox: Connection | None = None  # batches to it

    def start(self) -> None:
        with self._lock:
            self._ensure_started()

    def apply(self, batch: list[Write], what: str) -> None:
        """Apply the writes in one transaction in the writer process; LeaseLost or WriterFailed as it answers."""
        with self._lock:
            is_retry, deaths = False, 0
            while True:
                outbox, inbox = self._ensure_started()
                try:
                    send(outbox, (batch, what, is_retry))
                    answer = receive(inbox)
                    break
                except (EOFError, OSError):
                    # It died with the batch: it may have committed it without answering.
                    code = self._reap()
                    deaths += 1
                    log.warning("writer_process.died exit=%s what=%s: starting another", code, what)
                    if deaths >= MAX_DEATHS_IN_A_ROW:
                        raise WriterFailed(f"internal error: the writer process died {deaths} times writing {what}; "
                                           "see the worker log") from None
                    is_retry = True
        kind, detail = answer
        if kind == "lease_lost":
            raise LeaseLost(detail)
        if kind == "failed":
            raise WriterFailed(detail)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                assert self._outbox is not None
                self._outbox.close()  # its end of the pipe: it leaves
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                self._reap()

    def _ensure_started(self) -> tuple[Connection, Connection]:
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                self._reap()
            to_child, from_parent = os.pipe()
            from_child, to_parent = os.pipe()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "worker.writer_process", str(to_child), str(to_parent)],
                pass_fds=(to_child, to_parent), stdin=subprocess.DEVNULL)
            os.close(to_child)
            os.close(to_parent)
            self._outbox = Connection(from_parent, readable=False)
            self._inbox = Connection(from_child, writable=False)
            self._outbox.send_bytes(self._settings)
        assert self._outbox is not None and self._inbox is not None
        return self._outbox, self._inbox

    def _reap(self) -> int | None:
        proc, self._proc = self._proc, None
        for conn in (self._inbox, self._outbox):
            if conn is not None and not conn.closed:
                conn.close()
        self._inbox = self._outbox = None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid


def send(conn: Connection, message: Any) -> None:
    """One message: its pickle, then each buffer the pickle left out of band (a checkpoint's blobs, see
    CheckpointWrite), sent from where it lies: the trip copies no checkpoint in this process."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(len(buffers).to_bytes(4, "little") + head)
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def receive(conn: Connection) -> Any:
    head = conn.recv_bytes()
    buffers = [conn.recv_bytes() for _ in range(int.from_bytes(head[:4], "little"))]
    return pickle.loads(memoryview(head)[4:], buffers=buffers)


_processes: dict[str, WriterProcess] = {}
_processes_pid = os.getpid()
_processes_lock = threading.Lock()


def for_settings(settings: Settings) -> WriterProcess:
    """This process's writer process for settings.database_url, started on first use."""
    global _processes_pid
    with _processes_lock:
        if _processes_pid != os.getpid():  # a forked child (a prefork pool's): its parent's pipes are not ours
            _processes.clear()
            _processes_pid = os.getpid()
        process = _processes.get(settings.database_url)
        if process is None:
            process = _processes[settings.database_url] = WriterProcess(settings)
    return process


def close_all() -> None:
    with _processes_lock:
        processes = list(_processes.values()) if _processes_pid == os.getpid() else []
        _processes.clear()
    for process in processes:
        process.close()


def serve(inbox: Connection, outbox: Connection) -> None:
    """The writer process's loop: a batch in, its answer out, until the parent closes its end."""
    parent = os.getppid()
    settings = Settings.model_validate_json(inbox.recv_bytes())
    setup_logging(settings)
    db.configure(settings)

    def parent_alive() -> bool:
        return os.getppid() == parent

    while True:
        try:
            batch, what, is_retry = receive(inbox)
        except EOFError:
            return
        answer = _apply(batch, what=what, is_retry=is_retry, keep_trying=parent_alive)
        del batch  # a checkpoint's blobs (gigabytes at the cap) are not kept while this process waits for the next
        if answer is None:  # the parent died during an outage: nobody waits for this batch
            return
        send(outbox, answer)


def _apply(batch: list[Write], *, what: str, is_retry: bool, keep_trying: Callable[[], bool]) -> tuple[str, Any] | None:
    """One batch in one transaction: the answer for the parent, None if it left during an outage."""
    # The log lines of this batch carry its job's id, as the worker's own lines do.
    current_job_id.set(getattr(batch[0], "job_id", None) if batch else None)
    try:
        write_until_done(lambda session, retry: apply_writes(batch, session, retry), what=what,
                         is_retry=is_retry, keep_trying=keep_trying)
        return ("ok", None)
    except LeaseLost as exc:
        return ("lease_lost", exc.args[0] if exc.args else "")
    except TimeoutError:
        return None
    except Exception as exc:
        log.exception("writer_process.failed what=%s", what)
        return ("failed", user_error(exc))


def main(argv: list[str]) -> None:
    # A terminal's Ctrl-C or a stop sent to the worker's process group is the worker's to handle (a warm shutdown
    # still writes the last batches): this process leaves when the worker does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inbox, outbox = Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False)
    try:
        serve(inbox, outbox)
    except (EOFError, BrokenPipeError):  # the parent left
        pass
    finally:
        db.get_engine().dispose()


if __name__ == "__main__":
    main(sys.argv[1:])
