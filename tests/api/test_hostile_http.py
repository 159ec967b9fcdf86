"""No request makes the API fail: hostile path segments, query values and JSON bodies
(hypothesis, ``tests/hostile.py``) over every route, on both stores. Each answer is below
500 and JSON; a 4xx has a ``detail``, and a 422's detail names where (``loc``) and quotes
little of the input."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from api_support import AppClient, app_of, bearer, operator_token, submit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.api.errors import ECHO_CHARS
from conveyor.store.base import Store
from conveyor.store.records import DEFAULT_TENANT, JobFilter
from hostile import argument_text, json_texts, json_values, to_json_text, url_quote

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
_PARAM = re.compile(r"\{(\w+)\}")


@pytest.fixture
async def http(app_client: AppClient) -> AsyncIterator[httpx.AsyncClient]:
    """A client that passes every route's access check (an operator logged in to the
    ``default`` tenant as its owner), so hostile input reaches every route's own code."""
    async with app_client() as client:
        token = await operator_token(app_of(client), DEFAULT_TENANT)
        client.headers["Authorization"] = bearer(token)
        yield client


async def routes(http: httpx.AsyncClient) -> list[tuple[str, str, list[str], bool]]:
    """(method, path template, query parameter names, takes a body) of every operation in
    the OpenAPI document, but the event streams: their answer never ends, so an in-process
    client never sees it (tests/api/test_event_streams.py sends them hostile input on a
    live server)."""
    document = (await http.get("/openapi.json")).json()
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            answers = operation.get("responses", {}).get("200", {}).get("content", {})
            if "text/event-stream" in answers:
                continue
            query = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            found.append((method.upper(), path, query, "requestBody" in operation))
    return found


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.text[:500])
    if response.status_code < 400:
        return  # 2xx JSON, or a redirect (an empty path segment: "/v1/jobs/")
    if response.headers.get("content-type", "").startswith("text/html"):
        return  # a page for people (the unsubscribe link of a mail): its refusal is a page
    body = response.json()
    assert "detail" in body, body
    if response.status_code == 422:
        for error in body["detail"]:
            assert error["loc"], error
            echoed = error.get("input")
            if isinstance(echoed, str):
                assert len(echoed) <= ECHO_CHARS, error


async def test_the_api_has_the_routes_this_suite_covers(http: httpx.AsyncClient) -> None:
    paths = {path for _, path, _, _ in (await routes(http))}
    assert {"/v1/requests", "/v1/jobs/{job_id}", "/v1/queues/{name}/pause"} <= paths
    assert len(await routes(http)) >= 18


@EXAMPLES
@given(data=st.data())
async def test_hostile_paths_and_queries_never_fail(
    http: httpx.AsyncClient, data: st.DataObject
) -> None:
    method, template, query, _ = data.draw(st.sampled_from(await routes(http)), label="route")
    path = _PARAM.sub(lambda m: url_quote(data.draw(argument_text, label=m[1])), template)
    names = (
        data.draw(st.lists(st.sampled_from(query), unique=True), label="params") if query else []
    )
    pairs = [f"{url_quote(n)}={url_quote(data.draw(argument_text, label=n))}" for n in names]
    url = path + ("?" + "&".join(pairs) if pairs else "")
    response = await http.request(method, url)
    check_answer(response)


@EXAMPLES
@given(data=st.data())
async def test_hostile_json_bodies_never_fail(http: httpx.AsyncClient, data: st.DataObject) -> None:
    bodied = [(m, p) for m, p, _, has_body in (await routes(http)) if has_body]
    method, template = data.draw(st.sampled_from(bodied), label="route")
    path = _PARAM.sub("1", template)
    kind = data.draw(st.sampled_from(["test.echo", "test.typed", "video.process", "qa.answer"]))
    shape = data.draw(st.sampled_from(["input", "whole", "field"]), label="shape")
    if shape == "input":
        text = f'{{"kind": "{kind}", "input": {data.draw(json_texts, label="input")}}}'
    elif shape == "field":
        value = to_json_text(data.draw(json_values, label="value"))
        text = f'{{"kind": "{kind}", "input": {{"name": {value}, "count": {value}}}}}'
    else:
        text = data.draw(json_texts, label="body")
    response = await http.request(
        method,
        path,
        content=text.encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json"},
    )
    check_answer(response)


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "test.echo", "input": {"a": NaN}}',
        b'{"kind": "test.echo", "input": {"a": 1e400}}',
        b'{"kind": "test.echo", "input": {"a": -Infinity}}',
        b'{"kind": "test.echo", "input": {"a": "\\ud800"}}',
        b'{"kind": "test.echo", "input": {"a": "x\\u0000"}}',
        b'{"kind": "test.typed", "input": {"name": "\\udfff"}}',
    ],
)
async def test_a_value_json_cannot_store_is_refused_naming_its_place(
    http: httpx.AsyncClient, body: bytes
) -> None:
    response = await http.post(
        "/v1/requests", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:3] in (["body", "input", "a"], ["body", "input", "name"]), error
    assert (await http.get("/v1/jobs")).json()["items"] == []


