"""The README stays true: its configuration table is in step with
:class:`conveyor.config.Settings` (every setting listed under its ``CONVEYOR_*`` variable,
no row naming one that does not exist), and its five-minute tour runs as written, in real
processes, beside what `make run` starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from conveyor.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
ENV_NAME = re.compile(r"\bCONVEYOR_[A-Z0-9_]+\b")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def setting_variables() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def configuration_table_variables() -> set[str]:
    """The ``CONVEYOR_*`` names in the table rows of the README's configuration section
    (from a heading that mentions configuration or settings to the next heading of the
    same or a higher level)."""
    assert README.is_file(), f"{README} is missing: it must document every setting"
    found: set[str] = set()
    section_level: int | None = None
    seen_section = False
    for line in README.read_text(encoding="utf-8").splitlines():
        heading = HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            if section_level is not None and level <= section_level:
                section_level = None
            if re.search(r"configur|settings", heading.group(2), re.IGNORECASE):
                section_level = level
                seen_section = True
            continue
        if section_level is not None and line.lstrip().startswith("|"):
            found.update(ENV_NAME.findall(line))
    assert seen_section, f"{README} has no configuration section (a heading 'Configuration')"
    return found


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    missing = sorted(setting_variables() - configuration_table_variables())
    assert not missing, f"settings missing from the README configuration table: {missing}"


def test_the_readme_configuration_table_names_no_unknown_variable() -> None:
    unknown = sorted(configuration_table_variables() - setting_variables())
    assert not unknown, f"README configuration table names variables Settings lacks: {unknown}"


# -- the five-minute tour, run as written -----------------------------------------------------
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXIT_COMMENT = re.compile(r"exit code (\d+)")


@dataclass(frozen=True)
class Tour:
    """The tour's code blocks, in the order the README gives them."""

    env_block: str
    tour_py: str
    worker_block: str
    enqueue_block: str
    python_snippet: str
    watch_block: str

    @classmethod
    def from_readme(cls) -> Tour:
        text = README.read_text(encoding="utf-8")
        start = text.index("## A five-minute tour")
        section = text[start : text.index("\n## ", start + 1)]
        blocks = [(lang, body) for lang, body in FENCE.findall(section)]
        assert [lang for lang, _ in blocks] == ["sh", "python", "sh", "sh", "python", "sh"], (
            "the tour's code blocks changed: update this test with them"
        )
        tour = cls(*(body for _, body in blocks))
        assert "Save this as `tour.py`" in section
        assert "@conveyor.job" in tour.tour_py
        assert "asyncio.run(main())" in tour.python_snippet
        return tour

    def environment(self, cwd: Path) -> dict[str, str]:
        """What the env block leaves in a shell: the activated virtualenv's PATH (this
        test's interpreter) and the exported variables."""
        lines = self.env_block.strip().splitlines()
        assert lines[0] == ". .venv/bin/activate", lines
        base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
        base["CONVEYOR_LOG_FORMAT"] = "json"
        dumped = subprocess.run(
            ["bash", "-c", "\n".join(lines[1:]) + "\nexec env -0"],
            cwd=cwd,
            env=base,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        env = dict(item.split("=", 1) for item in dumped.decode().split("\0") if "=" in item)
        assert env["CONVEYOR_DATABASE_URL"] == "sqlite:///./tour.db"
        return env


def commands(block: str) -> list[tuple[str, int]]:
    """Each command line of a shell block with the exit code its comment promises (0 if
    it says none)."""
    found = []
    for line in block.strip().splitlines():
        comment = EXIT_COMMENT.search(line.partition("  #")[2])
        found.append((line, int(comment.group(1)) if comment else 0))
    return found


class TourShell:
    """Runs the tour's commands in one directory with the tour's environment."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def run(self, line: str, expect: int = 0) -> str:
        done = subprocess.run(
            ["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, timeout=60
        )
        assert done.returncode == expect, (line, done.returncode, done.stdout, done.stderr)
        return done.stdout.decode()

    def start(self, line: str, log: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.cwd / log).open("wb") as out:
            popen = subprocess.Popen(
                ["bash", "-c", f"exec {line}"],
                cwd=self.cwd,
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(popen)
        return popen

    def job(self, job_id: int) -> dict[str, Any]:
        shown: dict[str, Any] = orjson.loads(self.run(f"conveyor jobs show {job_id} --json"))
        return shown

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
            time.sleep(0.1)  # other processes' progress: there is nothing to await

    def stop_all(self) -> None:
        for popen in self.started:
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGTERM)
        for popen in self.started:
            try:
                popen.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def tour_shell(tmp_path: Path) -> Iterator[tuple[Tour, TourShell]]:
    tour = Tour.from_readme()
    (tmp_path / "tour.py").write_text(tour.tour_py, encoding="utf-8")
    shell = TourShell(tmp_path, tour.environment(tmp_path))
    try:
        yield tour, shell
    finally:
        shell.stop_all()


def start_make_run(shell: TourShell, **env: str) -> subprocess.Popen[bytes]:
    """What `make run` starts: `conveyor serve` with the demo kinds on ./conveyor.db."""
    defaults = {
        "CONVEYOR_IMPORTS": "conveyor.workloads.demo",
        "CONVEYOR_DATABASE_URL": "sqlite:///./conveyor.db",
        "CONVEYOR_PORT": str(free_port()),
        "PYTHONPATH": "",
    }
    return shell.start("conveyor serve", "serve.log", **{**defaults, **env})


@pytest.mark.timeout(240)
def test_the_tour_runs_as_written_beside_make_run(tour_shell: tuple[Tour, TourShell]) -> None:
    tour, shell = tour_shell
    serve = start_make_run(shell)
    worker = shell.start(tour.worker_block.strip(), "worker.log")

    enqueued = []
    for line, code in commands(tour.enqueue_block):
        out = shell.run(line, code)
        if code == 0:
            enqueued.append(int(out))
    assert enqueued == [1, 2, 3]  # the refused enqueue stored nothing
    assert shell.job(2)["state"] == "queued"  # scheduled 10 s ahead

    (shell.cwd / "many.py").write_text(tour.python_snippet, encoding="utf-8")
    assert shell.run("python many.py") == "enqueued job 4\n"
    last = shell.job(1004)  # the thousand of enqueue_many, after job 4
    assert (last["kind"], last["payload"]["url"]) == (
        "media.thumbnail",
        "https://example.com/999.png",
    )
    shell.run("conveyor jobs show 1005", expect=1)

    # media.report without a month is discarded at once; the first thumbnail starts.
    shell.wait_for("job 3 to fail", lambda: shell.job(3)["state"] == "failed")
    report = shell.job(3)
    assert (report["attempt"], report["errors"][0]["type"]) == (1, "Discard")
    shell.wait_for("job 1 to start", lambda: shell.job(1)["attempt"] >= 1)

    watch = commands(tour.watch_block)
    outputs = {line: shell.run(line, code) for line, code in watch}
    queues_table = outputs[watch[0][0]]
    assert queues_table.splitlines()[0].split()[:2] == ["QUEUE", "DUE"]
    assert "media" in queues_table
    assert "job 1  media.thumbnail" in next(o for line, o in outputs.items() if "show 1" in line)
    assert shell.job(3)["state"] in ("queued", "running", "failed")  # retried: runs again
    assert shell.job(3)["attempt"] >= 1
    shell.wait_for("job 2 to be cancelled", lambda: shell.job(2)["state"] == "cancelled")
    media = [q for q in orjson.loads(shell.run("conveyor queues --json")) if q["name"] == "media"]
    assert media[0]["paused"] is False
    assert "mdeia" not in shell.run("conveyor queues")

    # Job 1 ran in the tour's worker: progress reported, never UnknownKind.
    shell.wait_for("job 1 to finish an attempt", lambda: bool(_attempt_over(shell.job(1))))
    first = shell.job(1)
    assert first["progress_message"] == "tile 4 of 4"
    assert all(e["type"] == "RuntimeError" for e in first["errors"])
    assert worker.poll() is None
    assert serve.poll() is None
    shell.stop_all()
    assert worker.returncode == 0
    assert serve.returncode == 0


def _attempt_over(job: dict[str, Any]) -> bool:
    return job["state"] == "completed" or bool(job["errors"])


@pytest.mark.timeout(120)
def test_the_tour_shares_its_database_with_conveyor_serve(
    tour_shell: tuple[Tour, TourShell],
) -> None:
    tour, shell = tour_shell
    start_make_run(shell, CONVEYOR_DATABASE_URL="sqlite:///./tour.db")
    shell.start(tour.worker_block.strip(), "worker.log")
    ids = [int(shell.run("conveyor enqueue media.report --payload '{}'")) for _ in range(8)]

    def all_failed() -> bool:
        return all(shell.job(i)["state"] == "failed" for i in ids)

    shell.wait_for("the reports to fail", all_failed)
    # Each failed once, by its Discard in the tour's worker; the other worker took none.
    for job_id in ids:
        assert [e["type"] for e in shell.job(job_id)["errors"]] == ["Discard"], job_id
