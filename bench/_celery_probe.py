"""The queue benchmark's middle peer: a bare Celery worker with trainserve's own Celery configuration.

Started as ``celery -A bench._celery_probe worker`` with TRAINSERVE_HOME / TRAINSERVE_BROKER_URL set like
trainserve's. Its task does nothing but append ``SEQ TIME`` to $BENCH_PROBE_OUT, TIME being time.time() as the
task body begins: send_task -> task body through the same broker and transport options as a training job,
without the API's checks, the database or the worker's claim.
"""

from __future__ import annotations

import os
import time

from service.queue import make_celery
from service.settings import get_settings

PROBE_TASK = "bench.probe"

app = make_celery(get_settings(), "bench-probe")


@app.task(name=PROBE_TASK)
def probe(seq: int) -> None:
    started = time.time()
    with open(os.environ["BENCH_PROBE_OUT"], "a") as out:
        out.write(f"{seq} {started}\n")
