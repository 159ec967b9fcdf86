"""Concurrent calls folded into batches, with no timer.

A call made while no batch is in flight goes at once, alone; calls made while one is in
flight wait for it and then go together as the next batch. An idle caller therefore pays
no delay, and a busy process pays one round trip and one commit for many calls: the
batches grow with the load, which is when the saving matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

BatchRunner = Callable[[list[In]], Awaitable[Sequence[Out | BaseException]]]
"""Runs one batch: one result per item, in order, or the exception that item's caller
gets."""


class Coalescer(Generic[In, Out]):
    """``await coalescer(item)`` returns ``item``'s result from the batch it went in."""

    def __init__(self, run: BatchRunner[In, Out], *, max_batch: int = 100) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self._run = run
        self._max_batch = max_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def __call__(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Out] = loop.create_future()
        self._pending.append((item, result))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        # A caller cancelled while waiting leaves its item in the batch (it may be written
        # already); only its result is dropped.
        return await result

    async def close(self) -> None:
        """Wait until every call made so far has its result."""
        if self._drainer is not None:
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                results: Sequence[Out | BaseException]
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as exc:  # every caller of the batch hears of it
                    results = [exc] * len(batch)
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                if len(results) != len(batch):
                    error = RuntimeError(f"{len(batch)} calls got {len(results)} results")
                    results = [error] * len(batch)
                for (_, future), outcome in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._drainer = None
            # Left only when the drainer itself was cancelled (the loop is closing).
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()
