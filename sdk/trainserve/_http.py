"""The transport: one httpx client with auth, error mapping, and retries with backoff.

What is retried, and why it is safe:
- a connection that never opened (refused, connect timeout): always, since the server saw nothing;
- any other transport failure and 503: only for idempotent calls (GET, DELETE, and POSTs the caller marks
  idempotent, such as ``POST /jobs`` carrying an ``Idempotency-Key``), since those cannot act twice.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from trainserve.errors import ConnectionFailed, error_from_response, parse_retry_after

log = logging.getLogger(__name__)

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})


class Transport:
    """Sends requests to one trainserve server and turns 4xx/5xx answers into ``TrainserveError``s."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float = 8.0,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"User-Agent": "trainserve-sdk/0.1", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._http = http or httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        if http is not None:
            self._http.headers.update(headers)

    def close(self) -> None:
        self._http.close()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        # Full jitter keeps many clients from hammering a recovering server in lockstep.
        return random.uniform(0, min(self.max_backoff, self.backoff * (2**attempt)))

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        ok: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """Send, retrying what is safe to retry; raise the mapped error for any status >= 400 not in ``ok``."""
        method = method.upper()
        safe = method in _IDEMPOTENT_METHODS if idempotent is None else idempotent
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt >= self.retries:
                    raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from exc
                self._sleep(attempt, None, f"{method} {path}: {exc}")
                attempt += 1
                continue
            except httpx.TransportError as exc:
                if not safe or attempt >= self.retries:
                    raise ConnectionFailed(f"{method} {path} failed: {exc}") from exc
                self._sleep(attempt, None, f"{method} {path}: {exc}")
                attempt += 1
                continue
            if response.status_code == 503 and safe and attempt < self.retries:
                self._sleep(attempt, parse_retry_after(response.headers.get("Retry-After")), f"{method} {path}: 503")
                attempt += 1
                continue
            if response.status_code >= 400 and response.status_code not in ok:
                raise error_from_response(response)
            return response

    def _sleep(self, attempt: int, retry_after: float | None, why: str) -> None:
        delay = self._delay(attempt, retry_after)
        log.info("retrying in %.2fs (attempt %d of %d): %s", delay, attempt + 1, self.retries, why)
        time.sleep(delay)

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed request; retried until the answer starts, after which a failure is the caller's."""
        response = self._open_stream(method, path, **kwargs)
        try:
            yield response
        finally:
            response.close()

    def _open_stream(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.send(self._http.build_request(method, path, **kwargs), stream=True)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise ConnectionFailed(f"{method} {path} failed: {exc}") from exc
                self._sleep(attempt, None, f"{method} {path}: {exc}")
                attempt += 1
                continue
            if response.status_code == 503 and attempt < self.retries:
                response.close()
                self._sleep(attempt, parse_retry_after(response.headers.get("Retry-After")), f"{method} {path}: 503")
                attempt += 1
                continue
            if response.status_code >= 400:
                response.read()
                response.close()
                raise error_from_response(response)
            return response
