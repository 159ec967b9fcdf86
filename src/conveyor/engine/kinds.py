"""Job kinds: a name, a handler and the defaults its jobs start with.

A module registers kinds with :func:`job`; workers load such modules with ``--import`` or
``CONVEYOR_IMPORTS``::

    @conveyor.job("reports.build", queue="reports", priority=2, max_attempts=5, timeout=60)
    async def build(ctx: conveyor.JobContext, payload: BuildReport) -> dict[str, str]:
        ...

If the payload parameter is annotated with a pydantic model, payloads are validated
against it at enqueue, unknown fields refused (bad input never reaches the queue), and the
handler receives the model; otherwise it receives the JSON value as stored. A job enqueued
by name from a process where the kind is not registered is validated when a worker runs it
instead: a payload the model rejects then fails the job at once, naming the fields.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar, get_type_hints

from pydantic import BaseModel, ValidationError

from conveyor.engine.errors import InvalidJob, UnknownKind
from conveyor.engine.limits import (
    KIND_NAME,
    check_delay,
    check_json,
    check_max_attempts,
    check_priority,
    check_queue_name,
    check_run_at,
    check_tenant,
    check_timeout,
    check_unique_key,
)
from conveyor.engine.limits import PRIORITIES as PRIORITIES
from conveyor.engine.limits import QUEUE_NAME as QUEUE_NAME
from conveyor.engine.retry import Backoff
from conveyor.store.records import DEFAULT_TENANT, JSON, NewJob

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 3
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT = 300.0
"""The defaults of :func:`job`, and of an enqueue by name of a kind that is not
registered in the enqueuing process."""


class KindDefault:
    """The type of :data:`KIND_DEFAULT`."""

    def __repr__(self) -> str:
        return "KIND_DEFAULT"


KIND_DEFAULT: Final = KindDefault()
"""Marks an option left to the kind's default (``timeout=None`` means no timeout)."""


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What an enqueue needs of a kind: its name, the options its jobs start with, and
    how its payload is checked.

    A kind known only by name (not registered in the enqueuing process) is a bare
    ``KindSpec``: the system defaults, and a payload checked only against the limits of
    :mod:`conveyor.engine.limits`. A registered :class:`Kind` is one with a handler.
    """

    name: str
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = DEFAULT_TIMEOUT

    def validate_payload(self, payload: JSON) -> JSON:
        """The payload as it will be stored; raises :class:`InvalidJob` naming the place
        that breaks a limit of :mod:`conveyor.engine.limits`."""
        return check_json(payload, "payload")

    def new_job(
        self,
        payload: JSON = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: datetime | float | None = None,
        max_attempts: int | None = None,
        timeout: float | KindDefault | None = KIND_DEFAULT,
        unique_key: str | None = None,
        tenant_id: str = DEFAULT_TENANT,
        meta: dict[str, JSON] | None = None,
    ) -> NewJob:
        """A job of this kind, its payload validated and the options left out taken
        from this kind; raises :class:`InvalidJob` naming the option at fault."""
        if delay is not None and run_at is not None:
            raise InvalidJob("give either delay or run_at, not both")
        payload = self.validate_payload({} if payload is None else payload)
        # Positional, in NewJob's field order: cheaper than keywords, and a bulk enqueue
        # builds every job here (docs/benchmarks.md).
        return NewJob(
            self.name,
            check_queue_name(queue) if queue is not None else self.queue,
            payload,
            check_priority(priority) if priority is not None else self.priority,
            check_max_attempts(max_attempts) if max_attempts is not None else self.max_attempts,
            self.timeout if isinstance(timeout, KindDefault) else check_timeout(timeout),
            _epoch(run_at),
            check_delay(delay) if delay is not None else 0.0,
            check_unique_key(unique_key) if unique_key is not None else None,
            tenant_id if tenant_id is DEFAULT_TENANT else check_tenant(tenant_id),
            check_json(meta, "meta") if meta else {},
        )


@functools.lru_cache(maxsize=1024)
def unregistered(name: str) -> KindSpec:
    """The spec of a kind known only by its (checked) name: the system defaults. Cached,
    as a bulk enqueue by name asks for it once a job."""
    return KindSpec(name)


def _epoch(run_at: datetime | float | None) -> float | None:
    if run_at is None:
        return None
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None:
            raise InvalidJob(
                f"run_at {run_at.isoformat()} has no time zone; give an aware datetime"
            )
        try:
            return check_run_at(run_at.timestamp())
        except (OverflowError, ValueError):
            raise InvalidJob(f"run_at {run_at.isoformat()} is out of range") from None
    return check_run_at(run_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Kind(KindSpec):
    """A registered job kind: a :class:`KindSpec` with the handler that runs its jobs."""

    handler: Callable[..., Any]
    backoff: Backoff
    non_retryable: tuple[type[BaseException], ...]
    is_async: bool
    input_model: type[BaseModel] | None
    payload_model: type[BaseModel] | None = field(default=None, compare=False)
    """What payloads are validated against: ``input_model`` with unknown fields forbidden
    (derived at construction when not given)."""

    def __post_init__(self) -> None:
        if self.payload_model is None and self.input_model is not None:
            object.__setattr__(self, "payload_model", strict_model(self.input_model))

    def validate_payload(self, payload: JSON) -> JSON:
        """The payload as it will be stored; raises :class:`InvalidJob` naming each field
        the kind's input model rejects (unknown fields included) or that breaks a limit of
        :mod:`conveyor.engine.limits`."""
        check_json(payload, "payload")
        if self.payload_model is None:
            return payload
        try:
            stored = self.payload_model.model_validate(payload).model_dump(mode="json")
        except ValidationError as exc:
            raise InvalidJob(
                f"payload for kind {self.name!r} is not valid: {_describe(exc)}"
            ) from exc
        # The model may turn accepted input into values JSON cannot hold ("nan" -> NaN).
        return check_json(stored, "payload")

    def handler_input(self, payload: JSON) -> Any:
        """What the handler receives for a stored payload; raises :class:`InvalidJob`
        naming each field the kind's input model rejects (a job enqueued by name where
        the kind is not registered was not validated before)."""
        if self.input_model is None or self.payload_model is None:
            return payload
        try:
            if self.payload_model is not self.input_model:
                # Unknown fields refused as at enqueue, while the handler gets the model it
                # declared (the strict copy's instances would not compare equal to it).
                self.payload_model.model_validate(payload)
            return self.input_model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidJob(
                f"payload for kind {self.name!r} is not valid: {_describe(exc)}"
            ) from exc


def strict_model(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with unknown fields forbidden, under the same name (so its OpenAPI schema
    is the model's, with ``additionalProperties: false``). Its instances are instances of
    ``model``. A model that already forbids them is returned as it is; nested models keep
    their own setting."""
    if model.model_config.get("extra") == "forbid":
        return model
    strict: type[BaseModel] = type(
        model.__name__,
        (model,),
        {
            "model_config": {**model.model_config, "extra": "forbid"},
            "__module__": model.__module__,
            "__qualname__": model.__qualname__,
            "__doc__": model.__doc__,
        },
    )
    return strict


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _input_model(handler: Callable[..., Any]) -> type[BaseModel] | None:
    params = list(inspect.signature(handler).parameters.values())
    if len(params) != 2:
        raise TypeError(
            f"job handler {handler.__qualname__} must take (ctx, payload); it takes "
            f"{len(params)} parameter(s)"
        )
    try:
        hints = get_type_hints(handler)
    except (NameError, TypeError):
        return None
    hint = hints.get(params[1].name)
    if inspect.isclass(hint) and issubclass(hint, BaseModel):
        return hint
    return None


