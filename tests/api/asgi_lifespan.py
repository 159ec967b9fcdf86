"""Run an ASGI app's lifespan the way a server does (startup, then shutdown), so that
middlewares that act on lifespan messages take part (httpx's ASGI transport sends none)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.types import ASGIApp, Message


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Start the app's lifespan, yield while it runs, then shut it down."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))

    async def step(kind: str) -> None:
        """Send ``lifespan.{kind}`` and wait for the app's answer."""
        await inbox.put({"type": f"lifespan.{kind}"})
        getting = asyncio.ensure_future(outbox.get())
        done, _ = await asyncio.wait({getting, task}, return_when=asyncio.FIRST_COMPLETED)
        if getting not in done:
            getting.cancel()
            task.result()  # the app failed: raise its error
            raise RuntimeError(f"the app stopped before answering lifespan.{kind}")
        reply = getting.result()
        if reply["type"] != f"lifespan.{kind}.complete":
            raise RuntimeError(f"lifespan.{kind} failed: {reply.get('message')}")

    await step("startup")
    try:
        yield
    finally:
        await step("shutdown")
        await task
