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

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from pydantic import BaseModel, ValidationError

from conveyor.engine.errors import InvalidJob, UnknownKind
from conveyor.engine.limits import (
    KIND_NAME,
    check_json,
    check_max_attempts,
    check_priority,
    check_queue_name,
    check_timeout,
)
from conveyor.engine.limits import PRIORITIES as PRIORITIES
from conveyor.engine.limits import QUEUE_NAME as QUEUE_NAME
from conveyor.engine.retry import Backoff
from conveyor.store.records import JSON

if TYPE_CHECKING:
    from conveyor.engine.periodic import Schedule

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 3
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT = 300.0
"""The defaults of :func:`job`, and of an enqueue by name of a kind that is not
registered in the enqueuing process."""


@dataclass(frozen=True, slots=True)
class Kind:
    """A registered job kind."""

    name: str
    handler: Callable[..., Any]
    queue: str
    priority: int
    max_attempts: int
    timeout: float | None
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
        self._schedules: dict[str, Schedule] = {}

    def register(self, kind: Kind) -> Kind:
        existing = self._kinds.get(kind.name)
        if existing is not None and existing.handler is not kind.handler:
            raise ValueError(
                f"job kind {kind.name!r} is registered twice: by "
                f"{_where(existing.handler)} and by {_where(kind.handler)}"
            )
        self._kinds[kind.name] = kind
        return kind

    def add_schedule(self, schedule: Schedule) -> None:
        """Enqueue ``schedule.kind`` (registered already) on a cron schedule."""
        self.get(schedule.kind)
        self._schedules[schedule.kind] = schedule

    def schedules(self) -> list[Schedule]:
        return list(self._schedules.values())

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
