"""``/v1/queues``: statistics (the caller's tenant's), pause, resume and limits (an
operator's)."""

from __future__ import annotations

import httpx
from api_support import submit


async def test_queue_statistics(http: httpx.AsyncClient) -> None:
    await submit(http, "test.echo")
    await submit(http, "qa.answer", {"interaction_id": "i", "question": "q", "company_name": "c"})
    queues = {q["name"]: q for q in (await http.get("/v1/queues")).json()["queues"]}
    assert set(queues) == {"default", "qa"}
    default = queues["default"]
    assert default["counts"]["queued"] == 1
    assert default["due"] == 1
    assert default["scheduled"] == 0
    assert default["paused"] is False
    assert set(default["counts"]) == {"queued", "running", "completed", "failed", "cancelled"}


async def test_pause_and_resume(http: httpx.AsyncClient, operator: dict[str, str]) -> None:
    await submit(http, "video.process", {"video_url": "https://v.example/1", "company_name": "a"})
    paused = await http.post("/v1/queues/video/pause", headers=operator)
    assert paused.status_code == 200
    assert paused.json()["name"] == "video"
    assert paused.json()["paused"] is True
    listed = {q["name"]: q for q in (await http.get("/v1/queues")).json()["queues"]}
    assert listed["video"]["paused"] is True
    resumed = await http.post("/v1/queues/video/resume", headers=operator)
    assert resumed.json()["paused"] is False


async def test_a_bad_queue_name_is_422(http: httpx.AsyncClient, operator: dict[str, str]) -> None:
    response = await http.post("/v1/queues/no%20spaces/pause", headers=operator)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "name"]


async def test_a_cluster_wide_limit_is_set_and_removed(
    http: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    await submit(http, "test.echo")
    limited = await http.post("/v1/queues/default/limit", json={"limit": 3}, headers=operator)
    assert limited.status_code == 200
    assert (limited.json()["cluster_limit"], limited.json()["limit"]) == (3, 3)
    removed = await http.post("/v1/queues/default/limit", json={"limit": None}, headers=operator)
    assert removed.json()["cluster_limit"] is None
    bad = await http.post("/v1/queues/default/limit", json={"limit": 0}, headers=operator)
    assert bad.status_code == 422


async def test_an_unknown_queue_is_404_and_not_created(
    http: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    # Changed by issue 10: these used to create the queue.
    for path, body in [("pause", None), ("resume", None), ("limit", {"limit": 2})]:
        response = await http.post(f"/v1/queues/typo/{path}", json=body, headers=operator)
        assert response.status_code == 404, path
        assert "no queue named 'typo'" in response.json()["detail"]
    assert (await http.get("/v1/queues")).json()["queues"] == []
