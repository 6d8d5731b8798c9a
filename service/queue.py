"""The broker side the API needs: a Celery producer that enqueues tasks by name (it never imports worker)."""

from __future__ import annotations

import logging
import os
import time
import threading
import uuid
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps as json_dumps

from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

TRAIN_JOB = "trainserve.train_job"
QUEUES = ("cpu", "gpu")


def queue_for_device(device: str) -> str:
    # `auto` goes to the cpu queue; GPU workers listen on both queues, so they pick auto jobs up too.
    return "gpu" if device == "cuda" else "cpu"


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "cpu",
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "broker_transport_options": {},
    }
    if settings.broker_url.startswith("filesystem"):
        config["broker_transport"] = f"{__name__}:AtomicFilesystemTransport"
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # An idle worker looks for new messages this often: half of it is the mean submit-to-running delay.
            # Safe this low only because messages are published atomically (AtomicFilesystemTransport).
            "polling_interval": 0.02,
        }
    elif settings.broker_url.startswith(("redis", "rediss")):
        # Redis redelivers an unacknowledged task after visibility_timeout: it must exceed the longest job a
        # worker may run, or a healthy long job would be delivered twice (the lease would still stop the copy).
        config["broker_transport_options"] = {"visibility_timeout": settings.job_time_limit_seconds + 3600}
    return config


class AtomicFilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel, publishing messages and exchange tables atomically.

    kombu writes a message file in place: a worker polling at that moment takes the file while it is still
    empty, cannot decode it and stops, and the job is lost (seen once in 130-700 deliveries at a 10 ms poll).
    Here the message is written under a name the worker does not read (it takes only `*.<queue>.msg`), then
    renamed into place, which is atomic within one folder.
    """

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu's bases disagree
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(json_dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"cannot add {final!r} to the queue folder") from exc

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        # kombu creates an exchange's table file empty, then writes it: a publisher reading it in between fails to
        # decode it. Create it whole under another name and link it into place (a link never replaces a file);
        # an existing table is updated in place by kombu, under its lock.
        table = self._exchange_file(exchange)
        if not table.exists():
            self.control_folder.mkdir(exist_ok=True)
            partial = table.with_name(f".{table.name}.{uuid.uuid4().hex}.partial")
            partial.write_text(json_dumps([[routing_key or "", pattern or "", queue or ""]]))
            try:
                os.link(partial, table)
                return
            except FileExistsError:  # another process created it first: add ours to it below
                pass
            finally:
                partial.unlink()
        super()._queue_bind(exchange, routing_key, pattern, queue)


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicFilesystemChannel


def make_celery(settings: Settings, name: str = "trainserve") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


_producers: dict[tuple[str, str, int], Celery] = {}
_producers_lock = threading.Lock()


def get_producer(settings: Settings | None = None) -> Celery:
    """The API's Celery producer for these settings' broker, built on first use (never at import)."""
    settings = settings or get_settings()
    key = (settings.broker_url, str(settings.broker_dir), settings.job_time_limit_seconds)
    with _producers_lock:
        if key not in _producers:
            _producers[key] = make_celery(settings, "trainserve-api")
        return _producers[key]


def reset_producers() -> None:
    """Forget every producer (tests that point the settings at another broker)."""
    with _producers_lock:
        _producers.clear()


def enqueue_training(job_id: str, *, queue: str, settings: Settings | None = None) -> None:
    get_producer(settings).send_task(TRAIN_JOB, args=[job_id], queue=queue)
    log.info("job.enqueued job_id=%s queue=%s", job_id, queue)


def broker_queue_sizes(settings: Settings | None = None) -> dict[str, int] | None:
    """Task messages waiting in the broker per queue (not counting ones a worker has taken); None if it is down."""
    sizes: dict[str, int] = {}
    try:
        with get_producer(settings).connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            for queue in QUEUES:
                try:
                    sizes[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # never declared (nothing ever sent to it): an empty queue
                    sizes[queue] = 0
    except Exception as exc:
        log.warning("broker.unavailable error=%s", exc)
        return None
    return sizes


def broker_ok(settings: Settings | None = None) -> bool:
    try:
        with get_producer(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception as exc:  # any broker failure means "not ready"
        log.warning("broker.unavailable error=%s", exc)
        return False
