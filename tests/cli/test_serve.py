"""``conveyor serve`` end to end: a real process on a free port and a temporary SQLite
file; a request submitted over HTTP runs to completion in its worker, its request id
reaches the job's log lines, and SIGTERM stops both cleanly. Also: ``conveyor worker``
does not load the HTTP stack."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_runner import Launch, Served, conveyor_command, free_port

from conveyor.cli.serve import default_queues
from conveyor.config import Settings
from conveyor.engine.kinds import Registry
from conveyor.workloads import register_builtin


@pytest.fixture
def served(launch: Launch) -> Served:
    # The request's 0.2 s job counts as slow, so its completion is logged at INFO.
    return launch(
        "serve", CONVEYOR_IMPORTS="conveyor.workloads.demo", CONVEYOR_SLOW_JOB_SECONDS="0.1"
    )


async def _eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.1)


async def test_serve_runs_a_submitted_request_and_stops_on_sigterm(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=5) as http:

        async def up() -> bool:
            assert served.popen.poll() is None, served.log.read_text()
            try:
                return (await http.get("/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await _eventually(up, 30, "the API answering /ready")
        http.headers.update(await served.api_key())
        response = await http.post(
            "/v1/requests",
            json={"kind": "demo.sleep", "input": {"seconds": 0.2, "steps": 2}},
            headers={"X-Request-ID": "e2e-request-1"},
        )
        assert response.status_code == 202, response.text
        request_id = response.json()["request_id"]
        question = await http.post(
            "/api/interactions/demo-1/questions",
            json={"question": "Does it work?", "companyName": "acme"},
        )
        assert question.status_code == 202
        qa_job = question.json()["data"]["jobId"]

        async def finished(path: str, status_key: str) -> Any:
            body = (await http.get(path)).json()
            data = body.get("data", body)
            return data if data[status_key] in ("completed", "failed") else None

        request = await _eventually(
            lambda: finished(f"/v1/requests/{request_id}", "status"), 20, "the request finishing"
        )
        assert request["status"] == "completed"
        assert request["result"] == {"slept_s": 0.2}
        assert request["http_request_id"] == "e2e-request-1"
        answer = await _eventually(
            lambda: finished(f"/api/queue/jobs/qa/{qa_job}", "status"), 20, "the question"
        )
        assert answer["status"] == "completed"

    served.popen.send_signal(signal.SIGTERM)
    assert served.popen.wait(20) == 0
    logs = served.logs()
    job_lines = [
        e for e in logs if e.get("event") == "job completed" and e.get("kind") == "demo.sleep"
    ]
    assert [e["request_id"] for e in job_lines] == ["e2e-request-1"]
    (worker_started,) = [e for e in logs if e.get("event") == "worker started"]
    assert [(e["worker_id"], e["attempt"]) for e in job_lines] == [(worker_started["worker_id"], 1)]
    (listening,) = [e for e in logs if e.get("event") == "API listening"]
    assert listening["loop"] == "uvloop"  # installed with uvicorn[standard]
    assert any(e.get("event") == "worker stopped" for e in logs)
    assert not [e for e in logs if e.get("level") in ("error", "raw")], logs


async def test_api_alone_waits_for_its_database_and_stops_on_sigterm(
    launch: Launch, tmp_path: Path
) -> None:
    folder = tmp_path / "not-yet"
    api = launch("api", CONVEYOR_DATABASE_URL=f"sqlite:///{folder}/api.db")
    async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:

        async def status(path: str) -> int | None:
            assert api.popen.poll() is None, api.log.read_text()
            try:
                return (await http.get(path)).status_code
            except httpx.TransportError:
                return None

        await _eventually(lambda: status("/health"), 30, "the API answering")
        assert await status("/ready") == 503
        folder.mkdir()
        await _eventually(lambda: _is(status("/ready"), 200), 15, "the database reached")
        http.headers.update(await api.api_key())
        question = {"interaction_id": "i", "question": "q", "company_name": "c"}
        response = await http.post("/v1/requests", json={"kind": "qa.answer", "input": question})
        assert response.status_code == 202
    api.popen.send_signal(signal.SIGTERM)
    assert api.popen.wait(20) == 0


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


def test_the_worker_command_does_not_load_the_http_stack() -> None:
    code = (
        "import sys, conveyor.cli.main as m, conveyor.engine.worker; "
        "print(sorted(n for n in ('fastapi', 'uvicorn', 'starlette') if n in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_serve_works_on_every_kinds_queue_with_the_seeds_limits() -> None:
    kinds = Registry()
    register_builtin(kinds)
    settings = Settings(concurrency=7)
    assert default_queues(kinds, settings) == ["default:7", "qa:10", "video:2"]


def test_serve_refuses_a_bad_database_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATABASE_URL"] = f"sqlite:///{tmp_path}/missing/dir/x.db"
    env["CONVEYOR_PORT"] = str(free_port())
    out = subprocess.run(
        [*conveyor_command(), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "does not exist" in out.stderr
