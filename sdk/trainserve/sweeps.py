"""``client.sweeps``: searches over a spec's values whose trials are ordinary jobs, and the progress bar that
``sweeps.wait`` draws over the trials.

A sweep is a base spec plus a space of JSON paths into it (written like error locs: ``optimizer.lr``,
``model.layers[0].out_channels``), each with a distribution: ``{"choice": [...]}``, ``{"uniform": [lo, hi]}``,
``{"log_uniform": [lo, hi]}`` or ``{"int_uniform": [lo, hi]}``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from trainserve._http import Transport
from trainserve._wait import poll_until_finished
from trainserve.models import TERMINAL_STATUSES, Sweep

log = logging.getLogger(__name__)

SearchMethod = Literal["random", "grid", "tpe"]
PrunerType = Literal["none", "median", "asha"]
SpaceLike = Mapping[str, Mapping[str, Any]] | str | os.PathLike[str]


def space_to_body(space: SpaceLike) -> dict[str, Any]:
    """A space given as a mapping or as the path of a JSON file holding one."""
    if isinstance(space, (str, os.PathLike)):
        body = json.loads(Path(space).read_text())
        if not isinstance(body, dict):
            raise TypeError(f"{space}: a space file holds one JSON object of path -> distribution")
        return body
    return {str(key): dict(value) for key, value in space.items()}


def pruner_to_body(pruner: PrunerType | Mapping[str, Any] | None) -> dict[str, Any]:
    """``"asha"`` or ``{"type": "asha", "min_epochs": 2, ...}``; None: no pruning."""
    if pruner is None:
        return {"type": "none"}
    if isinstance(pruner, str):
        return {"type": pruner}
    return dict(pruner)


class SweepProgress:
    """One line over a sweep's trials: trials ended of all, the count per status and the best objective."""

    def __init__(self, sweep_id: str, *, console: Console | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self._sweep_id = sweep_id
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> Self:
        if self.enabled:
            self._bar.start()
            self._task = self._bar.add_task(f"sweep {self._sweep_id[:8]}", total=None, counts="", best="-")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self._bar.stop()

    def update(self, sweep: Sweep) -> None:
        if not self.enabled or self._task is None:
            return
        ended = sum(t.status in TERMINAL_STATUSES for t in sweep.trials)
        counts = " · ".join(f"{n} {status}" for status, n in sorted(sweep.counts.items()))
        metric = sweep.objective.get("metric", "objective")
        best = f"{metric}={sweep.best.value:.4g}" if sweep.best is not None else "-"
        self._bar.update(self._task, total=sweep.trials_total, completed=ended, counts=counts, best=best)


class Sweeps:
    """``client.sweeps``: create, inspect, follow, cancel and delete sweeps."""

    def __init__(self, transport: Transport, *, spec_to_body: Callable[[Any], dict[str, Any]]) -> None:
        self._t = transport
        self._spec_to_body = spec_to_body  # the client's, so a sweep takes every spec form jobs.create takes

    def create(
        self,
        spec: Any,
        space: SpaceLike,
        *,
        method: SearchMethod = "random",
        trials: int = 10,
        parallel: int = 1,
        seed: int = 0,
        objective: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        pruner: PrunerType | Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> Sweep:
        """Start a sweep over ``spec`` (a dict, a JSON file path, a ``Spec`` or a pydantic model). The whole space
        is checked first: a bad key raises ``ValidationError`` with ``space["KEY"]`` as the problem's loc."""
        body: dict[str, Any] = {
            "spec": self._spec_to_body(spec),
            "space": space_to_body(space),
            "search": {"method": method, "trials": trials, "parallel": parallel, "seed": seed},
            "objective": {"metric": objective, "mode": mode},
            "pruner": pruner_to_body(pruner),
        }
        if name is not None:
            body["name"] = name
        # Not idempotent: a repeat would start a second sweep.
        sweep = Sweep.model_validate(self._t.request("POST", "/sweeps", json=body, idempotent=False).json())
        log.info("sweep.created sweep_id=%s trials=%s", sweep.id, sweep.trials_total)
        return sweep

    def get(self, sweep_id: str) -> Sweep:
        return Sweep.model_validate(self._t.request("GET", f"/sweeps/{sweep_id}").json())

    def list(self, *, page_size: int | None = None, max_items: int | None = None) -> Iterator[Sweep]:
        """Every sweep, newest first, following ``next_cursor`` page by page (lazily; no ``spec`` on items)."""
        count = 0
        cursor: str | None = None
        while True:
            params = {k: v for k, v in {"limit": page_size, "cursor": cursor}.items() if v is not None}
            body = self._t.request("GET", "/sweeps", params=params).json()
            for item in body.get("items", []):
                if max_items is not None and count >= max_items:
                    return
                count += 1
                yield Sweep.model_validate(item)
            cursor = body.get("next_cursor")
            if not cursor:
                return

    def wait(
        self,
        sweep_id: str,
        *,
        progress: bool = True,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> Sweep:
        """Poll until the sweep succeeded, failed or was cancelled and return it (it does not raise on failure).

        ``progress`` draws a bar over the trials on stderr; ``timeout`` raises ``WaitTimeout`` when the sweep is
        still running after that many seconds.
        """
        with SweepProgress(sweep_id, enabled=progress) as bar:
            sweep = poll_until_finished(lambda: self.get(sweep_id), what=f"sweep {sweep_id}", on_each=bar.update,
                                        poll_interval=poll_interval, timeout=timeout)
        log.info("sweep.finished sweep_id=%s status=%s", sweep.id, sweep.status)
        return sweep

    def cancel(self, sweep_id: str) -> Sweep:
        """No new trials; queued trials never start, running ones stop (``Conflict`` once it has finished)."""
        return Sweep.model_validate(self._t.request("POST", f"/sweeps/{sweep_id}/cancel").json())

    def delete(self, sweep_id: str) -> None:
        """Delete a finished sweep with its trials' jobs (``Conflict`` while it runs or a trial is active)."""
        self._t.request("DELETE", f"/sweeps/{sweep_id}")
