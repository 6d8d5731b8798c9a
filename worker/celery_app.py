"""The Celery app the workers run: broker settings shared with the API (service.queue), plus the tasks."""

from __future__ import annotations

from celery.signals import worker_init

from service.queue import make_celery
from service.settings import get_settings

app = make_celery(get_settings(), "trainserve-worker")
app.conf.include = ["worker.tasks"]


@worker_init.connect
def _warm_up(**_: object) -> None:
    # The first optimizer a process builds pulls in a large part of torch (seconds); pay it at start-up, not in
    # the first job's time.
    import torch

    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
