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
from hostile import argument_text, hostile_text, json_texts
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


def run(argv: list[str], stdin: str = "") -> tuple[int, str]:
    """Exit code and stderr of ``conveyor ARGV`` (``stdin``: what it may read, never a
    terminal)."""
    with pytest.MonkeyPatch.context() as patch:
        err = io.StringIO()
        patch.setattr(sys, "stderr", err)
        patch.setattr(sys, "stdout", io.StringIO())
        patch.setattr(sys, "stdin", io.StringIO(stdin))
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
        (["enqueue", "demo.echo", "--payload", '{"a": [' + "1" * 30 + "]}"], "--payload.a[0]"),
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


# -- the accounts commands (tenants, users, api-keys, keys, bootstrap-demo) ---------------
def _command(
    words: list[str], positional: int, names: list[str], flags: list[str] | None = None
) -> st.SearchStrategy[list[str]]:
    """``words``, then ``positional`` hostile arguments, hostile values for ``names``
    and any of ``flags``."""
    return st.tuples(
        st.just(words),
        st.lists(argument_text, min_size=positional, max_size=positional),
        options(names) if names else st.just([]),
        st.lists(st.sampled_from(flags or ["--json"]), max_size=2, unique=True),
    ).map(lambda parts: [a for part in parts for a in part])


account_commands = st.one_of(
    _command(["tenants", "create"], 1, ["--id"]),
    st.sampled_from([["tenants", "disable"], ["tenants", "enable"]]).flatmap(
        lambda words: _command(words, 1, [])
    ),
    _command(["tenants", "set-rate-limit"], 2, []),
    _command(["users", "create"], 1, ["--tenant", "--role"], ["--operator", "--password-stdin"]),
    st.sampled_from([["users", "disable"], ["users", "enable"]]).flatmap(
        lambda words: _command(words, 1, [])
    ),
    _command(["users", "set-password"], 1, [], ["--password-stdin"]),
    _command(["users", "add-member"], 2, ["--role"]),
    _command(["api-keys", "create"], 1, ["--name", "--scope", "--expires-in"]),
    _command(["api-keys", "list"], 0, ["--tenant"]),
    _command(["api-keys", "revoke"], 1, []),
    st.sampled_from([["tenants", "list"], ["users", "list"], ["keys", "rotate"]]),
    st.just(["bootstrap-demo"]),
)
"""Argument vectors of every accounts command, hostile in every position."""


@EXAMPLES
@given(argv=account_commands, stdin=st.one_of(st.just(""), hostile_text))
def test_no_argument_makes_an_accounts_command_fail(
    database: str, argv: list[str], stdin: str
) -> None:
    code, err = run(argv, stdin=stdin)

    assert code in (0, 1, 2, 3), (argv, code, err)
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("conveyor: error: "), (argv, err)
        assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "stdin", "fragment"),
    [
        (["tenants", "create", "a\x00"], "", "name"),
        (["tenants", "create", "Acme", "--id", "\ud800"], "", "tenant_id"),
        (["tenants", "disable", "x" * 5000], "", "tenant_id"),
        (["tenants", "set-rate-limit", "default", "1e400/minute"], "", "rate_limit"),
        (["users", "create", "not-an-email", "--password-stdin"], "long enough pw\n", "email"),
        (["users", "create", "a@b.co", "--password-stdin"], "\ud800" * 9, "password"),
        (["users", "create", "a@b.co", "--password-stdin"], "x" * 5000, "password"),
        (["users", "create", "a@b.co", "--role", "root", "--password-stdin"], "", "--role"),
        (["users", "disable", "usr_\x00"], "", "user"),
        (["users", "add-member", "a\x00@b.co", "default"], "", "user"),
        (["api-keys", "create", "default", "--scope", "\x00"], "", "scopes"),
        (["api-keys", "create", "default", "--expires-in", "1e400"], "", "ttl_s"),
        (["api-keys", "create", "default", "--name", "\x1b[2J"], "", "name"),
        (["api-keys", "revoke", "key_\ud800"], "", "key_id"),
    ],
)
def test_a_bad_accounts_argument_is_one_line_naming_it_and_exit_2(
    database: str, argv: list[str], stdin: str, fragment: str
) -> None:
    code, err = run(argv, stdin=stdin)

    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith("conveyor: error: "), err
    assert fragment in err, err


def test_a_delay_job_far_ahead_cannot_break_the_listing(database: str) -> None:
    assert run(["enqueue", "demo.echo", "--delay", "315576000"])[0] == 0

    assert run(["jobs", "list"])[0] == 0
