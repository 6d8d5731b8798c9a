"""The Celery app the workers run: broker settings shared with the API (service.queue), plus the tasks."""

from __future__ import annotations

from service.queue import make_celery
from service.settings import get_settings

app = make_celery(get_settings(), "trainserve-worker")
app.conf.include = ["worker.tasks"]
