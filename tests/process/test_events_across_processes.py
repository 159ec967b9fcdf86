"""Events cross processes (PostgreSQL): a ``conveyor worker`` subprocess completes jobs and
the clients of an API in this process hear it over SSE and WebSocket, as ``Client.wait``
does; nothing polls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from proc_harness import Harness
from proc_kinds import KINDS

import conveyor
from conveyor.accounts import Principal
from conveyor.api import create_app
from conveyor.config import Settings
from conveyor.store.accounts import READ, WRITE
from live_server import live_server

TENANT = "acme-processes"


async def _api_key(app: object) -> str:
    accounts = app.state.accounts  # type: ignore[attr-defined]
    await accounts.create_tenant("Acme", TENANT)
    _, key = await accounts.create_api_key(
        Principal.console(), "t", [READ, WRITE], tenant_id=TENANT
    )
    return str(key)


def test_a_worker_in_another_process_completes_a_job_and_the_api_s_clients_hear_it(
    pg_harness: Harness, tmp_path: Path
) -> None:
    worker = pg_harness.start_worker()
    pg_harness.wait_started(worker)

    async def go() -> None:
        settings = Settings(database_url=pg_harness.url, log_format="json")
        app = create_app(settings, kinds=KINDS)
        async with live_server(app) as base:
            key = await _api_key(app)
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                stream = http.stream("GET", "/v1/events?type=job.completed", headers=headers)
                async with (
                    stream as response,
                    await conveyor.Client.connect(pg_harness.url, kinds=KINDS) as client,
                ):
                    assert response.status_code == 200
                    lines = response.aiter_lines()
                    assert await anext(lines) == "retry: 2000"
                    job = await client.enqueue("proc.record", {}, tenant_id=TENANT)
                    waited = asyncio.create_task(client.wait(job.id, timeout=20))
                    seen = []
                    async for line in lines:
                        seen.append(line)
                        if line.startswith("data: ") and str(job.id) in line:
                            break
                    assert "event: job.completed" in seen
                    assert await waited is None

    asyncio.run(asyncio.wait_for(go(), 60))
