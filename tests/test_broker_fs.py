"""The embedded broker (Celery's filesystem transport) never hands a worker a half-written message.

kombu writes a message file in place; a worker polling in between took the empty file, failed to decode it
and the job was lost. Here a consumer process polls the queue folder while this process publishes, and each
write into the queue folder waits until the consumer has polled the folder twice since the file appeared (or
has taken it): a file visible before it is complete is then always seen, with no timing involved. The same
scenario on kombu's stock transport is the negative control: it must fail, or the test would prove nothing.
"""

from __future__ import annotations

import builtins
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from kombu import Connection

from service.queue import celery_config
from service.settings import Settings

N_MESSAGES = 50
STALL_DEADLINE_S = 60  # only a guard against a consumer that died without saying so


def channel_for(home: Path, transport: str | None = None) -> Any:
    config = celery_config(Settings(home=home, broker_url="filesystem://"))
    options = dict(config["broker_transport_options"], polling_interval=0)
    return Connection("filesystem://", transport=transport or config["broker_transport"],
                      transport_options=options).channel()


def consume(home: Path, transport: str | None, polls: Any, published: Any, finished: Any, out: Any) -> None:
    from queue import Empty

    channel, seen = channel_for(home, transport), set()
    try:
        while len(seen) < N_MESSAGES:
            all_sent = published.is_set()  # read before the poll: an empty queue after it means nothing is left
            try:
                payload = channel._get("cpu")
            except Empty:
                if all_sent:
                    break
                continue
            except Exception as exc:  # a half-written file: what must never happen
                out.put(f"{exc.__class__.__name__}: {exc}")
                return
            finally:
                with polls.get_lock():
                    polls.value += 1
            seen.add(payload["i"])
        out.put(len(seen))
    finally:
        finished.set()


class WritesAfterAPoll:
    """Wraps a file opened in the queue folder: a write first waits until the consumer has finished two polls
    since it started waiting (so one whole poll saw the file, still empty), or took the file, or stopped."""

    def __init__(self, f: Any, path: str, polls: Any, finished: Any) -> None:
        self._f, self._path, self._polls, self._finished = f, path, polls, finished

    def write(self, data: bytes) -> int:
        start = self._polls.value
        deadline = time.monotonic() + STALL_DEADLINE_S
        while self._polls.value < start + 2 and os.path.exists(self._path) and not self._finished.is_set():
            assert time.monotonic() < deadline, "the consumer stopped polling"
            time.sleep(0.0005)
        return int(self._f.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> WritesAfterAPoll:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def publish_while_polled(home: Path, transport: str | None = None) -> Any:
    """What the consumer reports: the number of whole messages it got, or the error of a broken one."""
    queue_folder = str(home / "broker" / "queue")
    real_open = builtins.open
    ctx = multiprocessing.get_context("spawn")
    polls, published, finished, out = ctx.Value("q", 0), ctx.Event(), ctx.Event(), ctx.Queue()

    def watched_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, *args, **kwargs)
        return WritesAfterAPoll(f, str(file), polls, finished) if str(file).startswith(queue_folder) else f

    consumer = ctx.Process(target=consume, args=(home, transport, polls, published, finished, out))
    consumer.start()
    channel = channel_for(home, transport)
    with mock.patch("builtins.open", watched_open):
        for i in range(N_MESSAGES):
            channel._put("cpu", {"i": i, "body": "x" * 2000})
    published.set()
    result = out.get(timeout=120)
    consumer.join(timeout=30)
    return result


@pytest.mark.timeout(180)
def test_every_message_arrives_whole_while_a_worker_polls(tmp_path: Path) -> None:
    assert publish_while_polled(tmp_path) == N_MESSAGES


@pytest.mark.timeout(180)
def test_kombus_own_transport_hands_out_a_half_written_message(tmp_path: Path) -> None:
    # The negative control: the same scenario on the transport the embedded broker replaces loses a message.
    result = publish_while_polled(tmp_path, transport="filesystem")
    assert isinstance(result, str) and "Decode" in result, result
