"""No argument makes the CLI fail: hostile values (hypothesis, ``tests/hostile.py``) for
every option of every command that ends by itself, on both stores. Each run exits 0, 1, 2
or 3, never with an exception; a failing run prints exactly one ``conveyor: error:`` line.

The command runs in this process (``conveyor.cli.main.main``), not in a subprocess as in
``test_cli.py``: a subprocess costs half a second, and an argument vector here may hold
what no exec can pass (NUL), which the command must refuse as cleanly.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor.workloads.demo  # noqa: F401  (registers the demo kinds in this process)
from conveyor.cli.main import main
from hostile import argument_text, json_texts
from pg_server import PgTestServer

EXAMPLES = settings(
    max_examples=80,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)

ENQUEUE_OPTIONS = [
    "--payload",
    "--queue",
    "--priority",
    "--delay",
    "--max-attempts",
    "--timeout",
    "--unique-key",
]
LIST_OPTIONS = ["--state", "--queue", "--kind", "--limit", "--before"]
QUEUE_OPTIONS = ["--pause", "--resume", "--limit", "--no-limit"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The database URL the command sees (holding one queued job)."""
    if request.param == "postgresql":
        server: PgTestServer = request.getfixturevalue("pg_server")
        url = server.url
    else:
        url = f"sqlite:///{tmp_path}/c.db"
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", url)
    monkeypatch.setenv("CONVEYOR_LOG_FORMAT", "json")
    monkeypatch.delenv("CONVEYOR_IMPORTS", raising=False)
    assert run(["enqueue", "demo.echo"])[0] == 0
    return url


def run(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of ``conveyor ARGV``."""
    with pytest.MonkeyPatch.context() as patch:
        err = io.StringIO()
        patch.setattr(sys, "stderr", err)
        patch.setattr(sys, "stdout", io.StringIO())
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def options(names: list[str]) -> st.SearchStrategy[list[str]]:
    pairs = st.lists(st.tuples(st.sampled_from(names), argument_text), max_size=3)
    return pairs.map(lambda chosen: [part for pair in chosen for part in pair])


commands = st.one_of(
    st.tuples(
        st.just(["enqueue"]),
        st.one_of(
            st.just(["demo.echo"]), st.just(["demo.sleep"]), argument_text.map(lambda a: [a])
        ),
        options(ENQUEUE_OPTIONS),
        st.one_of(st.just([]), json_texts.map(lambda text: ["--payload", text])),
    ).map(lambda parts: [a for part in parts for a in part]),
    st.tuples(st.just(["jobs", "list"]), options(LIST_OPTIONS)).map(lambda p: p[0] + p[1]),
    st.tuples(
        st.sampled_from([["jobs", "show"], ["jobs", "cancel"], ["jobs", "retry"]]),
        st.one_of(st.just("1"), argument_text),
    ).map(lambda p: [*p[0], p[1]]),
    st.tuples(st.just(["queues"]), options(QUEUE_OPTIONS)).map(lambda p: p[0] + p[1]),
    st.lists(argument_text, max_size=3),
)
"""Argument vectors of every command that ends by itself (not serve, api or worker)."""


@EXAMPLES
@given(argv=commands)
def test_no_argument_makes_a_command_fail(database: str, argv: list[str]) -> None:
    code, err = run(argv)

    assert code in (0, 1, 2, 3), (argv, code, err)
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("conveyor: error: "), (argv, err)
        assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["enqueue", "demo.echo", "--delay", "1e30"], "delay"),
        (["enqueue", "demo.echo", "--delay", "nan"], "delay"),
        (["enqueue", "demo.echo", "--max-attempts", "1" * 30], "max_attempts"),
        (["enqueue", "demo.echo", "--payload", '{"a": NaN}'], "--payload.a"),
        (["enqueue", "demo.echo", "--payload", '"a\\u0000"'], "--payload"),
        (["enqueue", "demo.echo", "--queue", "a\x00"], "queue"),
        (["jobs", "show", "1" * 30], "job_id"),
        (["jobs", "list", "--before", "1" * 30], "--before"),
        (["jobs", "list", "--queue", "a\x00"], "queue"),
        (["queues", "--limit", "q:" + "1" * 30], "--limit"),
        (["queues", "--limit", "q"], "--limit"),
    ],
)
def test_a_bad_argument_is_one_line_naming_it_and_exit_2(
    database: str, argv: list[str], fragment: str
) -> None:
    code, err = run(argv)

    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith("conveyor: error: "), err
    assert fragment in err, err


def test_a_delay_job_far_ahead_cannot_break_the_listing(database: str) -> None:
    assert run(["enqueue", "demo.echo", "--delay", "315576000"])[0] == 0

    assert run(["jobs", "list"])[0] == 0
