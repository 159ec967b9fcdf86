"""Fixtures of the API suite: an app on the test's store (both kinds, from
``tests/conftest.py``), an httpx client talking to it in-process, test kinds, and workers.

Each test gets its own :class:`conveyor.Registry` holding the test kinds of
``api_support`` (the app adds the built-in ``video.process`` and ``qa.answer``), and
settings with rate limits high enough never to interfere. ``http`` sends an API key of
the ``default`` tenant with every scope; ``operator`` gives the headers of an operator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import (
    FAST_WORKER,
    AppClient,
    api_settings,
    app_of,
    bearer,
    operator_token,
    register_test_kinds,
    serving,
)

import conveyor
from conveyor.api import create_app
from conveyor.store.base import Store
from conveyor.workloads import register_builtin


@pytest.fixture
def kinds() -> conveyor.Registry:
    registry = conveyor.Registry()
    register_test_kinds(registry)
    return registry


@pytest.fixture
def app_client(store: Store, kinds: conveyor.Registry, tmp_path: Path) -> AppClient:
    """``async with app_client(**settings) as http``: an app on the test's store."""

    def make(**overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        app = create_app(api_settings(tmp_path, **overrides), store=store, kinds=kinds)
        return serving(app, auth=True)

    return make


@pytest.fixture
async def http(app_client: AppClient) -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app with the default test settings."""
    async with app_client() as client:
        yield client


@pytest.fixture
async def operator(http: httpx.AsyncClient) -> dict[str, str]:
    """Headers of a platform operator on ``http``'s app (pause, resume, limits)."""
    return {"Authorization": bearer(await operator_token(app_of(http)))}


@pytest.fixture
def run_jobs(store: Store, kinds: conveyor.Registry) -> Callable[..., Any]:
    """``await run_jobs(queues={"default": 5})``: run a worker until no due job is left
    (the test kinds plus the built-in ones)."""

    async def run(queues: dict[str, int] | None = None) -> conveyor.Worker:
        register_builtin(kinds)
        worker = conveyor.Worker(
            store,
            conveyor.WorkerConfig(queues=queues or {"default": 5}, **FAST_WORKER),
            kinds=kinds,
        )
        await asyncio.wait_for(worker.run(burst=True), 20)
        return worker

    return run
