"""The one polling loop behind ``jobs.wait`` and ``sweeps.wait``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from trainserve.errors import WaitTimeout


class Finishing(Protocol):
    @property
    def finished(self) -> bool: ...

    @property
    def status(self) -> str: ...


T = TypeVar("T", bound=Finishing)


def poll_until_finished(fetch: Callable[[], T], *, what: str, on_each: Callable[[T], None],
                        poll_interval: float, timeout: float | None) -> T:
    """``fetch()`` every ``poll_interval`` seconds, handing each answer to ``on_each``, until it says it has
    finished; ``WaitTimeout`` (naming ``what`` and its status) once ``timeout`` seconds have passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = fetch()
        on_each(current)
        if current.finished:
            return current
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"{what} is still {current.status} after {timeout}s")
        time.sleep(poll_interval)
