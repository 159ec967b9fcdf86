"""The identity routes over HTTP, on both stores: signup, login (throttled per account
and per address, no user enumeration), refresh and logout, ``/v1/me``, invitations,
members, API keys; and what tenancy changes elsewhere: each tenant's own queue counts,
each tenant's own rate budget, ``/metrics`` behind its token, the probes open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from api_support import (
    PASSWORD,
    accounts_of,
    api_key,
    api_settings,
    bearer,
    operator_token,
    serving,
    submit,
    tenant,
)
from fastapi import FastAPI

import conveyor
from conveyor.api import create_app
from conveyor.api.errors import UNAUTHENTICATED
from conveyor.store.accounts import Role
from conveyor.store.base import Store


def _app(store: Store, kinds: conveyor.Registry, tmp_path: Path, **settings: Any) -> FastAPI:
    return create_app(api_settings(tmp_path, **settings), store=store, kinds=kinds)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": bearer(token)}


async def _signup(http: httpx.AsyncClient, email: str, tenant_name: str = "Acme") -> Any:
    response = await http.post(
        "/v1/auth/signup", json={"email": email, "password": PASSWORD, "tenant_name": tenant_name}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_signup_logs_the_owner_in_and_me_says_who(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    async with serving(_app(store, kinds, tmp_path)) as http:
        session = await _signup(http, "Ada@Example.com")
        assert session["role"] == "owner"
        assert session["token_type"] == "bearer"
        assert session["user"]["email"] == "ada@example.com"
        me = await http.get("/v1/me", headers=_auth(session["access_token"]))
        assert me.status_code == 200
        body = me.json()
        assert body["tenant_id"] == session["tenant_id"]
        assert body["role"] == "owner"
        assert body["scopes"] == ["admin", "requests:read", "requests:write"]
        assert [m["tenant_id"] for m in body["memberships"]] == [session["tenant_id"]]
        again = await http.post(
            "/v1/auth/signup",
            json={"email": "ada@example.com", "password": PASSWORD, "tenant_name": "Two"},
        )
        assert again.status_code == 409
        assert "log in" in again.json()["detail"]
        short = await http.post(
            "/v1/auth/signup", json={"email": "b@example.com", "password": "x", "tenant_name": "T"}
        )
        assert short.status_code == 422
        assert short.json()["detail"][0]["loc"] == ["body", "password"]


async def test_a_refused_login_tells_nothing_of_which_accounts_exist(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    async with serving(_app(store, kinds, tmp_path)) as http:
        await _signup(http, "ada@example.com")
        wrong = await http.post(
            "/v1/auth/login", json={"email": "ada@example.com", "password": "not the password"}
        )
        unknown = await http.post(
            "/v1/auth/login", json={"email": "nobody@example.com", "password": "not the password"}
        )
        for response in (wrong, unknown):
            assert response.status_code == 401
            assert response.json()["detail"] == UNAUTHENTICATED
            assert response.headers["WWW-Authenticate"] == "Bearer"
        ok = await http.post(
            "/v1/auth/login", json={"email": " ADA@example.com", "password": PASSWORD}
        )
        assert ok.status_code == 200
        assert ok.json()["role"] == "owner"


async def test_login_is_throttled_per_account(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = _app(store, kinds, tmp_path, login_rate_per_account="2/hour")
    async with serving(app) as http:
        await _signup(http, "ada@example.com")
        bad = {"email": "ada@example.com", "password": "wrong password"}
        statuses = [(await http.post("/v1/auth/login", json=bad)).status_code for _ in range(2)]
        assert statuses == [401, 401]
        # Even the right password now: the account's budget is spent, whoever asks.
        refused = await http.post(
            "/v1/auth/login", json={"email": "ADA@example.com", "password": PASSWORD}
        )
        assert refused.status_code == 429
        assert "login attempts for this account" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        # Another account is not held to it.
        other = {"email": "bob@example.com", "password": "wrong password"}
        assert (await http.post("/v1/auth/login", json=other)).status_code == 401


async def test_login_is_throttled_per_address(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = _app(store, kinds, tmp_path, rate_limit_per_ip="3/hour")
    async with serving(app) as http:
        await _signup(http, "ada@example.com")
        statuses = [
            (
                await http.post(
                    "/v1/auth/login", json={"email": f"u{i}@example.com", "password": "pw"}
                )
            ).status_code
            for i in range(3)
        ]
        assert statuses == [401, 401, 429]
        refused = await http.post(
            "/v1/auth/login", json={"email": "x@example.com", "password": "p"}
        )
        assert refused.status_code == 429
        assert "this address" in refused.json()["detail"]
        assert refused.headers["Retry-After"]


async def test_a_user_of_several_tenants_chooses_one(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = _app(store, kinds, tmp_path)
    async with serving(app) as http:
        first = await _signup(http, "ada@example.com", "First")
        second = await tenant(app, "second")
        await accounts_of(app).add_member(second, "ada@example.com", Role.VIEWER)
        login = {"email": "ada@example.com", "password": PASSWORD}
        choose = await http.post("/v1/auth/login", json=login)
        assert choose.status_code == 422
        detail = choose.json()["detail"][0]
        assert detail["loc"] == ["body", "tenant_id"]
        assert sorted(detail["ctx"]["tenant_ids"]) == sorted([first["tenant_id"], second])
        chosen = await http.post("/v1/auth/login", json={**login, "tenant_id": second})
        assert chosen.status_code == 200
        assert (chosen.json()["tenant_id"], chosen.json()["role"]) == (second, "viewer")
        outside = await http.post("/v1/auth/login", json={**login, "tenant_id": "elsewhere"})
        assert outside.status_code == 403


async def test_refresh_rotates_reuse_revokes_and_logout_ends_the_session(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    async with serving(_app(store, kinds, tmp_path)) as http:
        session = await _signup(http, "ada@example.com")
        first = session["refresh_token"]
        rotated = await http.post("/v1/auth/refresh", json={"refresh_token": first})
        assert rotated.status_code == 200
        second = rotated.json()["refresh_token"]
        assert second != first
        assert (await http.get("/v1/me", headers=_auth(rotated.json()["access_token"]))).is_success
        reused = await http.post("/v1/auth/refresh", json={"refresh_token": first})
        assert reused.status_code == 401
        assert reused.json()["detail"] == UNAUTHENTICATED
        # The reuse revoked the family: the newer token is refused too.
        assert (
            await http.post("/v1/auth/refresh", json={"refresh_token": second})
        ).status_code == 401

        fresh = (
            await http.post(
                "/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
            )
        ).json()
        out = await http.post(
            "/v1/auth/logout",
            json={"refresh_token": fresh["refresh_token"]},
            headers=_auth(fresh["access_token"]),
        )
        assert out.status_code == 204
        after = await http.post("/v1/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
        assert after.status_code == 401


async def test_invitations_members_and_roles(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    async with serving(_app(store, kinds, tmp_path)) as http:
        owner = await _signup(http, "owner@example.com")
        as_owner = _auth(owner["access_token"])
        made = await http.post(
            "/v1/invitations", json={"email": "Bob@Example.com", "role": "admin"}, headers=as_owner
        )
        assert made.status_code == 201
        token = made.json()["token"]
        listed = (await http.get("/v1/invitations", headers=as_owner)).json()["invitations"]
        assert [i["email"] for i in listed] == ["bob@example.com"]
        assert token not in str(listed)

        bob = await http.post(
            "/v1/auth/signup", json={"invitation_token": token, "password": PASSWORD}
        )
        assert bob.status_code == 201
        assert (bob.json()["tenant_id"], bob.json()["role"]) == (owner["tenant_id"], "admin")
        used = await http.post(
            "/v1/auth/signup", json={"invitation_token": token, "password": PASSWORD}
        )
        assert used.status_code == 404

        members = (await http.get("/v1/members", headers=as_owner)).json()["members"]
        assert {m["email"]: m["role"] for m in members} == {
            "owner@example.com": "owner",
            "bob@example.com": "admin",
        }
        bob_id = bob.json()["user"]["id"]
        as_bob = _auth(bob.json()["access_token"])
        # An admin makes no owner; an owner does.
        made_owner = await http.patch(
            f"/v1/members/{bob_id}", json={"role": "owner"}, headers=as_bob
        )
        assert made_owner.status_code == 403
        demoted = await http.patch(
            f"/v1/members/{bob_id}", json={"role": "viewer"}, headers=as_owner
        )
        assert demoted.status_code == 200
        assert demoted.json()["role"] == "viewer"
        owner_id = owner["user"]["id"]
        last = await http.patch(f"/v1/members/{owner_id}", json={"role": "admin"}, headers=as_owner)
        assert last.status_code == 409
        assert (await http.delete(f"/v1/members/{bob_id}", headers=as_owner)).status_code == 204
        assert (await http.delete(f"/v1/members/{bob_id}", headers=as_owner)).status_code == 404

        # A logged-in user accepts an invitation to its own email only.
        other = await _signup(http, "carol@example.com", "Carol's")
        invite = await http.post(
            "/v1/invitations", json={"email": "carol@example.com"}, headers=as_owner
        )
        wrong = await http.post(
            "/v1/invitations/accept", json={"token": invite.json()["token"]}, headers=as_owner
        )
        assert wrong.status_code == 403
        accepted = await http.post(
            "/v1/invitations/accept",
            json={"token": invite.json()["token"]},
            headers=_auth(other["access_token"]),
        )
        assert accepted.status_code == 200
        assert (accepted.json()["tenant_id"], accepted.json()["role"]) == (
            owner["tenant_id"],
            "member",
        )
        revoke = await http.post(
            "/v1/invitations", json={"email": "dan@example.com"}, headers=as_owner
        )
        revoked = await http.delete(
            f"/v1/invitations/{revoke.json()['invitation']['id']}", headers=as_owner
        )
        assert revoked.status_code == 204
        late = await http.post(
            "/v1/auth/signup",
            json={"invitation_token": revoke.json()["token"], "password": PASSWORD},
        )
        assert late.status_code == 404


async def test_api_keys_are_shown_once_listed_without_secret_and_revoked_at_once(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    async with serving(_app(store, kinds, tmp_path)) as http:
        owner = _auth((await _signup(http, "owner@example.com"))["access_token"])
        made = await http.post(
            "/v1/api-keys", json={"name": "backend", "scopes": ["requests:write"]}, headers=owner
        )
        assert made.status_code == 201
        text = made.json()["key"]
        key = made.json()["api_key"]
        assert text.startswith(f"cvk_{key['prefix']}_")
        listed = (await http.get("/v1/api-keys", headers=owner)).json()["api_keys"]
        assert [k["id"] for k in listed] == [key["id"]]
        assert text not in str(listed)
        assert "secret_hash" not in listed[0]

        as_key = _auth(text)
        await submit(http, "test.echo", {}, headers=as_key)
        # A key with requests:write alone reads nothing and manages nothing.
        assert (await http.get("/v1/requests", headers=as_key)).status_code == 403
        assert (await http.get("/v1/api-keys", headers=as_key)).status_code == 403
        me = (await http.get("/v1/me", headers=as_key)).json()
        assert (me["api_key"]["id"], me["user"]) == (key["id"], None)

        assert (await http.delete(f"/v1/api-keys/{key['id']}", headers=owner)).status_code == 204
        gone = await http.post(
            "/v1/requests", json={"kind": "test.echo", "input": {}}, headers=as_key
        )
        assert gone.status_code == 401
        assert (await http.delete(f"/v1/api-keys/{key['id']}", headers=owner)).status_code == 404
        bogus = await http.post(
            "/v1/api-keys", json={"name": "x", "scopes": ["admin", "bogus"]}, headers=owner
        )
        assert bogus.status_code == 422
        # A caller grants only scopes it holds: an admin-only key mints no writer.
        admin_only = await http.post(
            "/v1/api-keys", json={"name": "keys", "scopes": ["admin"]}, headers=owner
        )
        beyond = await http.post(
            "/v1/api-keys",
            json={"name": "x", "scopes": ["requests:write"]},
            headers=_auth(admin_only.json()["key"]),
        )
        assert beyond.status_code == 403
        assert "requests:write" in beyond.json()["detail"]


async def test_queue_counts_are_the_tenants_own(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = _app(store, kinds, tmp_path)
    async with serving(app) as http:
        alpha = _auth(await api_key(app, "alpha"))
        bravo = _auth(await api_key(app, "bravo"))
        for _ in range(2):
            await submit(http, "test.echo", {}, headers=alpha)
        await submit(http, "test.echo", {}, headers=bravo)

        async def queued(headers: dict[str, str]) -> int:
            queues = (await http.get("/v1/queues", headers=headers)).json()["queues"]
            count: int = {q["name"]: q for q in queues}["default"]["counts"]["queued"]
            return count

        assert await queued(alpha) == 2
        assert await queued(bravo) == 1
        assert await queued(_auth(await operator_token(app))) == 3
        seed = (await http.get("/api/queue/status", headers=bravo)).json()["data"]["queues"]
        assert seed["default"]["waiting"] == 1


async def test_a_tenants_own_rate_limit_applies_to_its_callers(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = _app(store, kinds, tmp_path)
    async with serving(app) as http:
        slow = _auth(await api_key(app, "slow"))
        fast = _auth(await api_key(app, "fast"))
        await accounts_of(app).set_tenant_rate_limit("slow", "2/hour")
        statuses = [(await http.get("/v1/jobs", headers=slow)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert all(
            [(await http.get("/v1/jobs", headers=fast)).status_code == 200 for _ in range(3)]
        )


async def test_metrics_need_the_token_when_it_is_set_and_probes_need_nothing(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    token = "metrics-token-0123456789"
    app = _app(store, kinds, tmp_path, metrics_token=token)
    async with serving(app) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert (
            await http.get("/metrics", headers=_auth("wrong-token-0123456789"))
        ).status_code == 401
        # An API key is no metrics token.
        assert (await http.get("/metrics", headers=_auth(await api_key(app)))).status_code == 401
        assert (await http.get("/metrics", headers=_auth(token))).status_code == 200
        for probe in ("/health", "/ready"):
            assert (await http.get(probe)).status_code == 200
    async with serving(_app(store, kinds, tmp_path)) as http:
        assert (await http.get("/metrics")).status_code == 200


async def test_seed_routes_and_v1_need_credentials(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    async with serving(_app(store, kinds, tmp_path)) as http:
        seed = await http.get("/api/queue/status")
        assert seed.status_code == 401
        assert seed.json()["success"] is False
        assert seed.headers["WWW-Authenticate"] == "Bearer"
        for path in ("/v1/requests", "/v1/jobs", "/v1/queues", "/v1/me"):
            response = await http.get(path, headers={"Authorization": "Bearer not-a-credential"})
            assert response.status_code == 401, path
            assert response.json()["detail"] == UNAUTHENTICATED


async def test_a_user_has_one_budget_whichever_token_it_sends(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = _app(store, kinds, tmp_path, rate_limit_per_caller="1/hour")
    async with serving(app) as http:
        ada = await _signup(http, "ada@example.com")
        assert (await http.get("/v1/me", headers=_auth(ada["access_token"]))).status_code == 200
        again = (
            await http.post(
                "/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
            )
        ).json()
        refused = await http.get("/v1/me", headers=_auth(again["access_token"]))
        assert refused.status_code == 429
        assert "this caller" in refused.json()["detail"]
        bob = await _signup(http, "bob@example.com")
        assert (await http.get("/v1/me", headers=_auth(bob["access_token"]))).status_code == 200
