"""Log lines: text for people or JSON for pipelines (TRAINSERVE_LOG_FORMAT), with the job and request they are about.

Kept apart from service.observability so a process can set up logging before prometheus_client is imported
(a prefork worker must choose prometheus_client's multiprocess mode first).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from typing import Any

from service.settings import Settings

# The job a log line is about, for code that logs without naming it (set by requests and by the worker task).
current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trainserve_job_id", default=None)
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trainserve_request_id", default=None)

_KEY_VALUE = re.compile(r"(\w+)=(\S+)")
# LogRecord's own attributes, and uvicorn's ANSI-coloured copy of its message: not fields of ours.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. `key=value` pairs in a message (our log style) become fields too, so
    `job.started job_id=... attempt=1` is searchable by job_id without a log parser."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        out.update((k, v) for k, v in _KEY_VALUE.findall(message) if k not in out)
        out.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_"))
        for key, var in (("job_id", current_job_id), ("request_id", current_request_id)):
            value = var.get()
            if value and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


JsonFormatter.converter = time.gmtime  # type: ignore[assignment]


def setup_logging(settings: Settings) -> None:
    """Text (the default) or JSON lines on stderr, per TRAINSERVE_LOG_FORMAT; used by every process we start."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
