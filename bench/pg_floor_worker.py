"""The cross-process floor of the latency benchmark: a bare-asyncpg stand-in for a worker.

``python -m bench.pg_floor_worker DATABASE_URL UDP_PORT`` listens on Conveyor's channel
and, on each notification, runs the store's own ``claim`` statement on a second connection,
then sends ``time.time()`` taken when the claim returned to ``127.0.0.1:UDP_PORT``. It
prints ``ready`` once listening. No Conveyor code runs between the notification and the
claim: what the worker subprocess row measures above this is Conveyor's own cost, with
the same process wake-ups on both sides.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import asyncpg
import orjson

from bench import kinds
from conveyor.store import postgres
from conveyor.store.sqlfile import load_queries

SESSION = {"plan_cache_mode": "force_generic_plan", "jit": "off"}


async def serve(url: str, port: int) -> None:
    claim = load_queries(postgres.__name__)["claim"]
    listener = await asyncpg.connect(url, server_settings=SESSION)
    claimer = await asyncpg.connect(url, server_settings=SESSION)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    woken = asyncio.Event()
    await listener.add_listener(postgres.CHANNEL, lambda *_: woken.set())
    print("ready", flush=True)
    while True:
        await woken.wait()
        woken.clear()
        rows = await claimer.fetch(claim, [kinds.LATENCY_QUEUE], [10], "floor", 30.0)
        wall = time.time()
        for row in rows:
            if row[0] == "claimed":
                n = int(orjson.loads(row["payload"])["n"])
                udp.sendto(f"{n} {wall!r}".encode(), ("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
