"""The load generator of ``bench.predict``: a closed loop of keep-alive HTTP/1.1 connections, in its own process.

Pure Python (asyncio on uvloop, no HTTP client library): each connection sends the same pre-encoded request
bytes, reads the status line, headers and ``Content-Length`` body, and sends again. That costs a few tens of
microseconds per request, far less than the servers spend, so the generator is not the bottleneck; it still
shares the machine's cores with the server, and reports its own CPU time so the reader can judge.

Run as ``python -m bench._predict_load`` with one JSON object on stdin::

    {"url": "http://127.0.0.1:8000/predict", "headers": {...}, "body_file": "...", "concurrency": 16,
     "warmup_s": 1.0, "duration_s": 5.0}

and it prints one JSON object: requests completed in the measured window (and in all), req/s, p50/p99/mean
latency in ms, non-200 answers, and the generator's CPU seconds.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import uvloop


@dataclass
class Window:
    """Requests that complete between ``start`` and ``end`` are measured; the others warm up or drain."""

    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    completed: int = 0  # every answer, warm-up and drain included: what the server's CPU time was spent on


def encode_request(url: str, headers: dict[str, str], body: bytes) -> bytes:
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _status_and_length(head: bytes) -> tuple[int, int]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(status_line.split(" ", 2)[1]), int(value)
    raise RuntimeError(f"answer without Content-Length: {status_line}")


async def _connection(host: str, port: int, request: bytes, window: Window) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < window.end:
            sent = time.perf_counter()
            writer.write(request)
            status, length = _status_and_length(await reader.readuntil(b"\r\n\r\n"))
            body = await reader.readexactly(length)
            done = time.perf_counter()
            window.completed += 1
            if window.start <= done <= window.end:
                window.latencies.append(done - sent)
                if status != 200:
                    window.errors.append(f"{status}: {body[:200]!r}")
    finally:
        writer.close()


async def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    body = open(spec["body_file"], "rb").read()
    request = encode_request(spec["url"], spec.get("headers", {}), body)
    parts = urlsplit(spec["url"])
    now = time.perf_counter()
    window = Window(start=now + spec["warmup_s"], end=now + spec["warmup_s"] + spec["duration_s"])
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(_connection(parts.hostname or "127.0.0.1", parts.port or 80, request, window)
                           for _ in range(spec["concurrency"])))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat_ms = sorted(v * 1000 for v in window.latencies)
    if not lat_ms:
        raise RuntimeError("no request completed in the measured window")
    return {
        "requests": len(lat_ms),
        "requests_total": window.completed,
        "req_per_s": len(lat_ms) / spec["duration_s"],
        "p50_ms": statistics.median(lat_ms),
        "p99_ms": lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))],
        "mean_ms": statistics.fmean(lat_ms),
        "errors": len(window.errors),
        "first_error": window.errors[0] if window.errors else None,
        "loadgen_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "wall_s": time.perf_counter() - now,
    }


def main() -> None:
    print(json.dumps(uvloop.run(run_load(json.load(sys.stdin)))))


if __name__ == "__main__":
    main()
