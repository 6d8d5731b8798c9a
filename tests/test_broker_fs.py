"""The embedded broker (Celery's filesystem transport) never hands a worker a half-written message.

kombu writes a message file in place; a worker polling in between took the empty file, failed to decode it
and the job was lost. Here a consumer process polls the queue folder as fast as it can while this process
publishes, with every write into the queue folder slowed down so that a file visible before it is complete
would certainly be caught: every message must arrive whole.
"""

from __future__ import annotations

import builtins
import multiprocessing
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from kombu import Connection

from service.queue import celery_config
from service.settings import Settings

N_MESSAGES = 300
WRITE_DELAY_S = 0.003


def channel_for(home: Path, transport: str | None = None) -> Any:
    config = celery_config(Settings(home=home, broker_url="filesystem://"))
    options = dict(config["broker_transport_options"], polling_interval=0)
    return Connection("filesystem://", transport=transport or config["broker_transport"],
                      transport_options=options).channel()


def consume(home: Path, transport: str | None, out: Any) -> None:
    from queue import Empty

    channel, seen, idle = channel_for(home, transport), set(), 0
    while len(seen) < N_MESSAGES and idle < 200_000:
        try:
            payload = channel._get("cpu")
        except Empty:
            idle += 1
            continue
        except Exception as exc:  # a half-written file: what must never happen
            out.put(f"{exc.__class__.__name__}: {exc}")
            return
        seen.add(payload["i"])
    out.put(len(seen))


class SlowWrites:
    """Wraps a file opened in the queue folder: each write waits first, as on a loaded machine."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, data: bytes) -> int:
        time.sleep(WRITE_DELAY_S)
        return int(self._f.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> SlowWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def publish_while_polled(home: Path, transport: str | None = None) -> Any:
    queue_folder = str(home / "broker" / "queue")
    real_open = builtins.open

    def slow_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, *args, **kwargs)
        return SlowWrites(f) if str(file).startswith(queue_folder) else f

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    consumer = ctx.Process(target=consume, args=(home, transport, out))
    consumer.start()
    channel = channel_for(home, transport)
    with mock.patch("builtins.open", slow_open):
        for i in range(N_MESSAGES):
            channel._put("cpu", {"i": i, "body": "x" * 2000})
    result = out.get(timeout=120)
    consumer.join(timeout=30)
    return result


@pytest.mark.timeout(180)
def test_every_message_arrives_whole_while_a_worker_polls(tmp_path: Path) -> None:
    assert publish_while_polled(tmp_path) == N_MESSAGES
