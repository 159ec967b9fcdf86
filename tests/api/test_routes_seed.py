"""The QuDemo seed's routes answer as its README shows, on the same engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from conveyor.api.routes.seed import wait_text
from conveyor.store.base import Store

VIDEO = {
    "video_url": "https://youtube.com/watch?v=abc",
    "company_name": "acme-corp",
    "source": "youtube",
}
QUESTION = {"question": "What are the main features?", "companyName": "acme-corp"}


async def test_video_process_answers_in_the_seeds_shape(
    http: httpx.AsyncClient, store: Store
) -> None:
    response = await http.post("/api/video/process", json=VIDEO)
    assert response.status_code == 202
    body = response.json()
    assert body["success"] is True
    assert body["message"] == "Video processing queued successfully"
    data = body["data"]
    assert set(data) == {"jobId", "queuePosition", "estimatedWaitTime", "status", "requestId"}
    assert data["status"] == "queued"
    assert data["queuePosition"] == 1  # as in the seed, counting this job
    assert data["estimatedWaitTime"] == "unknown"  # no worker yet
    job = await store.get_job(data["jobId"])
    assert job is not None
    assert (job.kind, job.queue, job.priority) == ("video.process", "video", 2)
    assert job.payload == {
        "video_url": "https://youtube.com/watch?v=abc",
        "company_name": "acme-corp",
        "source": "youtube",
    }


async def test_question_answers_in_the_seeds_shape(http: httpx.AsyncClient, store: Store) -> None:
    first = await http.post("/api/interactions/int-1/questions", json=QUESTION)
    second = await http.post("/api/interactions/int-1/questions", json=QUESTION)
    assert first.status_code == 202
    assert first.json()["message"] == "Question queued for AI processing"
    assert [r.json()["data"]["queuePosition"] for r in (first, second)] == [1, 2]
    job = await store.get_job(first.json()["data"]["jobId"])
    assert job is not None
    assert (job.kind, job.queue, job.priority) == ("qa.answer", "qa", 1)
    assert job.payload == {
        "interaction_id": "int-1",
        "question": "What are the main features?",
        "company_name": "acme-corp",
    }


async def test_seed_submissions_are_idempotent_too(http: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "v-1"}
    first = await http.post("/api/video/process", json=VIDEO, headers=headers)
    again = await http.post("/api/video/process", json=VIDEO, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["data"]["jobId"] == first.json()["data"]["jobId"]


async def test_seed_validation_errors_have_the_seeds_shape(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/video/process", json={"video_url": "not a url"})
    assert response.status_code == 422
    body = response.json()
    assert body["success"] is False
    assert body["message"].startswith("invalid request: ")
    fields = {tuple(e["loc"]) for e in body["detail"]}
    assert fields == {("body", "video_url"), ("body", "company_name")}
    empty = await http.post("/api/interactions/i/questions", json={"question": ""})
    assert empty.status_code == 422
    assert empty.json()["success"] is False


async def test_queue_status_monitor_and_job_details(
    http: httpx.AsyncClient, run_jobs: Callable[..., Any]
) -> None:
    video = (await http.post("/api/video/process", json=VIDEO)).json()["data"]["jobId"]
    qa = (await http.post("/api/interactions/i-9/questions", json=QUESTION)).json()["data"]
    status = (await http.get("/api/queue/status")).json()
    assert status["success"] is True
    queues = status["data"]["queues"]
    assert queues["video"]["waiting"] == 1
    assert queues["qa"]["waiting"] == 1
    assert queues["qa"]["activeJobs"] == 0
    assert status["data"]["memory"]["rss"] > 0
    monitor = (await http.get("/api/queue/monitor")).json()
    assert monitor["message"] == "Queue status logged"
    assert monitor["data"]["queues"] == queues

    queued = (await http.get(f"/api/queue/jobs/video/{video}")).json()["data"]
    assert queued["status"] == "queued"
    assert queued["attempts"] == 0
    await run_jobs(queues={"video": 2, "qa": 10})
    done = (await http.get(f"/api/queue/jobs/video/{video}")).json()["data"]
    assert done["status"] == "completed"
    assert done["result"]["placeholder"] is True
    assert done["type"] == "video"
    assert done["completedAt"] is not None
    answer = (await http.get(f"/api/queue/jobs/qa/{qa['jobId']}")).json()["data"]
    assert "placeholder" in answer["result"]["answer"].lower()
    assert answer["progress"] == 100.0


async def test_job_details_of_the_wrong_type_or_id_are_404(http: httpx.AsyncClient) -> None:
    video = (await http.post("/api/video/process", json=VIDEO)).json()["data"]["jobId"]
    wrong = await http.get(f"/api/queue/jobs/qa/{video}")
    assert wrong.status_code == 404
    assert wrong.json()["success"] is False
    assert (await http.get("/api/queue/jobs/video/999")).status_code == 404
    assert (await http.get("/api/queue/jobs/audio/1")).status_code == 422


@pytest.mark.parametrize(
    ("wait", "run", "text"),
    [
        (None, 5.0, "unknown"),
        (0.0, None, "starting now"),
        (30.0, None, "about 30 seconds"),
        (600.0, None, "about 10 minutes"),
        (0.0, 0.2, "0-1 seconds"),
        (0.0, 12.0, "0-12 seconds"),
        (10.0, 20.0, "10-30 seconds"),
        (240.0, 360.0, "4-10 minutes"),
        (120.0, 0.0, "2 minutes"),
    ],
)
def test_wait_text(wait: float | None, run: float | None, text: str) -> None:
    assert wait_text(wait, run) == text
