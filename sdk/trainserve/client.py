"""The Python client: ``Client`` with its ``jobs``, ``datasets`` and ``models`` resources and ``predict``.

Connection settings come from the arguments, else ``TRAINSERVE_URL`` / ``TRAINSERVE_API_KEY``, else
``http://127.0.0.1:8000`` and the key file ``$TRAINSERVE_HOME/api-key`` that ``trainserve-server up`` writes.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, Self, overload

import httpx

from trainserve._http import Transport
from trainserve._wait import poll_until_finished
from trainserve.errors import TrainserveError
from trainserve.models import (
    Alias,
    Checkpoint,
    Dataset,
    Job,
    MetricPoint,
    Metrics,
    Model,
    ModelSummary,
    ModelVersion,
    Prediction,
    Report,
    WorkerInfo,
)
from trainserve.progress import JobProgress
from trainserve.spec import to_jsonable

# --- sweeps and comparing runs (imports) ---
from trainserve.models import Comparison
from trainserve.sweeps import Sweeps
# --- end sweeps and comparing runs ---

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0

# Anything create/validate accept: a dict, a path to a JSON file, a builder (``Spec``) or a pydantic model.
SpecLike = Mapping[str, Any] | str | os.PathLike[str] | Any


def trainserve_home() -> Path:
    """``$TRAINSERVE_HOME``, else ``~/.trainserve``."""
    home = os.environ.get("TRAINSERVE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".trainserve"


def resolve_url(url: str | None = None) -> str:
    return (url or os.environ.get("TRAINSERVE_URL") or DEFAULT_URL).rstrip("/")


def resolve_api_key(api_key: str | None = None) -> str | None:
    """The key given, else ``TRAINSERVE_API_KEY``, else the first line of ``$TRAINSERVE_HOME/api-key``."""
    if api_key:
        return api_key
    env = os.environ.get("TRAINSERVE_API_KEY")
    if env:
        return env
    path = trainserve_home() / "api-key"
    try:
        text = path.read_text().strip()
    except OSError:
        log.debug("no api key: %s unreadable and TRAINSERVE_API_KEY unset", path)
        return None
    return text.splitlines()[0].strip() if text else None


def spec_to_body(spec: SpecLike) -> dict[str, Any]:
    """The JSON body for a spec given as a dict, a JSON file path, a builder or a pydantic model."""
    if isinstance(spec, (str, os.PathLike)):
        body = json.loads(Path(spec).read_text())
        if not isinstance(body, dict):
            raise TypeError(f"{spec}: a spec file holds one JSON object")
        return body
    if isinstance(spec, Mapping):
        return dict(to_jsonable(spec))
    to_dict = getattr(spec, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    model_dump = getattr(spec, "model_dump", None)
    if callable(model_dump):
        # Only what the caller set: the server fills its own defaults.
        return dict(model_dump(mode="json", exclude_unset=True))
    raise TypeError(f"cannot send {type(spec).__name__} as a spec: give a dict, a path, a Spec or a pydantic model")


def _names_param(names: Sequence[str] | str | None) -> str | None:
    if names is None:
        return None
    return names if isinstance(names, str) else ",".join(names)


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _iter_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from a text/event-stream, per the WHATWG framing rules the server follows."""
    event = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


