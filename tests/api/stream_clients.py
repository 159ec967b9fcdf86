"""Clients of the event streams as a browser or a service would use them: Server-Sent
Events over httpx, WebSocket over the ``websockets`` package, on a live server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


@dataclass
class Received:
    """What one client got: the durable events' JSON in order, the live ones, the seed's
    messages, and the last message that ended the stream (overflow), if any."""

    durable: list[dict[str, Any]] = field(default_factory=list)
    live: list[dict[str, Any]] = field(default_factory=list)
    seed: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    sse_ids: list[int] = field(default_factory=list)

    def take(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "job-completed":
            self.seed.append(message)
        elif isinstance(kind, str) and kind.startswith("job."):
            (self.durable if message.get("id") is not None else self.live).append(message)
        else:
            self.other.append(message)

    @property
    def last_id(self) -> int | None:
        return self.durable[-1]["id"] if self.durable else None


async def sse_messages(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[str | None, int | None, dict[str, Any] | None]]:
    """(event, id, data) of each SSE message; comments (pings) as (None, None, None)."""
    async with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        event: str | None = None
        event_id: int | None = None
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith(":"):
                yield None, None, None
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and (event is not None or data):
                yield event, event_id, orjson.loads("\n".join(data)) if data else None
                event, event_id, data = None, None, []


async def sse_collect(
    http: httpx.AsyncClient,
    path: str,
    until: int,
    headers: dict[str, str] | None = None,
    got: Received | None = None,
    until_seed: int = 0,
) -> Received:
    """Read an SSE stream until ``until`` durable events and ``until_seed`` of the seed's
    messages came (or it ended)."""
    got = got if got is not None else Received()
    async for event, event_id, data in sse_messages(http, path, headers):
        if data is None:
            continue
        got.take(data)
        if event_id is not None:
            got.sse_ids.append(event_id)
        if (len(got.durable) >= until and len(got.seed) >= until_seed) or event == "overflow":
            break
    return got


def ws_connected(url: str, headers: dict[str, str] | None = None) -> connect:
    """``async with ws_connected(url) as ws``, or ``ws = await ws_connected(url)`` (then
    ``await ws.close()``)."""
    return connect(url, additional_headers=headers or {}, open_timeout=20)


async def ws_collect(ws: ClientConnection, until: int, got: Received | None = None) -> Received:
    """Read a WebSocket stream until ``until`` durable events came (or it closed)."""
    got = got if got is not None else Received()
    with contextlib.suppress(ConnectionClosed):
        while len(got.durable) < until:
            message = orjson.loads(await ws.recv())
            got.take(message)
            if message.get("type") == "overflow":
                break
    return got


async def gather_all(*aws: Any, timeout: float = 60) -> list[Any]:
    return list(await asyncio.wait_for(asyncio.gather(*aws), timeout))
