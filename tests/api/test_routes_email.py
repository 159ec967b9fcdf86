"""``/v1/me/email-preferences`` and ``/v1/email/unsubscribe``: a signed-in user's choice
of the events that email them, and the link every mail carries (GET shows a page and
changes nothing; POST, RFC 8058 one-click, turns the preferences off)."""

from __future__ import annotations

import httpx
from api_support import app_of, bearer, user_token

from conveyor.store.accounts import Role
from conveyor.store.base import Store
from conveyor.store.records import DEFAULT_TENANT

CHOICE = {"event_types": ["job.completed", "job.failed"], "kinds": ["asset.generate"]}


async def _user(http: httpx.AsyncClient) -> dict[str, str]:
    return {"Authorization": bearer(await user_token(app_of(http), Role.MEMBER))}


async def _token(store: Store) -> str:
    (contact,) = [c for c in await store.email_contacts(DEFAULT_TENANT) if c.unsubscribe_token]
    assert contact.unsubscribe_token is not None
    return contact.unsubscribe_token


async def test_a_user_reads_and_sets_their_preferences(http: httpx.AsyncClient) -> None:
    user = await _user(http)
    before = await http.get("/v1/me/email-preferences", headers=user)
    assert before.status_code == 200
    assert before.json() == {"event_types": [], "kinds": [], "enabled": False, "updated_at": None}

    put = await http.put("/v1/me/email-preferences", json=CHOICE, headers=user)
    assert put.status_code == 200, put.text
    assert put.json()["event_types"] == ["job.completed", "job.failed"]
    assert put.json()["kinds"] == ["asset.generate"]
    assert put.json()["enabled"] is True
    after = await http.get("/v1/me/email-preferences", headers=user)
    assert after.json() == put.json()
    assert "token" not in after.text


async def test_bad_choices_are_refused_field_by_field(http: httpx.AsyncClient) -> None:
    user = await _user(http)
    response = await http.put(
        "/v1/me/email-preferences",
        json={"event_types": ["job.completed", "job.progress"], "kinds": ["no spaces"]},
        headers=user,
    )
    assert response.status_code == 422
    locs = {tuple(d["loc"]) for d in response.json()["detail"]}
    assert locs == {("body", "event_types", 1), ("body", "kinds", 0)}
    missing = await http.put("/v1/me/email-preferences", json={"kinds": []}, headers=user)
    assert missing.status_code == 422
    assert [d["loc"] for d in missing.json()["detail"]] == [["body", "event_types"]]


async def test_an_api_key_has_no_preferences(http: httpx.AsyncClient) -> None:
    # ``http`` sends an API key of the default tenant.
    response = await http.get("/v1/me/email-preferences")
    assert response.status_code == 403
    assert "API key" in response.json()["detail"]


async def test_get_of_the_link_changes_nothing_and_post_unsubscribes(
    http: httpx.AsyncClient, store: Store
) -> None:
    user = await _user(http)
    assert (await http.put("/v1/me/email-preferences", json=CHOICE, headers=user)).is_success
    token = await _token(store)
    url = f"/v1/email/unsubscribe?token={token}"

    page = await http.get(url, headers={"Authorization": ""})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f'action="/v1/email/unsubscribe?token={token}"' in page.text
    assert "form-action 'self'" in page.headers["content-security-policy"]
    still = await http.get("/v1/me/email-preferences", headers=user)
    assert still.json()["enabled"] is True

    # What a mail client's one-click unsubscribe posts (RFC 8058), with no credential.
    done = await http.post(
        url,
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": ""},
    )
    assert done.status_code == 200, done.text
    assert "Unsubscribed" in done.text
    off = await http.get("/v1/me/email-preferences", headers=user)
    assert off.json()["enabled"] is False
    assert off.json()["event_types"] == ["job.completed", "job.failed"]


async def test_an_unknown_or_missing_token_unsubscribes_nobody(http: httpx.AsyncClient) -> None:
    unknown = await http.post("/v1/email/unsubscribe?token=unknown")
    assert unknown.status_code == 404
    assert "unsubscribes nobody" in unknown.text
    missing = await http.post("/v1/email/unsubscribe")
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "token"]