class Jobs:
    """``client.jobs``: submit, inspect, follow and clean up training jobs."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        """Submit a spec; retried safely because every attempt carries the same ``Idempotency-Key``."""
        key = idempotency_key or str(uuid.uuid4())
        response = self._t.request(
            "POST", "/jobs", json=spec_to_body(spec), headers={"Idempotency-Key": key}, idempotent=True
        )
        job = Job.model_validate(response.json())
        log.info("job.created job_id=%s", job.id)
        return job

    def validate(self, spec: SpecLike) -> Report:
        """The server's static check (shapes, parameters, FLOPs, warnings); problems are in ``.errors``."""
        response = self._t.request("POST", "/jobs/validate", json=spec_to_body(spec), idempotent=True)
        return Report.model_validate(response.json())

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._t.request("GET", f"/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        """A queued job never starts; a running one stops at its next step; a finished one raises ``Conflict``."""
        return Job.model_validate(self._t.request("POST", f"/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        """Delete a finished job with its metrics and checkpoints (``Conflict`` while queued or running)."""
        self._t.request("DELETE", f"/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        *,
        progress: bool = False,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job is succeeded, failed or cancelled and return it (it does not raise on failure).

        ``progress=True`` draws a live bar (epoch, step, loss, ETA) on stderr; ``timeout`` raises
        ``WaitTimeout`` when the job is still going after that many seconds.
        """
        with JobProgress(job_id, enabled=progress) as bar:
            job = poll_until_finished(lambda: self.get(job_id), what=f"job {job_id}", on_each=bar.update_job,
                                      poll_interval=poll_interval, timeout=timeout)
        log.info("job.finished job_id=%s status=%s", job.id, job.status)
        return job

    def metrics_page(
        self,
        job_id: str,
        *,
        names: Sequence[str] | str | None = None,
        since_step: int | None = None,
        max_points: int | None = None,
    ) -> Metrics:
        """One metrics answer with its ``last_step`` cursor, for callers that poll."""
        params = _params(names=_names_param(names), since_step=since_step, max_points=max_points)
        return Metrics.model_validate(self._t.request("GET", f"/jobs/{job_id}/metrics", params=params).json())

    @overload
    def metrics(
        self,
        job_id: str,
        *,
        names: Sequence[str] | str | None = ...,
        since_step: int | None = ...,
        max_points: int | None = ...,
        as_frame: Literal[False] = ...,
    ) -> builtins.list[MetricPoint]: ...

    @overload
    def metrics(
        self,
        job_id: str,
        *,
        names: Sequence[str] | str | None = ...,
        since_step: int | None = ...,
        max_points: int | None = ...,
        as_frame: Literal[True],
    ) -> Any: ...

    def metrics(
        self,
        job_id: str,
        *,
        names: Sequence[str] | str | None = None,
        since_step: int | None = None,
        max_points: int | None = None,
        as_frame: bool = False,
    ) -> Any:
        """Metric points ordered by (name, step); ``as_frame=True`` gives a pandas DataFrame (needs pandas)."""
        page = self.metrics_page(job_id, names=names, since_step=since_step, max_points=max_points)
        points = list(page.points)
        while page.next_since_step is not None:  # the server answers a bounded page: follow its cursor to the end
            page = self.metrics_page(job_id, names=names, since_step=page.next_since_step, max_points=max_points)
            points.extend(page.points)
        points.sort(key=lambda p: (p.name, p.step))
        if not as_frame:
            return points
        try:
            import pandas as pd
        except ImportError as exc:  # pandas is optional, like numpy
            raise ImportError("metrics(as_frame=True) needs pandas: pip install 'trainserve[pandas]'") from exc
        columns = ["name", "step", "epoch", "value", "time"]
        return pd.DataFrame([p.model_dump() for p in points], columns=columns)

    def metrics_csv(
        self,
        job_id: str,
        *,
        names: Sequence[str] | str | None = None,
        since_step: int | None = None,
        max_points: int | None = None,
    ) -> str:
        """The server's CSV (header ``name,step,epoch,value,time``)."""
        params = _params(names=_names_param(names), since_step=since_step, max_points=max_points, format="csv")
        return self._t.request("GET", f"/jobs/{job_id}/metrics", params=params).text

    def stream_metrics(
        self,
        job_id: str,
        *,
        names: Sequence[str] | str | None = None,
        since_step: int | None = None,
        progress: bool = False,
    ) -> Iterator[MetricPoint]:
        """Yield points live as the job produces them, ending once it finished and every point was sent.

        A dropped connection is resumed from the last step received, so no point is lost or repeated.
        """
        total: int | None = None
        epochs: int | None = None
        if progress:
            first = self.get(job_id)
            total, epochs = first.progress.total_steps, first.progress.epochs
        cursor = since_step
        failures = 0
        with JobProgress(job_id, enabled=progress) as bar:
            while True:
                params = _params(names=_names_param(names), since_step=cursor)
                try:
                    with self._t.stream("GET", f"/jobs/{job_id}/metrics/stream", params=params) as response:
                        for event, data in _iter_sse(response.iter_lines()):
                            failures = 0
                            payload = json.loads(data)
                            if event == "points":
                                for raw in payload:
                                    point = MetricPoint.model_validate(raw)
                                    if cursor is not None and point.step <= cursor:
                                        continue  # already delivered before a reconnect
                                    if point.name == "train_loss":
                                        bar.update(step=point.step, total=total, epoch=point.epoch, epochs=epochs,
                                                   loss=point.value)
                                    yield point
                                steps = [int(raw["step"]) for raw in payload if "step" in raw]
                                if steps:
                                    cursor = max(steps) if cursor is None else max(cursor, *steps)
                            elif event == "status":
                                prog = payload.get("progress") or {}
                                total = prog.get("total_steps") or total
                                epochs = prog.get("epochs") or epochs
                                bar.update(status=payload.get("status"), step=prog.get("step"), total=total,
                                           epoch=prog.get("epoch"), epochs=epochs)
                            elif event == "error":
                                raise TrainserveError(f"metrics stream for job {job_id}: {payload.get('detail')}")
                            elif event == "end":
                                bar.update(status=payload.get("status"))
                                return
                except httpx.TransportError as exc:
                    log.info("metrics stream for job %s dropped: %s", job_id, exc)
                failures += 1
                if failures > self._t.retries:
                    raise TrainserveError(f"metrics stream for job {job_id} kept closing before its end event")
                time.sleep(min(self._t.max_backoff, self._t.backoff * 2**failures))

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        body = self._t.request("GET", f"/jobs/{job_id}/checkpoints").json()
        return [Checkpoint.model_validate(item) for item in body.get("items", [])]

    def download(
        self, job_id: str, checkpoint: str = "best", path: str | os.PathLike[str] | None = None
    ) -> Path:
        """Save a checkpoint's weights (``best``, ``latest`` or an id) as ``.safetensors``; return the path."""
        target = Path(path) if path is not None else Path(f"{job_id}-{checkpoint}.safetensors")
        partial = target.with_name(target.name + ".part")
        with self._t.stream("GET", f"/jobs/{job_id}/checkpoints/{checkpoint}") as response, partial.open("wb") as fh:
            for chunk in response.iter_bytes():
                fh.write(chunk)
        # Rename last, so a failed download never leaves a truncated file under the real name.
        partial.replace(target)
        return target

    def export(
        self, job_id: str, checkpoint: str = "best", format: ExportFormat = "onnx",
        path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Save a checkpoint as one file that runs without trainserve (``onnx`` or ``pt2``); return the path."""
        target = Path(path) if path is not None else Path(f"{job_id}-{checkpoint}.{format}")
        return _save(self._t, f"/jobs/{job_id}/checkpoints/{checkpoint}/export", target, params={"format": format})

    # --- sweeps and comparing runs: client.jobs.compare ---
    def compare(
        self, ids: Sequence[str], *, names: Sequence[str] | str | None = None, max_points: int = 500
    ) -> Comparison:
        """Jobs side by side: each one's status, best and curves (at most ``max_points`` per series), and
        ``spec_diff``, the spec paths whose values differ, each job's value in the order of ``ids``."""
        params = _params(ids=",".join(ids), names=_names_param(names), max_points=max_points)
        return Comparison.model_validate(self._t.request("GET", "/jobs/compare", params=params).json())
    # --- end sweeps and comparing runs ---

    def list(
        self,
        *,
        status: str | None = None,
        page_size: int | None = None,
        max_items: int | None = None,
    ) -> Iterator[Job]:
        """Every job, newest first, following ``next_cursor`` page by page (lazily)."""
        count = 0
        cursor: str | None = None
        while True:
            params = _params(status=status, limit=page_size, cursor=cursor)
            body = self._t.request("GET", "/jobs", params=params).json()
            for item in body.get("items", []):
                if max_items is not None and count >= max_items:
                    return
                count += 1
                yield Job.model_validate(item)
            cursor = body.get("next_cursor")
            if not cursor:
                return


ExportFormat = Literal["onnx", "pt2"]


def _save(transport: Transport, url: str, target: Path, **kwargs: Any) -> Path:
    partial = target.with_name(target.name + ".part")
    with transport.stream("GET", url, **kwargs) as response, partial.open("wb") as fh:
        for chunk in response.iter_bytes():
            fh.write(chunk)
    # Rename last, so a failed download never leaves a truncated file under the real name.
    partial.replace(target)
    return target


class Models:
    """``client.models``: the registry. A version pins one checkpoint of a job; aliases (``prod``) move."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def register(self, name: str, job_id: str, checkpoint: str = "best") -> ModelVersion:
        """Register the job's checkpoint (``best``, ``latest`` or an id, pinned now) as the next version."""
        body = {"name": name, "job_id": job_id, "checkpoint": checkpoint}
        # Not idempotent: a repeat would add another version.
        response = self._t.request("POST", "/models", json=body, idempotent=False)
        return ModelVersion.model_validate(response.json())

    def list(self, *, page_size: int | None = None) -> Iterator[ModelSummary]:
        """Every model, newest first (lazily, page by page)."""
        cursor: str | None = None
        while True:
            body = self._t.request("GET", "/models", params=_params(limit=page_size, cursor=cursor)).json()
            for item in body.get("items", []):
                yield ModelSummary.model_validate(item)
            cursor = body.get("next_cursor")
            if not cursor:
                return

    def get(self, name: str) -> Model:
        return Model.model_validate(self._t.request("GET", f"/models/{name}").json())

    def version(self, name: str, version: int) -> ModelVersion:
        return ModelVersion.model_validate(self._t.request("GET", f"/models/{name}/versions/{version}").json())

    def set_alias(self, name: str, alias: str, version: int) -> Alias:
        """Point ``alias`` at ``version`` (creating or moving it); /predict follows within its cache time."""
        response = self._t.request("PUT", f"/models/{name}/aliases/{alias}", json={"version": version})
        return Alias.model_validate(response.json())

    def delete_alias(self, name: str, alias: str) -> None:
        self._t.request("DELETE", f"/models/{name}/aliases/{alias}")

    def export(self, name: str, version: int, format: ExportFormat = "onnx",
               path: str | os.PathLike[str] | None = None) -> Path:
        """Save a version as one file that runs without trainserve (``onnx`` or ``pt2``); return the path."""
        target = Path(path) if path is not None else Path(f"{name}-{version}.{format}")
        return _save(self._t, f"/models/{name}/versions/{version}/export", target, params={"format": format})


class Datasets:
    """``client.datasets``: upload CSV / Parquet / NPZ files and look them up."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def upload(
        self,
        file: str | os.PathLike[str] | bytes | IO[bytes],
        *,
        target: str | Sequence[str],
        name: str | None = None,
    ) -> Dataset:
        """Upload a file with its target column(s) named; ``name`` defaults to the file name."""
        if isinstance(file, (str, os.PathLike)):
            path = Path(file)
            content, filename = path.read_bytes(), path.name
        elif isinstance(file, bytes):
            content, filename = file, name or "upload.csv"
        else:
            content = file.read()
            filename = Path(str(getattr(file, "name", "") or name or "upload.csv")).name
        targets = [target] if isinstance(target, str) else builtins.list(target)
        data: dict[str, Any] = {"target": targets}
        if name is not None:
            data["name"] = name
        # Not idempotent: only a connection that never opened is retried.
        response = self._t.request("POST", "/datasets", files={"file": (filename, content)}, data=data,
                                   idempotent=False)
        return Dataset.model_validate(response.json())

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._t.request("GET", f"/datasets/{dataset_id}").json())

    def list(self, *, page_size: int | None = None) -> Iterator[Dataset]:
        cursor: str | None = None
        while True:
            body = self._t.request("GET", "/datasets", params=_params(limit=page_size, cursor=cursor)).json()
            for item in body.get("items", []):
                yield Dataset.model_validate(item)
            cursor = body.get("next_cursor")
            if not cursor:
                return


class Client:
    """A trainserve server: ``client.jobs``, ``client.datasets``, ``client.models`` and ``client.predict``.

    ``retries`` and ``backoff`` govern the automatic retry of connection failures and 503s on calls that
    are safe to repeat. Use it as a context manager, or call ``close()``, to release the connection pool.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = resolve_url(url)
        self.api_key = resolve_api_key(api_key)
        self._transport = Transport(
            base_url=self.url, api_key=self.api_key, timeout=timeout, retries=retries, backoff=backoff, http=http
        )
        self.jobs = Jobs(self._transport)
        self.datasets = Datasets(self._transport)
        self.models = Models(self._transport)
        self.sweeps = Sweeps(self._transport, spec_to_body=spec_to_body)  # sweeps and comparing runs

    def predict(
        self,
        job_id: str | None = None,
        inputs: Any = None,
        checkpoint: str | None = None,
        *,
        model: str | None = None,
        records: Sequence[Mapping[str, Any]] | None = None,
    ) -> Prediction:
        """Run a trained job (``job_id``, ``checkpoint`` default ``best``) or a registered ``model``
        (``"name@alias"``, ``"name:version"`` or ``"name"``) on rows of features (lists or anything with
        ``.tolist()``, e.g. numpy), or on ``records`` (``[{feature: value}]``) where the data named its features."""
        if (job_id is None) == (model is None):
            raise TypeError("give exactly one of job_id and model")
        if (inputs is None) == (records is None):
            raise TypeError("give exactly one of inputs and records")
        body: dict[str, Any] = {"job_id": job_id} if job_id is not None else {"model": model}
        if checkpoint is not None or job_id is not None:
            body["checkpoint"] = checkpoint or "best"
        if inputs is not None:
            body["inputs"] = to_jsonable(inputs)
        else:
            body["records"] = to_jsonable(builtins.list(records or []))
        # A prediction changes nothing on the server, so it is as safe to retry as a GET.
        response = self._transport.request("POST", "/predict", json=body, idempotent=True)
        return Prediction.model_validate(response.json())

    def workers(self) -> builtins.list[WorkerInfo]:
        """The live training workers: their queues, device and how many jobs each is training."""
        items = self._transport.request("GET", "/workers").json()["items"]
        return [WorkerInfo.model_validate(item) for item in items]

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self._transport.request("GET", "/healthz").json()
        return body

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"
