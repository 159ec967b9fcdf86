"""Helpers of the API suite (importable by name, unlike conftest): test kinds, settings
for a test app, an in-process client, and a submit shortcut."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import lifespan
from fastapi import FastAPI
from pydantic import BaseModel, Field

import conveyor
from conveyor.config import Settings

FAST_WORKER: dict[str, Any] = {
    "lease_s": 5.0,
    "heartbeat_interval": 1.0,
    "cancel_check_interval": 0.05,
    "rescue_interval": 0.5,
    "safety_poll_interval": 0.2,
    "shutdown_grace": 5.0,
    "max_memory_mb": 0,
}


class Typed(BaseModel):
    """The input of ``test.typed``."""

    name: str = Field(min_length=1, max_length=50)
    count: int = Field(default=1, ge=1, le=10)


async def echo(ctx: conveyor.JobContext, payload: Any) -> Any:
    """Return the input."""
    return payload


async def typed(ctx: conveyor.JobContext, payload: Typed) -> dict[str, Any]:
    """Repeat a name."""
    return {"names": [payload.name] * payload.count}


async def fail(ctx: conveyor.JobContext, payload: Any) -> None:
    """Fail at once, no retry."""
    raise conveyor.Discard("this kind always fails")


async def assets(ctx: conveyor.JobContext, payload: Any) -> dict[str, Any]:
    """A result holding asset URLs."""
    return {
        "image_url": "https://cdn.example.com/a.png",
        "files": [{"url": "https://cdn.example.com/b.pdf", "pages": 2}],
        "note": "https://not-an-asset.example.com (key is not url-like)",
    }


def register_test_kinds(registry: conveyor.Registry) -> None:
    conveyor.job("test.echo", registry=registry)(echo)
    conveyor.job("test.typed", registry=registry)(typed)
    conveyor.job("test.fail", registry=registry)(fail)
    conveyor.job("test.assets", registry=registry)(assets)


def api_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test app: its own database file, limits that never interfere."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/api.db",
        "rate_limit_per_ip": "1000000/minute",
        "rate_limit_per_caller": "1000000/minute",
        "max_memory_mb": 0,
        "log_format": "json",
    }
    values.update(overrides)
    return Settings(**values)


AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on ``app``, its lifespan running."""
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


async def submit(http: httpx.AsyncClient, kind: str, input: Any = None, **kw: Any) -> Any:
    """POST /v1/requests and insist on 202; the answer's JSON."""
    body: dict[str, Any] = {"kind": kind}
    if input is not None:
        body["input"] = input
    response = await http.post("/v1/requests", json=body, **kw)
    assert response.status_code == 202, response.text
    return response.json()
