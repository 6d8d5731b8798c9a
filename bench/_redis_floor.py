"""The queue benchmark's floor, consumer side: BRPOP messages off a Redis list as fast as Redis hands them over.

Run as ``python -m bench._redis_floor REDIS_URL``. Each message is ``SEQ SENT`` (SENT: the producer's
time.time() just before its LPUSH). The consumer notes time.time() as soon as BRPOP returns, pushes the
sequence number onto the ack list (the producer waits for it between latency samples), and at ``stop`` pushes
every (seq, sent, received) triple as JSON onto the result list.
"""

from __future__ import annotations

import json
import sys
import time

import redis

QUEUE, ACKS, RESULT = "bench:floor:queue", "bench:floor:acks", "bench:floor:result"


def consume(url: str) -> None:
    client = redis.Redis.from_url(url)
    received: list[tuple[int, float, float]] = []
    while True:
        _, message = client.brpop([QUEUE])  # type: ignore[misc]
        now = time.time()
        if message == b"stop":
            break
        seq, sent = message.split()
        received.append((int(seq), float(sent), now))
        client.lpush(ACKS, seq)
    client.lpush(RESULT, json.dumps(received))


if __name__ == "__main__":
    consume(sys.argv[1])
