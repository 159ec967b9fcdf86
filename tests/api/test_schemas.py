"""Response shapes that are not plain copies of records: asset URLs, and the OpenAPI
document showing every kind's input."""

from __future__ import annotations

from typing import Any

import httpx

from conveyor.api.schemas import find_assets


def test_find_assets_takes_url_like_keys_with_http_values() -> None:
    result = {
        "url": "https://a.example/1",
        "thumbnail_url": "http://a.example/2.png",
        "assetUrl": "https://a.example/3.pdf",
        "PDF_URL": "https://a.example/4.pdf",
        "video": {"clips": [{"url": "https://a.example/5.mp4"}, {"url": "ftp://no"}]},
        "description": "https://a.example/not-a-url-key",
        "curl": "https://a.example/ends-in-url-but-not-a-url-key",
        "count_url": 3,
    }
    assert [(a.field, a.url) for a in find_assets(result)] == [
        ("PDF_URL", "https://a.example/4.pdf"),
        ("assetUrl", "https://a.example/3.pdf"),
        ("thumbnail_url", "http://a.example/2.png"),
        ("url", "https://a.example/1"),
        ("video.clips[0].url", "https://a.example/5.mp4"),
    ]


def test_find_assets_of_results_without_any() -> None:
    assert find_assets(None) == []
    assert find_assets("https://a.example/bare-string") == []
    assert find_assets([1, "x", {"y": None}]) == []


def test_find_assets_is_bounded() -> None:
    deep: Any = {"url": "https://a.example/deep"}
    for _ in range(10):
        deep = {"next": deep}
    assert find_assets(deep) == []
    many = {"items": [{"url": f"https://a.example/{i}"} for i in range(200)]}
    assert len(find_assets(many)) == 50


async def test_openapi_shows_every_kinds_input_schema(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    body = spec["paths"]["/v1/requests"]["post"]["requestBody"]["content"]["application/json"]
    mapping = body["schema"]["discriminator"]["mapping"]
    assert set(mapping) == {
        "qa.answer",
        "test.assets",
        "test.echo",
        "test.fail",
        "test.typed",
        "video.process",
    }
    schemas = spec["components"]["schemas"]
    typed = schemas[mapping["test.typed"].rsplit("/", 1)[1]]
    assert typed["properties"]["input"]["$ref"].endswith("/Typed")
    assert schemas["Typed"]["required"] == ["name"]
    video = schemas[mapping["video.process"].rsplit("/", 1)[1]]
    assert video["properties"]["input"]["$ref"].endswith("/VideoInput")
    echo = schemas[mapping["test.echo"].rsplit("/", 1)[1]]
    assert echo["properties"]["input"]["type"] == "object"
    # Every route documents its error answers.
    post = spec["paths"]["/v1/requests"]["post"]["responses"]
    assert {"200", "202", "409", "413", "422", "429", "503"} <= set(post)
