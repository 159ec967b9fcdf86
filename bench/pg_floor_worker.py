"""The cross-process floor of the latency benchmark: a bare-asyncpg stand-in for a worker.

``python -m bench.pg_floor_worker DATABASE_URL UDP_PORT`` does what a waiting Conveyor
worker does to be handed jobs — LISTEN on Conveyor's channel, hold the advisory lock on a
key and offer slots under it (:func:`offer`) — and on each handoff notice sends
``time.time()`` taken when the notice arrived to ``127.0.0.1:UDP_PORT``. It prints
``ready`` once listening. No Conveyor code runs: what the worker subprocess row measures
above this is Conveyor's own cost, with the same process wake-ups on both sides.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
import time

import asyncpg
import orjson

from bench import kinds
from conveyor.store import postgres
from conveyor.store.postgres.rows import HANDOFF_COLUMNS

SESSION = {"plan_cache_mode": "force_generic_plan", "jit": "off"}


async def offer(listener: asyncpg.Connection, worker_id: str) -> None:
    """On the LISTEN connection ``listener``: hold a fresh key and offer slots without end
    in the latency queue, as a claim that came back short does."""
    key = secrets.randbits(63)
    await listener.execute("SELECT pg_advisory_lock($1)", key)
    await listener.execute(
        "INSERT INTO conveyor_offers (queue, worker_id, slots, lock_key, lease_s, kinds) "
        "VALUES ($1, $2, 1000000000, $3, 30, $4)",
        kinds.LATENCY_QUEUE,
        worker_id,
        key,
        [kinds.LATENCY],
    )


def handed_sample(payload: str) -> int:
    """The sample number a handoff notice carries (the job's payload ``{"n": n}``)."""
    if not payload.startswith("h:"):
        raise RuntimeError(f"expected a handoff notice, got {payload[:40]!r}")
    return int(orjson.loads(payload[2:])[HANDOFF_COLUMNS.index("payload")]["n"])


async def serve(url: str, port: int) -> None:
    listener = await asyncpg.connect(url, server_settings=SESSION)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def heard(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        wall = time.time()
        udp.sendto(f"{handed_sample(str(payload))} {wall!r}".encode(), ("127.0.0.1", port))

    await listener.add_listener(postgres.CHANNEL, heard)
    await offer(listener, "floor")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
