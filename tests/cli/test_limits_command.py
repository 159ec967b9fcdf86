"""``conveyor limits set|list``: the limits land in the store and read back, a set
replaces, --clear removes, bad input is one error line with exit 2 and writes nothing;
hostile values (hypothesis, ``tests/hostile.py``) for every argument and option never
make the command fail, on both stores.

The hostile runs call the command in this process (as ``test_hostile_args.py`` does: an
argument vector there may hold NUL, which no exec can pass); the first test runs the real
console script once."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from cli_runner import Cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.cli.main import main
from conveyor.engine.client import Client
from hostile import argument_text
from pg_server import PgTestServer

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def test_set_and_list_through_the_console_script(cli: Cli) -> None:
    cli.ok("limits", "set", "video", "acme", "--concurrency", "2", "--rate", "30 per minute")
    shown = cli.ok("limits", "list").stdout.splitlines()
    assert shown[0].split() == ["QUEUE", "TENANT", "CONCURRENCY", "RATE", "WEIGHT"]
    assert shown[1].split() == ["video", "acme", "2", "30/minute", "-"]

    listed = cli.ok("limits", "list", "video", "--json").json()
    assert listed == [
        {
            "queue": "video",
            "tenant_id": "acme",
            "concurrency": 2,
            "rate": "30/minute",
            "weight": None,
        }
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The database URL the command sees (emptied, migrated)."""
    if request.param == "postgresql":
        server: PgTestServer = request.getfixturevalue("pg_server")
        server.empty()
        url = server.url
    else:
        url = f"sqlite:///{tmp_path}/c.db"
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", url)
    monkeypatch.setenv("CONVEYOR_LOG_FORMAT", "json")
    monkeypatch.delenv("CONVEYOR_IMPORTS", raising=False)
    assert run(["migrate"])[0] == 0
    return url


def run(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``conveyor ARGV`` run in this process."""
    with pytest.MonkeyPatch.context() as patch:
        out, err = io.StringIO(), io.StringIO()
        patch.setattr(sys, "stderr", err)
        patch.setattr(sys, "stdout", out)
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def ok_json(argv: list[str]) -> Any:
    code, out, err = run([*argv, "--json"])
    assert code == 0, err
    return orjson.loads(out)


def stored(url: str) -> list[dict[str, Any]]:
    """The limits in the store, read by a client of its own (not through the CLI)."""

    async def read() -> list[dict[str, Any]]:
        async with await Client.connect(url) as client:
            return [t.to_json() for t in await client.tenant_limits()]

    return asyncio.run(read())


def test_a_set_replaces_and_clear_removes(database: str) -> None:
    first = ok_json(["limits", "set", "qa", "acme", "--concurrency", "3", "--weight", "2"])
    assert first == {
        "queue": "qa",
        "tenant_id": "acme",
        "concurrency": 3,
        "rate": None,
        "weight": 2,
    }
    ok_json(["limits", "set", "qa", "zeta", "--rate", "5/10 seconds"])
    ok_json(["limits", "set", "video", "acme", "--weight", "7"])

    # What was left out is lifted: acme keeps only its rate in qa.
    ok_json(["limits", "set", "qa", "acme", "--rate", "100/hour"])
    assert ok_json(["limits", "list", "qa"]) == [
        {
            "queue": "qa",
            "tenant_id": "acme",
            "concurrency": None,
            "rate": "100/hour",
            "weight": None,
        },
        {
            "queue": "qa",
            "tenant_id": "zeta",
            "concurrency": None,
            "rate": "5/10 second",
            "weight": None,
        },
    ]
    assert [t["queue"] for t in ok_json(["limits", "list", "--tenant", "acme"])] == ["qa", "video"]

    cleared = ok_json(["limits", "set", "qa", "acme", "--clear"])
    assert cleared["rate"] is None
    assert [(t["queue"], t["tenant_id"]) for t in stored(database)] == [
        ("qa", "zeta"),
        ("video", "acme"),
    ]
    code, out, _ = run(["limits", "list", "nothing-here"])
    assert (code, out) == (0, "no tenant limits set\n")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["limits", "set", "qa", "acme"], "--clear"),
        (["limits", "set", "qa", "acme", "--weight", "2", "--clear"], "--clear"),
        (["limits", "set", "qa", "acme", "--concurrency", "0"], "--concurrency"),
        (["limits", "set", "qa", "acme", "--concurrency", "1" * 30], "--concurrency"),
        (["limits", "set", "qa", "acme", "--weight", "1001"], "--weight"),
        (["limits", "set", "qa", "acme", "--weight", "nan"], "--weight"),
        (["limits", "set", "qa", "acme", "--rate", "0/minute"], "--rate"),
        (["limits", "set", "qa", "acme", "--rate", "10/fortnight"], "--rate"),
        (["limits", "set", "qa", "acme", "--rate", "10/second;1/minute"], "--rate"),
        (["limits", "set", "qa", "acme", "--rate", "\x00"], "--rate"),
        (["limits", "set", "q a", "acme", "--weight", "2"], "queue"),
        (["limits", "set", "qa", "a\x00", "--weight", "2"], "tenant_id"),
        (["limits", "set", "qa", "\ud800", "--weight", "2"], "tenant_id"),
        (["limits", "set", "qa", "x" * 101, "--weight", "2"], "tenant_id"),
        (["limits", "list", "q\x00"], "queue"),
        (["limits", "list", "--tenant", ""], "tenant_id"),
    ],
)
def test_a_bad_argument_is_one_line_naming_it_exit_2_and_nothing_written(
    database: str, argv: list[str], fragment: str
) -> None:
    code, out, err = run(argv)

    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("conveyor: error: "), err
    assert fragment in err, err
    assert stored(database) == []


SET_OPTIONS = ["--concurrency", "--rate", "--weight"]

commands = st.one_of(
    st.tuples(
        st.just(["limits", "set"]),
        st.one_of(st.just("qa"), argument_text),
        st.one_of(st.just("acme"), argument_text),
        st.lists(st.tuples(st.sampled_from(SET_OPTIONS), argument_text), max_size=3).map(
            lambda pairs: [part for pair in pairs for part in pair]
        ),
        st.sampled_from([[], ["--clear"], ["--json"]]),
    ).map(lambda p: [*p[0], p[1], p[2], *p[3], *p[4]]),
    st.tuples(
        st.just(["limits", "list"]),
        st.lists(argument_text, max_size=1),
        st.lists(st.tuples(st.just("--tenant"), argument_text), max_size=1).map(
            lambda pairs: [part for pair in pairs for part in pair]
        ),
    ).map(lambda p: [*p[0], *p[1], *p[2]]),
    st.tuples(st.just(["limits"]), st.lists(argument_text, max_size=3)).map(
        lambda p: [*p[0], *p[1]]
    ),
)


@EXAMPLES
@given(argv=commands)
def test_no_argument_makes_limits_fail(database: str, argv: list[str]) -> None:
    code, _, err = run(argv)

    assert code in (0, 2), (argv, code, err)
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("conveyor: error: "), (argv, err)
        assert "Traceback" not in err
