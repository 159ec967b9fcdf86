"""Named SQL queries kept in ``.sql`` files, one file per store, parsed once.

A query starts at a line ``-- name: NAME`` and runs to the next such line. Keeping the SQL
of each dialect in its own file makes the differences between stores easy to review.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Parse ``filename`` in ``package`` into ``{name: sql}``."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{package}/{filename}: query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


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
