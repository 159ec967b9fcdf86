"""conveyor.outbound: the SSRF guard on calls out, against real servers on loopback."""

from __future__ import annotations

import ipaddress
import time

import pytest

from conveyor.outbound import AllowList, OutboundClient, OutboundRefused, check_url, refusal
from http_receiver import Answer, Received, receiving


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.9", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.10.1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback address (IPv4-mapped)"),
        ("::ffff:169.254.169.254", "metadata address (IPv4-mapped)"),
        ("fc00::5", "private"),
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str, reason: str) -> None:
    found = refusal(ipaddress.ip_address(address))
    assert found is not None
    assert reason in found


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


async def test_loopback_is_refused_without_the_allow_list() -> None:
    async with receiving() as receiver:
        client = OutboundClient([])
        try:
            with pytest.raises(OutboundRefused) as caught:
                await client.request("POST", receiver.url, timeout=5, max_bytes=1024)
        finally:
            await client.aclose()
    message = str(caught.value)
    assert receiver.url in message
    assert "loopback" in message
    assert "CONVEYOR_WEBHOOK_ALLOW_HOSTS" in message
    assert receiver.received == []


async def test_a_name_resolving_to_loopback_is_refused_unless_named() -> None:
    async with receiving() as receiver:
        url = f"http://localhost:{receiver.port}/x"
        with pytest.raises(OutboundRefused, match=r"localhost .* loopback"):
            await check_url(url, AllowList.parse([]))
        await check_url(url, AllowList.parse(["localhost"]))


async def test_the_allow_list_admits_an_address_or_a_network() -> None:
    for allowed in (["127.0.0.1"], ["127.0.0.0/8"]):
        async with receiving(lambda r: Answer(201, b"made")) as receiver:
            client = OutboundClient(allowed)
            try:
                answer = await client.request(
                    "POST",
                    f"{receiver.url}/hook",
                    content=b"{}",
                    headers={"content-type": "application/json"},
                    timeout=5,
                    max_bytes=1024,
                )
            finally:
                await client.aclose()
        assert (answer.status_code, answer.body, answer.truncated) == (201, b"made", False)
        assert answer.ok
        assert answer.elapsed_ms > 0
        assert receiver.received[0].path == "/hook"
        assert receiver.received[0].body == b"{}"


async def test_a_redirect_to_a_refused_address_is_refused() -> None:
    def redirect(request: Received) -> Answer:
        return Answer(307, b"", {"Location": "http://127.0.0.2:9/metadata"})

    async with receiving(redirect) as receiver:
        client = OutboundClient(["127.0.0.1"])
        try:
            with pytest.raises(OutboundRefused) as caught:
                await client.request("POST", receiver.url, timeout=5, max_bytes=1024)
        finally:
            await client.aclose()
    assert "127.0.0.2" in caught.value.url
    assert "loopback" in caught.value.reason


async def test_redirects_are_followed_a_few_times_at_most() -> None:
    async with receiving() as target:

        def redirect(request: Received) -> Answer:
            hops = int(request.path.strip("/") or 0)
            if hops >= 1:
                return Answer(302, b"", {"Location": f"{target.url}/done"})
            return Answer(302, b"", {"Location": f"/{hops + 1}"})

        async with receiving(redirect) as hopper:
            client = OutboundClient(["127.0.0.1"])
            try:
                answer = await client.request("GET", hopper.url, timeout=5, max_bytes=100)
                assert answer.status_code == 200
                assert answer.url == f"{target.url}/done"

                def loop(request: Received) -> Answer:
                    return Answer(302, b"", {"Location": "/again"})

                hopper.script = loop
                with pytest.raises(OutboundRefused, match="more than 3 redirects"):
                    await client.request("GET", hopper.url, timeout=5, max_bytes=100)
            finally:
                await client.aclose()


async def test_the_body_is_read_up_to_the_cap() -> None:
    async with receiving(lambda r: Answer(200, b"x" * 200_000)) as receiver:
        client = OutboundClient(["127.0.0.1"])
        try:
            answer = await client.request("GET", receiver.url, timeout=5, max_bytes=1024)
        finally:
            await client.aclose()
    assert answer.truncated
    assert answer.body == b"x" * 1024


async def test_one_deadline_bounds_the_call() -> None:
    async with receiving(lambda r: Answer(delay=5)) as receiver:
        client = OutboundClient(["127.0.0.1"])
        started = time.monotonic()
        try:
            with pytest.raises(TimeoutError):
                await client.request("GET", receiver.url, timeout=0.3, max_bytes=100)
        finally:
            await client.aclose()
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "/relative"])
async def test_only_http_urls_are_called(url: str) -> None:
    with pytest.raises(OutboundRefused, match="only absolute http"):
        await check_url(url, AllowList.parse([]))


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/", "http://0x7f.0.0.1/", "http://127.1/", "http://[::ffff:7f00:1]/"],
)
async def test_other_spellings_of_loopback_are_refused(url: str) -> None:
    with pytest.raises(OutboundRefused, match="loopback"):
        await check_url(url, AllowList.parse([]))