class Registry:
    """Job kinds by name. Most programs use the module-level default through :func:`job`."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}

    def register(self, kind: Kind) -> Kind:
        existing = self._kinds.get(kind.name)
        if existing is not None and existing.handler is not kind.handler:
            raise ValueError(
                f"job kind {kind.name!r} is registered twice: by "
                f"{_where(existing.handler)} and by {_where(kind.handler)}"
            )
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(name, self._kinds) from None

    def find(self, name: str) -> Kind | None:
        """The kind called ``name``, or None."""
        return self._kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def queues(self) -> list[str]:
        return sorted({kind.queue for kind in self._kinds.values()})

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[Kind]:
        return iter(self._kinds.values())

    def __len__(self) -> int:
        return len(self._kinds)


def _where(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


registry = Registry()
"""The default registry that :func:`job` fills."""

default_registry = registry  # reachable inside functions whose `registry` argument shadows it


def job(
    name: str,
    *,
    queue: str = DEFAULT_QUEUE,
    priority: int = DEFAULT_PRIORITY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    non_retryable: Iterable[type[BaseException]] = (),
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as the handler of job kind ``name``.

    The function, async or sync, takes ``(ctx, payload)`` and returns a JSON-serialisable
    result (no NUL characters, NaN or Infinity; at most 16 MiB as JSON), else the attempt
    fails without retry. When ``payload`` is annotated with a pydantic model, payloads are
    validated against it with unknown fields forbidden (whatever the model's own ``extra``
    setting, at its top level), so a misspelt field is refused at enqueue rather than
    dropped; payloads also keep to :mod:`conveyor.engine.limits` (depth, size, no NaN).

    Sync functions run in threads so they never block the event loop. A thread cannot be
    interrupted: when a sync handler's attempt is stopped (its timeout, a cancel, a lost
    lease), ``ctx.cancelled`` turns true, and the job keeps its slot and lease until the
    function returns, so that no other run of it starts meanwhile; only then is the
    attempt recorded. Sync handlers that run long should poll ``ctx.cancelled`` and
    return. One still running when the worker stops is not
    handed back: its lease expires and it is rescued (its attempt counts).

    Args:
        queue: the queue its jobs go to unless the enqueue says otherwise.
        priority: 1 (first) to 10; jobs of a queue run strictly by priority, FIFO within one.
        max_attempts: attempts before the job fails for good (1 = no retry).
        timeout: seconds an attempt may run, from its handler's start, before it is
            cancelled and counted as failed; None for no limit.
        backoff: delay between attempts; default ``Backoff()`` (5 s base, doubling, 1 h cap,
            full jitter).
        non_retryable: exception types that fail the job at once, like
            :class:`conveyor.Discard`.
    """
    target = registry if registry is not None else default_registry

    def decorate(fn: F) -> F:
        if not KIND_NAME.fullmatch(name):
            raise ValueError(
                f"job kind name {name!r} is not valid: use 1-200 letters, digits or _.-:/"
            )
        target.register(
            Kind(
                name=name,
                handler=fn,
                queue=check_queue_name(queue),
                priority=check_priority(priority),
                max_attempts=check_max_attempts(max_attempts),
                timeout=check_timeout(timeout),
                backoff=backoff or Backoff(),
                non_retryable=tuple(non_retryable),
                is_async=inspect.iscoroutinefunction(fn),
                input_model=_input_model(fn),
            )
        )
        return fn

    return decorate


def import_modules(names: Iterable[str]) -> None:
    """Import the modules that define job kinds; the error names the module at fault."""
    for module in names:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ImportError(
                f"cannot import job module {module!r} (from --import or CONVEYOR_IMPORTS): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