BIG = "123456789012345678901234567890"
"""An integer no JSON value here may hold: orjson alone would read it as 1.2345678901234568e+29."""


@pytest.mark.parametrize(
    ("text", "loc"),
    [
        (f'{{"n": {BIG}}}', ["body", "n"]),
        (f'{{"a": [0, {{"b": -{BIG}}}]}}', ["body", "a", 1, "b"]),
        ('{"n": 18446744073709551616}', ["body", "n"]),  # 2**64
        ('{"n": -9223372036854775809}', ["body", "n"]),  # -2**63 - 1
        ('{"n": 1' + "0" * 5000 + "}", ["body", "n"]),  # past the stdlib's 4,300 digits
    ],
    ids=["30 digits", "nested", "2**64", "-2**63-1", "5001 digits"],
)
async def test_an_integer_past_64_bits_is_refused_by_every_json_route_naming_its_place(
    http: httpx.AsyncClient, store: Store, text: str, loc: list[str | int]
) -> None:
    bodied = [(m, p) for m, p, _, has_body in (await routes(http)) if has_body]
    assert len(bodied) >= 10
    for method, template in bodied:
        response = await http.request(
            method,
            _PARAM.sub("1", template),
            content=text.encode(),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422, (template, response.text)
        (error,) = response.json()["detail"]
        assert error["loc"] == loc, (template, error)
        assert "an integer outside -9223372036854775808 .. 18446744073709551615" in error["msg"]
        # Nothing rounded is echoed (orjson's float would print as 1.2345678901234568e+29).
        assert "e+" not in response.text, (template, response.text)
    assert await store.list_jobs(JobFilter()) == []


async def test_a_payload_or_limit_at_the_edge_of_64_bits_is_kept_exact(
    http: httpx.AsyncClient,
) -> None:
    edges = {"max": 2**64 - 1, "min": -(2**63), "long": [2**63, -(2**62)], "f": 1e30}
    accepted = await submit(http, "test.echo", edges)
    job = await http.get(f"/v1/jobs/{accepted['job_id']}")
    assert job.json()["payload"] == edges
    request = await http.get(f"/v1/requests/{accepted['request_id']}")
    assert request.json()["input"] == edges
    # A limit within 64 bits but not the field's range: pydantic's answer, quoting it
    # exactly (as text past 2**63, which a JavaScript client could not hold as a number).
    response = await http.post("/v1/queues/default/limit", json={"limit": 2**64 - 1})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "limit"]
    assert error["input"] == str(2**64 - 1)


async def test_nesting_past_the_limit_is_refused_and_at_it_accepted(
    http: httpx.AsyncClient,
) -> None:
    from conveyor.engine.limits import MAX_DEPTH
    from hostile import nested

    deep = {"kind": "test.echo", "input": {"a": nested(MAX_DEPTH - 1)}}
    accepted = await submit(http, "test.echo", deep["input"])
    too_deep = await http.post(
        "/v1/requests", json={"kind": "test.echo", "input": {"a": nested(MAX_DEPTH)}}
    )
    very_deep = await http.post(
        "/v1/requests",
        content=b'{"kind": "test.echo", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        headers={"content-type": "application/json"},
    )

    assert accepted["status"] == "queued"
    assert too_deep.status_code == 422, too_deep.text
    assert "nested deeper than 64" in too_deep.json()["detail"][0]["msg"]
    assert very_deep.status_code == 422, very_deep.text
    shown = await http.get(f"/v1/jobs/{accepted['job_id']}")
    assert shown.status_code == 200


async def test_unknown_fields_of_a_kinds_input_are_refused(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/requests", json={"kind": "test.typed", "input": {"name": "Ada", "nmae": "x"}}
    )
    schema = (await http.get("/openapi.json")).json()["components"]["schemas"]["Typed"]

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "input", "nmae"]
    assert schema["additionalProperties"] is False


async def test_a_422_quotes_little_of_a_long_input(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/requests", json={"kind": "test.typed", "input": {"name": "n" * 100_000}}
    )

    assert response.status_code == 422
    assert len(response.content) < 2000


@pytest.mark.parametrize("query", ["kind=a%00b", "queue=%00", "cursor=x%00", "status=%00"])
async def test_nul_in_a_query_parameter_is_a_422_naming_it(
    http: httpx.AsyncClient, query: str
) -> None:
    response = await http.get(f"/v1/jobs?{query}")

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", query.split("=")[0]]
