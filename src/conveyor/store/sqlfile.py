"""Named SQL statements kept in ``.sql`` files, each store's in its own, parsed once.

A statement starts at a line ``-- name: NAME`` and runs to the next such line (or to a
``-- part:``). Keeping the SQL of each dialect in its own files makes the differences
between stores easy to review.

Parameters are written by name (``:job_id``) in both dialects. The loader turns them into
the driver's numbered placeholders once, at load time (``$1`` for asyncpg, ``?1`` for
sqlite3; both let one number appear several times), and remembers the order, so a call
binds by name and no one counts to ``$21``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

_HEADER = re.compile(r"^--\s*(name|part):\s*(\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^--\s*include:\s*(\w+)\s*$", re.MULTILINE)

# What may contain a colon without being a parameter comes first: quoted strings and
# identifiers, comments, PostgreSQL dollar-quoted bodies and ``::`` casts.
_TOKEN = re.compile(
    r"""
      '(?:[^']|'')*'
    | "(?:[^"]|"")*"
    | --[^\n]*
    | /\*.*?\*/
    | \$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$
    | ::
    | :(?P<param>[A-Za-z_]\w*)
    | (?P<positional>\$\d+|\?\d*)
    """,
    re.VERBOSE | re.DOTALL,
)

Placeholder = Literal["$", "?"]
"""The driver's numbered placeholder: ``$`` (asyncpg: ``$1``) or ``?`` (sqlite3: ``?1``)."""


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement in the driver's placeholder style, with its parameter names."""

    name: str
    sql: str
    params: tuple[str, ...]
    """Parameter names in placeholder order: ``params[0]`` is ``$1`` / ``?1``."""

    def args(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional arguments for ``values`` (a mapping with every parameter)."""
        try:
            return tuple([values[name] for name in self.params])
        except KeyError as exc:
            raise TypeError(
                f"statement {self.name!r} needs parameter {exc.args[0]!r}; "
                f"it takes {', '.join(self.params) or 'none'}"
            ) from None


def compile_sql(name: str, sql: str, placeholder: Placeholder) -> Statement:
    """``sql`` with its ``:name`` parameters numbered in ``placeholder`` style.

    A statement written with positional placeholders (``$1``, ``?``) is refused: mixing
    the two styles is how arguments end up bound to the wrong column. (In PostgreSQL a
    ``?`` is the jsonb key-exists operator, and is left alone.)"""
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        positional = match.group("positional")
        if positional and not (placeholder == "$" and positional.startswith("?")):
            raise ValueError(
                f"statement {name!r}: positional placeholder {match.group('positional')!r}; "
                "write parameters by name (:name)"
            )
        param = match.group("param")
        if param is None:
            return match.group(0)
        index = order.setdefault(param, len(order) + 1)
        return f"{placeholder}{index}"

    return Statement(name, _TOKEN.sub(number, sql), tuple(order))


def load_statements(
    package: str, placeholder: Placeholder, filename: str = "queries.sql"
) -> dict[str, Statement]:
    """Parse ``filename`` in ``package`` into ``{name: Statement}``.

    A ``-- part: NAME`` section is not a statement: a line ``-- include: NAME`` in one
    (or in another part) stands for it, so that statements sharing a piece of SQL hold
    one copy of it."""
    return {
        name: compile_sql(name, sql, placeholder)
        for name, sql in _parse(package, filename)[0].items()
    }


def load_parts(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """The raw ``-- part:`` sections of a ``.sql`` file, parameters still by name: for
    callers that assemble a statement from pieces (:mod:`conveyor.store.filters`)."""
    return _parse(package, filename)[1]


def _parse(package: str, filename: str) -> tuple[dict[str, str], dict[str, str]]:
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    pieces = _HEADER.split(text)
    sections: dict[str, dict[str, str]] = {"name": {}, "part": {}}
    for kind, name, body in zip(pieces[1::3], pieces[2::3], pieces[3::3], strict=True):
        if name in sections[kind]:
            raise ValueError(f"{package}/{filename}: {kind} {name!r} is defined twice")
        sections[kind][name] = body.strip()
    raw = sections["part"]
    parts: dict[str, str] = {}

    def expand(name: str, seen: tuple[str, ...]) -> str:
        if name in seen:
            raise ValueError(f"{package}/{filename}: part {name!r} includes itself")
        if name not in parts:
            parts[name] = _INCLUDE.sub(lambda m: include(m, (*seen, name)), raw[name])
        return parts[name]

    def include(match: re.Match[str], seen: tuple[str, ...] = ()) -> str:
        if match.group(1) not in raw:
            raise ValueError(f"{package}/{filename}: no part {match.group(1)!r} to include")
        return expand(match.group(1), seen)

    for name in raw:
        expand(name, ())
    names = {name: _INCLUDE.sub(include, body) for name, body in sections["name"].items()}
    return names, parts


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
