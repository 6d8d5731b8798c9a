"""SingleFlight (service.singleflight): when a remembered answer expires under load, the requests in flight share
one lookup, however that lookup ends, and lookups of other keys do not wait for it."""

from __future__ import annotations

from typing import Any

import anyio

from service.singleflight import SingleFlight


class Remembered:
    """A cache in front of a slow lookup, used the way auth and /predict use SingleFlight."""

    def __init__(self, answer: Any = "tenant-a") -> None:
        self.flight = SingleFlight()
        self.cache: dict[str, str] = {}
        self.lookups: list[str] = []
        self.release = anyio.Event()
        self.answer = answer

    async def get(self, key: str) -> str:
        value = self.cache.get(key)
        if value is None and await self.flight.wait(key):
            value = self.cache.get(key)  # remembered by the lookup just waited for
        if value is None:
            with self.flight.lead(key):
                self.lookups.append(key)
                await self.release.wait()  # the database is slow: everyone else arrives meanwhile
                if isinstance(self.answer, Exception):
                    raise self.answer
                value = self.cache[key] = f"{self.answer}:{key}"
        return value


def test_requests_in_flight_share_one_lookup() -> None:
    async def main() -> None:
        remembered = Remembered()
        arrived: list[int] = []
        answers: list[str] = []

        async def request() -> None:
            arrived.append(1)  # and, without yielding, on into get() up to its first await
            answers.append(await remembered.get("k"))

        async with anyio.create_task_group() as group:
            for _ in range(16):
                group.start_soon(request)
            await _until(lambda: len(arrived) == 16)  # every request is parked: leading the lookup or waiting
            remembered.release.set()
        assert remembered.lookups == ["k"] and answers == ["tenant-a:k"] * 16

    anyio.run(main)


def test_waiters_wake_when_the_lookup_fails_and_look_up_themselves() -> None:
    async def main() -> None:
        remembered = Remembered(answer=ConnectionError("database away"))
        failures: list[BaseException] = []

        async def request() -> None:
            try:
                await remembered.get("k")
            except ConnectionError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(request)
            await _until(lambda: len(remembered.lookups) == 1)
            remembered.release.set()
        # The leader failed; each waiter woke, found nothing remembered, and asked itself (and failed too).
        assert len(failures) == 3 and remembered.lookups == ["k"] * 3

    anyio.run(main)


def test_other_keys_do_not_wait() -> None:
    async def main() -> None:
        remembered = Remembered()
        flight = remembered.flight
        with flight.lead("k"):
            assert await flight.wait("other") is False  # returns at once: nothing running for that key
            assert "other" not in remembered.lookups
        assert await flight.wait("k") is False  # the lead ended: nothing to wait for

    anyio.run(main)


async def _until(condition: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.001)
