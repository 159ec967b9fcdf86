"""Text the accounts verbs refuse alike on every store: a NUL character (``\\x00``).

PostgreSQL's ``text`` cannot hold one (the server answers "invalid byte sequence"), while
SQLite would store it; an email or name that only one store can keep would make the
stores disagree on who exists. :func:`refuse_nul_text` wraps each
:class:`~conveyor.store.accounts.AccountStore` verb of a store's accounts facade so that
any text argument holding NUL (in a record such as ``NewApiKey`` too) raises
:class:`~conveyor.store.base.DataRejected` naming the verb and the argument, before any
statement runs, on both stores.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from conveyor.store.accounts import AccountStore
from conveyor.store.base import DataRejected

C = TypeVar("C", bound=type)


def _verbs(protocol: type) -> tuple[str, ...]:
    """Every verb of ``protocol``."""
    return tuple(
        name
        for name, member in vars(protocol).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    )


def _with_nul(name: str, value: object) -> Iterator[str]:
    """The names (``new.name``, ``scopes[1]``) of the text in ``value`` holding NUL."""
    if isinstance(value, str):
        if "\x00" in value:
            yield name
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _with_nul(f"{name}.{field.name}", getattr(value, field.name))
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _with_nul(f"{name}[{i}]", item)


def _checked(verb: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    # The arguments named by position rather than by Signature.bind, and plain text checked
    # in place: every call with an API key runs a verb, and bind was most of what this
    # check cost it (docs/benchmarks.md). A call that does not fit the signature still
    # fails, in the method. The first parameter is the store itself.
    names = tuple(inspect.signature(method).parameters)[1:]

    @functools.wraps(method)
    async def checked(store: Any, *args: Any, **kwargs: Any) -> Any:
        for name, value in (*zip(names, args, strict=False), *kwargs.items()):
            if isinstance(value, str) and "\x00" not in value:
                continue
            for where in _with_nul(name, value):
                raise DataRejected(
                    f"{verb}: {where} holds a NUL character (\\x00), which no stored text "
                    "may hold; remove it"
                )
        return await method(store, *args, **kwargs)

    return checked


def refuse_nul_text(cls: C) -> C:
    """Class decorator of a store's accounts facade: every AccountStore verb it has
    refuses text holding NUL with DataRejected."""
    return refuse_nul_text_of(AccountStore)(cls)


def refuse_nul_text_of(protocol: type) -> Callable[[C], C]:
    """The class decorator that makes every verb of ``protocol`` a class has refuse text
    holding NUL with DataRejected (the webhooks' verbs use it too)."""
    verbs = _verbs(protocol)

    def decorate(cls: C) -> C:
        for verb in verbs:
            setattr(cls, verb, _checked(verb, getattr(cls, verb)))
        return cls

    return decorate
