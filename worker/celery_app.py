"""The Celery app the workers run: broker settings shared with the API (service.queue), plus the tasks."""

from __future__ import annotations

import socket
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from service.queue import make_celery
from service.settings import get_settings


@lru_cache
def get_celery() -> Celery:
    """The workers' Celery app, built on first use (importing this module builds nothing)."""
    app = make_celery(get_settings(), "trainserve-worker")
    app.conf.include = ["worker.tasks"]
    return app


def __getattr__(name: str) -> Any:
    # `celery -A worker.celery_app` and `from worker.celery_app import app` look for a module attribute `app`:
    # hand them the lazily built one.
    if name == "app":
        return get_celery()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Set by `trainserve-server worker` before the worker starts: what this worker announces in the registry.
WORKER_OPTIONS: dict[str, Any] = {"queues": ["cpu"], "concurrency": 1}
_registration: Any = None


@worker_init.connect
def _warm_up(**_: object) -> None:
    # The first optimizer a process builds pulls in a large part of torch (seconds); pay it at start-up, not in
    # the first job's time.
    import torch

    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    if WORKER_OPTIONS["concurrency"] == 1:  # the solo pool: jobs run in this process
        _start_writer()


@worker_process_init.connect
def _start_pool_writer(**_: object) -> None:
    _start_writer()  # a prefork pool's process, which runs jobs


def _start_writer() -> None:
    # The writer process (half a second of imports and a connection here) starts with the worker, not in the
    # first job's time.
    from service import db
    from worker import writer_process

    if get_settings().writer == "process":
        writer_process.for_settings(db.current_settings()).start()


@worker_ready.connect
def _announce(sender: Any = None, **_: object) -> None:
    from worker.observability import Registration, serve_metrics

    global _registration
    settings = get_settings()
    serve_metrics(settings.worker_metrics_port, host=settings.host)  # beside the API's address: local by default
    name = str(getattr(sender, "hostname", None) or f"trainserve@{socket.gethostname()}")
    _registration = Registration(name=name, hostname=socket.gethostname(), queues=list(WORKER_OPTIONS["queues"]),
                                 concurrency=int(WORKER_OPTIONS["concurrency"]), settings=settings)
    _registration.register()
    _registration.start()


@worker_shutting_down.connect
def _drain(**_: object) -> None:
    # A warm shutdown would otherwise wait for the running job to end, which may be hours away.
    from worker.tasks import drain_all

    drain_all()


@worker_shutdown.connect
def _withdraw(**_: object) -> None:
    if _registration is not None:
        _registration.stop()
    from worker import writer_process

    writer_process.close_all()
