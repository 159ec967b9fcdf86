"""Named SQL queries kept in ``.sql`` files, one file per store, parsed once.

A query starts at a line ``-- name: NAME`` and runs to the next such line (or to a
``-- part:``). Keeping the SQL of each dialect in its own file makes the differences
between stores easy to review.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^--\s*(name|part):\s*(\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^--\s*include:\s*(\w+)\s*$", re.MULTILINE)


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Parse ``filename`` in ``package`` into ``{name: sql}``.

    A ``-- part: NAME`` section is not a query: a line ``-- include: NAME`` in a query
    stands for it, so that statements sharing a piece of SQL hold one copy of it."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    pieces = _HEADER.split(text)
    sections: dict[str, dict[str, str]] = {"name": {}, "part": {}}
    for kind, name, body in zip(pieces[1::3], pieces[2::3], pieces[3::3], strict=True):
        if name in sections[kind]:
            raise ValueError(f"{package}/{filename}: {kind} {name!r} is defined twice")
        sections[kind][name] = body.strip()
    parts = sections["part"]

    def include(match: re.Match[str]) -> str:
        if match.group(1) not in parts:
            raise ValueError(f"{package}/{filename}: no part {match.group(1)!r} to include")
        return parts[match.group(1)]

    return {name: _INCLUDE.sub(include, body) for name, body in sections["name"].items()}


def load_migrations(package: str) -> list[tuple[int, str]]:
    """The ``NNNN_title.sql`` files of ``package``'s ``migrations`` folder, in order."""
    folder = resources.files(package).joinpath("migrations")
    found: list[tuple[int, str]] = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"{package}: migrations must be numbered 1..n without gaps: {versions}")
    return found
