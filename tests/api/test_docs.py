"""The documentation pages work with no network: every asset they name is the app's own,
and neither they nor the probes count against the per-address rate limit."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from conveyor.api.docs import ASSETS_PATH

URL = re.compile(r"""(?:src|href)=["']([^"']+)["']|url:\s*'([^']+)'""")
ANY_HOST = re.compile(r"\b(?:https?:)?//[A-Za-z0-9.-]+")


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_a_docs_page_names_no_other_host_and_its_assets_answer(
    http: httpx.AsyncClient, page: str
) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    html = response.text
    assert not ANY_HOST.findall(html), ANY_HOST.findall(html)
    assert "http" not in response.headers["Content-Security-Policy"]
    urls = [a or b for a, b in URL.findall(html)]
    if page != "/docs/oauth2-redirect":
        assert any(u.startswith(ASSETS_PATH + "/") for u in urls), urls
    for url in urls:
        assert url.startswith("/"), url
        asset = await http.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url


async def test_swagger_ui_loads_the_bundle_and_the_schema(http: httpx.AsyncClient) -> None:
    html = (await http.get("/docs")).text
    assert f'<script src="{ASSETS_PATH}/swagger-ui-bundle.js">' in html
    assert "url: '/openapi.json'" in html
    bundle = await http.get(f"{ASSETS_PATH}/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text
    assert bundle.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert (await http.get("/openapi.json")).json()["info"]["title"] == "Conveyor"


async def test_probes_and_docs_are_not_rate_limited_but_v1_is(app_client: Any) -> None:
    async with app_client(rate_limit_per_ip="5/minute") as http:
        free = [
            "/health",
            "/ready",
            "/metrics",
            "/docs",
            "/redoc",
            "/openapi.json",
            f"{ASSETS_PATH}/swagger-ui.css",
        ]
        key = http.headers.pop("Authorization")
        # Neither without a credential nor with one (which public routes count).
        for headers in ({}, {"Authorization": key}):
            for _ in range(3):
                for path in free:
                    assert (await http.get(path, headers=headers)).status_code == 200, path
                assert (await http.head("/health", headers=headers)).status_code == 200
        statuses = [(await http.get("/v1/queues")).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]


async def test_the_document_names_the_bearer_scheme_and_who_needs_it(
    http: httpx.AsyncClient,
) -> None:
    document = (await http.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    paths = document["paths"]
    for public in (paths["/v1/auth/login"]["post"], paths["/health"]["get"]):
        assert "security" not in public
    submit = paths["/v1/requests"]["post"]
    assert submit["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(submit["responses"])
    assert paths["/v1/me"]["get"]["security"] == [{"bearer": []}]
