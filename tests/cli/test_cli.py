"""The ``conveyor`` command as other tools see it: the real CLI run in a subprocess.

The contract (``conveyor.cli.main``): ``--json`` prints machine-readable output; bad input
prints exactly one line ``conveyor: error: ...`` naming the fault, exits 2 and writes
nothing; a job id that does not exist exits 1.
"""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from cli_runner import Cli, Result, conveyor_command


def assert_one_error_line(result: Result, *fragments: str, code: int = 2) -> None:
    """Exit ``code``, nothing on stdout, one ``conveyor: error:`` line naming the fault."""
    assert result.code == code, result
    assert result.stdout == "", result
    lines = result.stderr_lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("conveyor: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- migrate ----------------------------------------------------------------------------
def test_migrate_text_is_idempotent(cli: Cli) -> None:
    first = cli.ok("migrate")
    assert first.stdout.startswith("applied migrations 1")
    assert "schema at version" in first.stdout
    assert cli.db_path.is_file()

    second = cli.ok("migrate")
    assert second.stdout.startswith("schema is current (version ")
    assert cli.job_count() == 0


def test_migrate_json_is_idempotent(cli: Cli) -> None:
    first = cli.ok("migrate", "--json").json()
    assert set(first) == {"applied", "version"}
    assert first["applied"], first
    assert first["applied"] == sorted(first["applied"])
    assert first["version"] == first["applied"][-1]

    second = cli.ok("migrate", "--json").json()
    assert second == {"applied": [], "version": first["version"]}


# -- enqueue ----------------------------------------------------------------------------
def test_enqueue_prints_the_new_id(cli: Cli) -> None:
    assert cli.ok("enqueue", "demo.echo").stdout == "1\n"
    assert cli.ok("enqueue", "demo.echo", "--payload", '{"n": 2}').stdout == "2\n"
    assert cli.job_count() == 2


def test_enqueue_json_shape(cli: Cli) -> None:
    data = cli.ok("enqueue", "demo.flaky", "--payload", '{"fail_times": 0}', "--json").json()
    assert data == {
        "id": 1,
        "created": True,
        "kind": "demo.flaky",
        "queue": "default",
        "priority": 2,
    }


def test_every_enqueue_option_lands_on_the_job(cli: Cli) -> None:
    before = time.time()
    job_id = cli.enqueue(
        "demo.echo",
        "--payload",
        '{"a": [1, 2], "b": "x"}',
        "--queue",
        "reports",
        "--priority",
        "7",
        "--delay",
        "60",
        "--max-attempts",
        "4",
        "--timeout",
        "12.5",
        "--unique-key",
        "month-2026-10",
    )
    after = time.time()
    job = cli.show(job_id)
    assert job["kind"] == "demo.echo"
    assert job["payload"] == {"a": [1, 2], "b": "x"}
    assert job["queue"] == "reports"
    assert job["priority"] == 7
    assert job["max_attempts"] == 4
    assert job["timeout_s"] == 12.5
    assert job["unique_key"] == "month-2026-10"
    assert job["state"] == "queued"
    assert job["attempt"] == 0
    # Times are ISO 8601 with the UTC offset (changed by issue 10: were Unix seconds).
    created = datetime.fromisoformat(job["created_at"])
    assert job["created_at"].endswith("+00:00")
    assert before - 1 <= created.timestamp() <= after + 1
    run_at = datetime.fromisoformat(job["run_at"])
    assert (run_at - created).total_seconds() == pytest.approx(60, abs=0.01)


def test_enqueue_defaults_come_from_the_kind(cli: Cli) -> None:
    flaky = cli.show(cli.enqueue("demo.flaky"))
    assert (flaky["queue"], flaky["priority"], flaky["max_attempts"]) == ("default", 2, 5)
    sleep = cli.show(cli.enqueue("demo.sleep", "--payload", '{"seconds": 2}'))
    assert sleep["timeout_s"] == 3600
    # The payload is stored as the kind's model dumps it, defaults filled in.
    assert sleep["payload"] == {"seconds": 2.0, "steps": 4}
    assert sleep["run_at"] == sleep["created_at"]


def test_enqueue_of_a_kind_not_registered_here_goes_by_name(cli: Cli) -> None:
    """A shell (or a web app) with no import of the handler's module: the job is stored
    with the given options, the system defaults for the rest, and the payload as given."""
    no_imports = {"CONVEYOR_IMPORTS": ""}
    out = cli.ok(
        "enqueue",
        "video.process",
        "--payload",
        '{"url": "https://x/v.mp4", "n": 1}',
        "--queue",
        "video",
        "--priority",
        "2",
        "--json",
        env=no_imports,
    ).json()
    assert (out["kind"], out["queue"], out["priority"], out["created"]) == (
        "video.process",
        "video",
        2,
        True,
    )
    job = cli.show(out["id"])
    assert (job["state"], job["max_attempts"], job["timeout_s"]) == ("queued", 3, 300.0)
    assert job["payload"] == {"url": "https://x/v.mp4", "n": 1}
    # Nobody runs it: it waits, and says so.
    assert job["served_by"] == []
    text = cli.ok("jobs", "show", str(out["id"])).stdout
    assert "no live worker runs kind 'video.process' in queue 'video'" in text
    # A kind registered here is still validated at enqueue (exit 2, nothing stored).
    result = cli("enqueue", "demo.sleep", "--payload", '{"seconds": "x"}')
    assert_one_error_line(result, "demo.sleep", "seconds")
    assert cli.job_count() == 1


def test_unique_key_returns_the_active_job(cli: Cli) -> None:
    first = cli.ok("enqueue", "demo.echo", "--unique-key", "k1", "--json").json()
    again = cli.ok("enqueue", "demo.echo", "--unique-key", "k1", "--json").json()
    other = cli.ok("enqueue", "demo.echo", "--unique-key", "k2", "--json").json()
    assert first["created"] is True
    assert again == {**first, "created": False}
    assert other["created"] is True
    assert other["id"] != first["id"]
    assert cli.job_count() == 2
    # Plain output prints the existing id too.
    assert cli.ok("enqueue", "demo.echo", "--unique-key", "k1").stdout == f"{first['id']}\n"


# -- jobs -------------------------------------------------------------------------------
def test_jobs_list_table_json_and_filters(cli: Cli) -> None:
    a = cli.enqueue("demo.echo")
    b = cli.enqueue("demo.echo", "--queue", "other")
    c = cli.enqueue("demo.sleep", "--delay", "3600")
    cli.ok("jobs", "cancel", str(c))

    table = cli.ok("jobs", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "KIND", "QUEUE", "PRI", "STATE", "ATTEMPT", "CREATED"]
    rows = [line.split() for line in table[1:]]
    assert [row[0] for row in rows] == [str(c), str(b), str(a)]  # newest first
    assert rows[0][1:6] == ["demo.sleep", "default", "3", "cancelled", "0/3"]
    assert rows[1][1:6] == ["demo.echo", "other", "3", "queued", "0/3"]

    listed = cli.ok("jobs", "list", "--json").json()
    assert [j["id"] for j in listed] == [c, b, a]
    assert {j["state"] for j in listed} == {"queued", "cancelled"}

    queued = cli.ok("jobs", "list", "--state", "queued", "--json").json()
    assert [j["id"] for j in queued] == [b, a]
    other = cli.ok("jobs", "list", "--queue", "other", "--json").json()
    assert [j["id"] for j in other] == [b]
    both = cli.ok("jobs", "list", "--state", "queued", "--queue", "default", "--json").json()
    assert [j["id"] for j in both] == [a]
    cancelled = cli.ok("jobs", "list", "--state", "cancelled").stdout.splitlines()
    assert len(cancelled) == 2
    assert cancelled[1].split()[0] == str(c)
    assert cli.ok("jobs", "list", "--state", "failed").stdout == "no jobs\n"
    assert cli.ok("jobs", "list", "--state", "failed", "--json").json() == []
    paged = cli.ok("jobs", "list", "--limit", "1", "--before", str(c), "--json").json()
    assert [j["id"] for j in paged] == [b]


def test_jobs_list_rejects_an_unknown_state(cli: Cli) -> None:
    cli.ok("migrate")
    result = cli("jobs", "list", "--state", "bogus")
    assert_one_error_line(result, "bogus", "queued, running, completed, failed, cancelled")


def test_jobs_show_lists_the_error_history(cli: Cli) -> None:
    job_id = cli.enqueue("demo.flaky", "--payload", '{"fail_times": 5}', "--max-attempts", "1")
    discarded = cli.enqueue("demo.discard")
    cli.ok("worker", "--burst")

    text = cli.ok("jobs", "show", str(job_id)).stdout
    assert text.startswith(f"job {job_id}  demo.flaky  [failed]")
    assert "attempt     1 of 1" in text
    assert "errors      1" in text
    assert "attempt 1 at " in text
    assert "RuntimeError: attempt 1 fails on purpose" in text

    # A retry grants one more attempt; the second failure joins the history.
    retried = cli.ok("jobs", "retry", str(job_id), "--json").json()
    assert (retried["state"], retried["max_attempts"]) == ("queued", 2)
    cli.ok("worker", "--burst")
    text = cli.ok("jobs", "show", str(job_id)).stdout
    assert "errors      2" in text
    assert "attempt 1 at " in text
    assert "attempt 2 at " in text
    assert "RuntimeError: attempt 2 fails on purpose" in text
    errors = cli.show(job_id)["errors"]
    assert [(e["attempt"], e["type"]) for e in errors] == [(1, "RuntimeError"), (2, "RuntimeError")]
    assert all("Traceback" in e["traceback"] for e in errors)

    text = cli.ok("jobs", "show", str(discarded)).stdout
    assert "[failed]" in text
    assert "Discard: this job always gives up" in text


def test_jobs_cancel_and_retry_change_state(cli: Cli) -> None:
    job_id = cli.enqueue("demo.echo", "--delay", "3600")

    text = cli.ok("jobs", "cancel", str(job_id)).stdout
    assert text.startswith(f"job {job_id}  demo.echo  [cancelled]")
    assert cli.show(job_id)["state"] == "cancelled"

    before = time.time()
    retried = cli.ok("jobs", "retry", str(job_id), "--json").json()
    assert retried["id"] == job_id
    assert retried["state"] == "queued"
    # due now, not at the old delay
    assert before - 1 <= datetime.fromisoformat(retried["run_at"]).timestamp() <= time.time() + 1

    cancelled = cli.ok("jobs", "cancel", str(job_id), "--json").json()
    assert cancelled["state"] == "cancelled"

    # A finished job is left as it is, and the command says so with exit code 3 (the
    # API's 409).
    done = cli.enqueue("demo.echo")
    cli.ok("worker", "--burst")
    assert_one_error_line(cli("jobs", "cancel", str(done)), "already completed", code=3)
    assert_one_error_line(cli("jobs", "retry", str(done)), "is completed", code=3)
    assert cli.show(done)["state"] == "completed"


@pytest.mark.parametrize("command", ["show", "cancel", "retry"])
def test_a_missing_job_exits_1(cli: Cli, command: str) -> None:
    cli.ok("migrate")
    result = cli("jobs", command, "999")
    assert_one_error_line(result, "999", code=1)


# -- queues -----------------------------------------------------------------------------
def test_queues_table_json_pause_and_resume(cli: Cli) -> None:
    assert cli.ok("queues").stdout.startswith("no queues yet")
    assert cli.ok("queues", "--json").json() == []
    default_job = cli.enqueue("demo.echo")
    other_job = cli.enqueue("demo.echo", "--queue", "other")
    cli.enqueue("demo.echo", "--queue", "other", "--delay", "3600")

    text = cli.ok("queues").stdout
    table, kinds = text.split("\n\n", 1)
    table_lines = table.splitlines()
    assert table_lines[0].split()[:4] == ["QUEUE", "DUE", "SCHEDULED", "RUNNING/LIMIT"]
    assert [line.split()[:4] for line in table_lines[1:]] == [
        ["default", "1", "0", "0/-"],
        ["other", "1", "1", "0/-"],
    ]
    # No worker is alive: every queued job is of a kind nobody serves, and waits.
    assert kinds.splitlines() == [
        "KINDS SERVED (live workers)",
        "  default: no live worker",
        "  other: no live worker",
        "UNSERVED (queued jobs no live worker runs; they wait)",
        "  default: demo.echo: 1 waiting",
        "  other: demo.echo: 2 waiting",
    ]
    stats = {q["name"]: q for q in cli.ok("queues", "--json").json()}
    assert set(stats) == {"default", "other"}
    assert stats["other"]["counts"]["queued"] == 2
    assert stats["other"]["scheduled"] == 1
    assert stats["other"]["paused"] is False
    assert stats["default"]["running"] == 0
    assert stats["other"]["unserved_kinds"] == {"demo.echo": 2}
    assert stats["other"]["served_kinds"] == {}

    paused = {q["name"]: q for q in cli.ok("queues", "--pause", "other", "--json").json()}
    assert paused["other"]["paused"] is True
    assert paused["default"]["paused"] is False
    assert "other (paused)" in cli.ok("queues").stdout

    # A worker leaves the paused queue alone.
    cli.ok("worker", "--burst", "--queues", "default,other")
    assert cli.show(default_job)["state"] == "completed"
    assert cli.show(other_job)["state"] == "queued"

    resumed = {q["name"]: q for q in cli.ok("queues", "--resume", "other", "--json").json()}
    assert resumed["other"]["paused"] is False
    assert "(paused)" not in cli.ok("queues").stdout
    cli.ok("worker", "--burst", "--queues", "default,other")
    assert cli.show(other_job)["state"] == "completed"


@pytest.mark.parametrize(
    "option",
    [["--pause", "nope"], ["--resume", "nope"], ["--limit", "nope:2"], ["--no-limit", "nope"]],
)
def test_changing_a_queue_that_does_not_exist_exits_1(cli: Cli, option: list[str]) -> None:
    cli.enqueue("demo.echo")
    assert_one_error_line(cli("queues", *option), "no queue named 'nope'", code=1)
    assert [q["name"] for q in cli.ok("queues", "--json").json()] == ["default"]


def test_queues_rejects_a_bad_queue_name(cli: Cli) -> None:
    cli.ok("migrate")
    assert_one_error_line(cli("queues", "--pause", "no spaces"), "no spaces")


# -- worker -----------------------------------------------------------------------------
def test_at_info_a_worker_logs_slow_completions_and_failures_not_every_job(cli: Cli) -> None:
    quick = [cli.enqueue("demo.echo", "--payload", f'{{"n": {n}}}') for n in range(3)]
    slow = cli.enqueue("demo.sleep", "--payload", '{"seconds": 0.3}')
    failing = cli.enqueue("demo.discard")

    result = cli.ok("worker", "--burst", env={"CONVEYOR_SLOW_JOB_SECONDS": "0.2"})

    lines = [orjson.loads(line) for line in result.stderr_lines]
    completed = [e["job_id"] for e in lines if e.get("event") == "job completed"]
    assert completed == [slow]
    assert [e["job_id"] for e in lines if e.get("event") == "job failed"] == [failing]
    assert all(cli.show(job_id)["state"] == "completed" for job_id in [*quick, slow])


def test_worker_burst_runs_the_queued_jobs_and_exits_0(cli: Cli) -> None:
    """At DEBUG every completion is logged (at INFO only slow ones: see below)."""
    ids = [cli.enqueue("demo.echo", "--payload", f'{{"n": {n}}}') for n in range(5)]
    scheduled = cli.enqueue("demo.echo", "--delay", "3600")

    result = cli.ok("worker", "--burst", env={"CONVEYOR_LOG_LEVEL": "DEBUG"})
    assert result.stdout == ""
    assert result.stderr.count('"event":"job completed"') == 5

    for n, job_id in enumerate(ids):
        job = cli.show(job_id)
        assert (job["state"], job["attempt"], job["result"]) == ("completed", 1, {"n": n})
    assert cli.show(scheduled)["state"] == "queued"
    # Nothing left due: a second burst exits at once.
    cli.ok("worker", "--burst")


def test_worker_rejects_a_bad_queue_limit(cli: Cli) -> None:
    assert_one_error_line(cli("worker", "--burst", "--queues", "q:x"), "--queues", "q:x")
    assert not cli.db_path.exists()


# -- bad input: exit 2, one line, nothing written ---------------------------------------
BAD_ENQUEUES = {
    "bad kind name": (["demo nope"], ["'demo nope'", "not valid"]),
    "payload not JSON": (["demo.echo", "--payload", "{not json"], ["--payload", "JSON"]),
    "priority 0": (["demo.echo", "--priority", "0"], ["priority 0"]),
    "priority 11": (["demo.echo", "--priority", "11"], ["priority 11"]),
    "priority abc": (["demo.echo", "--priority", "abc"], ["--priority"]),
    "negative delay": (["demo.echo", "--delay", "-1"], ["delay -1"]),
    "max attempts 0": (["demo.echo", "--max-attempts", "0"], ["max_attempts 0"]),
    "timeout 0": (["demo.echo", "--timeout", "0"], ["timeout 0"]),
    "bad queue name": (["demo.echo", "--queue", "a b"], ["'a b'"]),
    "payload fails the model": (
        ["demo.sleep", "--payload", '{"seconds": "x"}'],
        ["demo.sleep", "seconds"],
    ),
    "import missing": (["demo.echo", "--import", "no_such_module_xyz"], ["no_such_module_xyz"]),
    "import a built-in that is not there": (
        ["demo.echo", "--import", "conveyor.kinds.demo"],
        ["'conveyor.kinds.demo'", "conveyor.workloads.demo"],
    ),
    "unknown option": (["demo.echo", "--colour", "red"], ["--colour"]),
}


@pytest.mark.parametrize("case", list(BAD_ENQUEUES))
def test_bad_enqueue_exits_2_and_creates_no_database(cli: Cli, case: str) -> None:
    args, fragments = BAD_ENQUEUES[case]
    result = cli("enqueue", *args)
    assert_one_error_line(result, *fragments)
    assert not cli.db_path.exists()


@pytest.mark.parametrize("case", list(BAD_ENQUEUES))
def test_bad_enqueue_exits_2_and_adds_no_job(cli_with_one_job: Cli, case: str) -> None:
    cli = cli_with_one_job
    args, fragments = BAD_ENQUEUES[case]
    result = cli("enqueue", *args)
    assert_one_error_line(result, *fragments)
    assert cli.job_count() == 1


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("sqlite:///{tmp}/missing/folder/c.db", ["missing/folder", "does not exist"]),
        ("sqlite:///{tmp}", ["cannot", "open"]),  # a folder, not a file
        ("mysql://localhost/conveyor", ["unsupported scheme 'mysql'"]),
        ("sqlite:///:memory:", ["names no file"]),
    ],
    ids=["folder-missing", "a-folder", "unsupported-scheme", "memory"],
)
def test_a_database_that_cannot_be_opened_exits_2(
    cli: Cli, tmp_path: Path, url: str, fragments: list[str]
) -> None:
    url = url.format(tmp=tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("enqueue", "demo.echo", env={"CONVEYOR_DATABASE_URL": url})
    assert_one_error_line(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "missing").exists()


def test_a_bad_setting_exits_2_naming_the_variable(cli: Cli) -> None:
    result = cli("enqueue", "demo.echo", env={"CONVEYOR_CONCURRENCY": "0"})
    assert_one_error_line(result, "CONVEYOR_CONCURRENCY")
    result = cli("worker", "--burst", env={"CONVEYOR_HEARTBEAT_INTERVAL": "60"})
    assert_one_error_line(result, "CONVEYOR_HEARTBEAT_INTERVAL", "CONVEYOR_LEASE_SECONDS")
    assert not cli.db_path.exists()


# -- help and usage ---------------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["--help"], ["jobs"], ["jobs", "--help"]])
def test_help_goes_to_stdout_and_exits_0(cli: Cli, args: list[str]) -> None:
    result = cli.ok(*args)
    assert result.stdout.startswith("Usage: conveyor")
    assert result.stderr == ""
    assert not cli.db_path.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["nosuchcommand"], "nosuchcommand"),
        (["jobs", "show", "abc"], "job_id"),
        (["jobs", "list", "--limit", "0"], "--limit"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli: Cli, args: list[str], fragment: str) -> None:
    assert_one_error_line(cli(*args), fragment)
    assert not cli.db_path.exists()


