"""The SDK's exception family: one class per kind of server answer, built from `{"type", "detail", "errors"}`."""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)

ErrorItem = tuple[str, str]


class TrainserveError(Exception):
    """Base of every error the SDK raises on purpose.

    ``errors`` holds ``(loc, msg)`` pairs, where ``loc`` is a JSON path into the request
    (``model.layers[2].in_features``, ``inputs[3][1]``); the message lists every one of them.
    """

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        type: str | None = None,
        errors: list[ErrorItem] | None = None,
    ) -> None:
        self.detail = detail
        self.status_code = status_code
        self.type = type
        self.errors: list[ErrorItem] = list(errors or [])
        super().__init__(self._message())

    def _message(self) -> str:
        head = self.detail or (self.type or "error")
        if self.status_code is not None:
            head = f"{head} (HTTP {self.status_code})"
        if not self.errors:
            return head
        lines = [f"  {loc}: {msg}" if loc else f"  {msg}" for loc, msg in self.errors]
        return "\n".join([head, *lines])


class ValidationError(TrainserveError):
    """422 (or 400): the request is malformed; ``errors`` names the JSON path of each problem."""


class NotFound(TrainserveError):
    """404: no such job, dataset or checkpoint (or it belongs to another tenant)."""


class Conflict(TrainserveError):
    """409: the object is in the wrong state (cancel a finished job, delete a running one, predict too early)."""


class AuthError(TrainserveError):
    """401/403: missing, unknown or revoked API key."""


class PayloadTooLarge(TrainserveError):
    """413: the body or upload is over the server's limit."""


class RateLimited(TrainserveError):
    """429: too many submissions; ``retry_after`` is the server's advice in seconds (None if it gave none)."""

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(detail, **kwargs)


class ServerError(TrainserveError):
    """5xx: the server failed or is unavailable."""


class ServiceUnavailable(ServerError):
    """503: the server cannot take the request now (retried automatically on idempotent calls)."""


class ConnectionFailed(ServerError):
    """The server could not be reached (refused, reset, timed out) after every retry."""


class WaitTimeout(TrainserveError, TimeoutError):
    """``jobs.wait`` gave up before the job finished."""


_BY_STATUS: dict[int, type[TrainserveError]] = {
    400: ValidationError,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: ServiceUnavailable,
}
_BY_TYPE: dict[str, type[TrainserveError]] = {
    "validation_error": ValidationError,
    "not_found": NotFound,
    "conflict": Conflict,
    "unauthorized": AuthError,
    "payload_too_large": PayloadTooLarge,
    "rate_limited": RateLimited,
    "unavailable": ServiceUnavailable,
    "internal_error": ServerError,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; HTTP dates are rare enough here to be ignored."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_items(raw: Any) -> list[ErrorItem]:
    items: list[ErrorItem] = []
    if not isinstance(raw, list):
        return items
    for entry in raw:
        if isinstance(entry, dict):
            loc = entry.get("loc", "")
            # Tolerate FastAPI's native list locations in case an error escapes the server's handler.
            if isinstance(loc, list):
                loc = ".".join(str(part) for part in loc)
            items.append((str(loc), str(entry.get("msg", ""))))
        else:
            items.append(("", str(entry)))
    return items


def error_from_response(response: httpx.Response) -> TrainserveError:
    """The exception for a 4xx/5xx answer, from its status and its ``{"type", "detail", "errors"}`` body."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        type_ = body.get("type") if isinstance(body.get("type"), str) else None
        detail_raw = body.get("detail")
        detail = detail_raw if isinstance(detail_raw, str) else (response.reason_phrase or "error")
        errors = _error_items(body.get("errors"))
        # FastAPI's default 422 puts the list under "detail".
        if not errors and isinstance(detail_raw, list):
            errors = _error_items(detail_raw)
            detail = f"{len(errors)} problem(s)"
    else:
        type_ = None
        detail = (response.text or response.reason_phrase or "error").strip()[:500]
        errors = []

    status = response.status_code
    cls = _BY_STATUS.get(status) or (_BY_TYPE.get(type_) if type_ else None)
    if cls is None:
        cls = ServerError if status >= 500 else TrainserveError
    if cls is RateLimited:
        return RateLimited(
            detail,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            status_code=status,
            type=type_,
            errors=errors,
        )
    return cls(detail, status_code=status, type=type_, errors=errors)
