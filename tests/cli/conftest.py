"""Fixtures of the CLI suite: the real ``conveyor`` command run in a subprocess.

Every test gets its own database file under ``tmp_path`` and the demo kinds; the command
sees only the environment given here (no ``CONVEYOR_*`` variable leaks in from the shell
that runs the tests).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import Cli, Launch, launching


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture(scope="session")
def one_job_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file holding one queued ``demo.echo`` job, made once by the CLI."""
    seed = Cli(tmp_path_factory.mktemp("seed"))
    seed.enqueue("demo.echo")
    return seed.db_path


@pytest.fixture
def cli_with_one_job(cli: Cli, one_job_db: Path) -> Cli:
    """``cli`` whose database already holds one queued job (a copy of ``one_job_db``)."""
    shutil.copyfile(one_job_db, cli.db_path)
    assert cli.job_count() == 1
    return cli


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """``launch("serve", **env)``: start ``conveyor serve`` (or ``api``) on a free port with
    JSON logs to a file; every process still alive is killed when the test ends."""
    with launching(tmp_path) as start:
        yield start