# -- output is written whole ------------------------------------------------------------------
def _slow_reader_env(cli: Cli) -> dict[str, str]:
    # Unbuffered stdout through uvloop's loop is where the output was cut at 64 KiB.
    return {**cli.env, "PYTHONUNBUFFERED": "1"}


def test_large_json_output_reaches_a_slow_reader_whole(cli: Cli) -> None:
    pytest.importorskip("uvloop")
    text = "x" * 1000
    for _ in range(3):
        cli.enqueue("demo.echo", "--payload", orjson.dumps({"text": text * 100}).decode())
    proc = subprocess.Popen(
        [*conveyor_command(), "jobs", "list", "--json", "--limit", "1000"],
        env=_slow_reader_env(cli),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # A reader that is not there yet: the pipe's 64 KiB fill up and the writer must wait.
    time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    assert len(stdout) > 3 * 100_000
    jobs = orjson.loads(stdout)
    assert [j["payload"] for j in jobs] == [{"text": text * 100}] * 3


def test_a_reader_that_went_away_fails_the_command_quietly(cli: Cli) -> None:
    for _ in range(2):
        cli.enqueue("demo.echo", "--payload", orjson.dumps({"text": "x" * 100_000}).decode())
    proc = subprocess.Popen(
        [*conveyor_command(), "jobs", "list", "--json"],
        env=_slow_reader_env(cli),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # `| head` that already exited
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert b"Traceback" not in stderr
    assert b"Exception ignored" not in stderr


# -- --database-url ---------------------------------------------------------------------
ELSEWHERE = {"CONVEYOR_DATABASE_URL": "sqlite:///{tmp}/no/such/folder/c.db"}
"""A database URL in the environment that cannot be opened: --database-url must win."""


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["enqueue", "demo.echo"],
        ["queues"],
        ["jobs", "list"],
        ["jobs", "show", "1"],
        ["jobs", "cancel", "1"],
        ["jobs", "retry", "1"],
        ["worker", "--burst"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_command_takes_database_url_over_the_environment(
    cli: Cli, tmp_path: Path, args: list[str]
) -> None:
    job_id = cli.enqueue("demo.echo")  # in the database --database-url names
    env = {k: v.format(tmp=tmp_path) for k, v in ELSEWHERE.items()}
    if args[:2] == ["jobs", "retry"]:
        cli.ok("jobs", "cancel", str(job_id))  # only a cancelled or failed job is retried

    result = cli.ok(*args, "--database-url", cli.url, env=env)

    assert not (tmp_path / "no").exists()
    if args[0] == "enqueue":
        assert cli.job_count() == 2
    if args[:2] == ["jobs", "show"]:
        assert f"job {job_id}" in result.stdout


@pytest.mark.parametrize("command", ["serve", "api", "worker"])
def test_long_running_commands_document_database_url(cli: Cli, command: str) -> None:
    assert "--database-url" in cli.ok(command, "--help").stdout


def test_a_worker_logs_its_database_without_the_password(cli: Cli) -> None:
    result = cli.ok("worker", "--burst")
    [line] = [orjson.loads(x) for x in result.stderr_lines if '"database"' in x]
    assert (line["event"], line["database"], line["level"]) == ("database", cli.url, "info")

    secret = "postgresql://conveyor:s3cret@127.0.0.1:1/nowhere"
    result = cli("worker", "--burst", "--database-url", secret)
    assert result.code == 2
    assert "s3cret" not in result.stderr
    assert "postgresql://conveyor:***@127.0.0.1:1/nowhere" in result.stderr


def test_a_worker_on_the_default_file_warns_that_no_url_was_given(cli: Cli, tmp_path: Path) -> None:
    env = {k: v for k, v in cli.env.items() if k != "CONVEYOR_DATABASE_URL"}
    cli.env = env
    result = cli.ok("worker", "--burst", cwd=tmp_path)

    [line] = [orjson.loads(x) for x in result.stderr_lines if '"database"' in x]
    assert line["level"] == "warning"
    assert line["database"] == "sqlite:///./conveyor.db"
    assert "no database URL given" in line["event"]
    assert (tmp_path / "conveyor.db").exists()


def test_times_are_iso_8601_with_the_utc_offset_in_text_and_json(cli: Cli) -> None:
    # Changed by issue 10: the text said "2026-12-02 06:44:07.123Z", the JSON Unix seconds.
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00"
    job_id = cli.enqueue("demo.echo")
    cli.ok("worker", "--burst")
    shown = cli.ok("jobs", "show", str(job_id)).stdout
    for label in ("created", "run at", "started", "finished"):
        assert re.search(rf"^  {label} +{iso}$", shown, re.MULTILINE), (label, shown)
    listed = cli.ok("jobs", "list").stdout.splitlines()
    assert re.search(rf"  {iso}$", listed[1]), listed
    job = cli.show(job_id)
    for key in ("created_at", "run_at", "started_at", "finished_at"):
        assert re.fullmatch(iso, job[key]), (key, job[key])
