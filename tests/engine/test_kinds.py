"""Job kinds: registration, defaults, validation of options and of typed payloads."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import conveyor
from conveyor.engine.kinds import import_modules, unregistered


class Report(BaseModel):
    month: str = Field(pattern=r"^\d{4}-\d{2}$")
    pages: int = 1


class Line(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    lines: list[Line]


# -- registration ----------------------------------------------------------------------------
def test_decorator_registers_an_async_handler_and_returns_it(kinds: conveyor.Registry) -> None:
    async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    decorated = conveyor.job("t.async", registry=kinds)(handler)

    assert decorated is handler
    assert "t.async" in kinds
    assert kinds.get("t.async").handler is handler
    assert kinds.get("t.async").is_async


def test_decorator_registers_a_sync_handler(kinds: conveyor.Registry) -> None:
    @conveyor.job("t.sync", registry=kinds)
    def handler(ctx: conveyor.JobContext, payload: Any) -> int:
        return 1

    assert kinds.get("t.sync").handler is handler
    assert not kinds.get("t.sync").is_async


def test_defaults(kinds: conveyor.Registry) -> None:
    @conveyor.job("t.defaults", registry=kinds)
    async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    kind = kinds.get("t.defaults")
    assert kind.queue == "default"
    assert kind.priority == 3
    assert kind.max_attempts == 3
    assert kind.timeout == 300.0
    assert kind.backoff == conveyor.Backoff()
    assert kind.non_retryable == ()
    assert kind.input_model is None


def test_options_are_kept(kinds: conveyor.Registry) -> None:
    backoff = conveyor.Backoff(base=1, cap=10)

    @conveyor.job(
        "t.options",
        queue="reports",
        priority=1,
        max_attempts=7,
        timeout=None,
        backoff=backoff,
        non_retryable=[KeyError],
        registry=kinds,
    )
    async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    kind = kinds.get("t.options")
    assert (kind.queue, kind.priority, kind.max_attempts, kind.timeout) == ("reports", 1, 7, None)
    assert kind.backoff is backoff
    assert kind.non_retryable == (KeyError,)


def test_a_kind_resolves_its_defaults_for_a_new_job(kinds: conveyor.Registry) -> None:
    @conveyor.job(
        "t.tuned", queue="reports", priority=2, max_attempts=5, timeout=None, registry=kinds
    )
    async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    kind = kinds.get("t.tuned")
    new = kind.new_job({"n": 1})
    assert (new.kind, new.queue, new.payload) == ("t.tuned", "reports", {"n": 1})
    assert (new.priority, new.max_attempts, new.timeout_s) == (2, 5, None)
    given = kind.new_job(queue="other", priority=9, max_attempts=1, timeout=5)
    assert (given.queue, given.priority, given.max_attempts, given.timeout_s) == (
        "other",
        9,
        1,
        5.0,
    )
    assert given.payload == {}


def test_a_kind_known_only_by_name_takes_the_system_defaults() -> None:
    new = unregistered("elsewhere.kind").new_job({"n": 1})
    assert (new.kind, new.queue, new.priority, new.max_attempts, new.timeout_s) == (
        "elsewhere.kind",
        "default",
        3,
        3,
        300.0,
    )
    with pytest.raises(conveyor.InvalidJob, match="either delay or run_at"):
        unregistered("elsewhere.kind").new_job(delay=1, run_at=2_000_000_000)


def test_registry_lists_names_and_queues(kinds: conveyor.Registry) -> None:
    for name, queue in [("b.two", "video"), ("a.one", "qa"), ("c.three", "qa")]:

        @conveyor.job(name, queue=queue, registry=kinds)
        async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
            return None

    assert kinds.names() == ["a.one", "b.two", "c.three"]
    assert kinds.queues() == ["qa", "video"]
    assert len(kinds) == 3
    assert sorted(kind.name for kind in kinds) == ["a.one", "b.two", "c.three"]


def test_registries_are_independent(kinds: conveyor.Registry) -> None:
    @conveyor.job("t.private", registry=kinds)
    async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    assert "t.private" not in conveyor.Registry()
    assert "t.private" not in conveyor.registry


# -- invalid options -------------------------------------------------------------------------
@pytest.mark.parametrize("priority", [0, 11, -1, True, 1.5, "1"])
def test_invalid_priority(kinds: conveyor.Registry, priority: Any) -> None:
    with pytest.raises(conveyor.InvalidJob, match="priority"):

        @conveyor.job("t.bad", priority=priority, registry=kinds)
        async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
            return None

    assert "t.bad" not in kinds


@pytest.mark.parametrize("max_attempts", [0, -3, True, 2.0])
def test_invalid_max_attempts(kinds: conveyor.Registry, max_attempts: Any) -> None:
    with pytest.raises(conveyor.InvalidJob, match="max_attempts"):

        @conveyor.job("t.bad", max_attempts=max_attempts, registry=kinds)
        async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
            return None

    assert "t.bad" not in kinds


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_invalid_timeout(kinds: conveyor.Registry, timeout: float) -> None:
    with pytest.raises(conveyor.InvalidJob, match="timeout"):

        @conveyor.job("t.bad", timeout=timeout, registry=kinds)
        async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
            return None


@pytest.mark.parametrize("queue", ["", "has space", "slash/queue", "x" * 101, "é"])
def test_invalid_queue_name(kinds: conveyor.Registry, queue: str) -> None:
    with pytest.raises(conveyor.InvalidJob, match="queue name"):

        @conveyor.job("t.bad", queue=queue, registry=kinds)
        async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
            return None


@pytest.mark.parametrize("name", ["", "has space", "x" * 201])
def test_invalid_kind_name(kinds: conveyor.Registry, name: str) -> None:
    with pytest.raises(ValueError, match="job kind name"):

        @conveyor.job(name, registry=kinds)
        async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
            return None

    assert len(kinds) == 0


def test_handler_must_take_ctx_and_payload(kinds: conveyor.Registry) -> None:
    with pytest.raises(TypeError, match=r"must take \(ctx, payload\)"):

        @conveyor.job("t.bad", registry=kinds)
        async def handler(ctx: conveyor.JobContext) -> None:
            return None


def test_duplicate_registration_names_both_handlers(kinds: conveyor.Registry) -> None:
    @conveyor.job("t.dup", registry=kinds)
    async def first(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    with pytest.raises(ValueError, match="registered twice") as caught:

        @conveyor.job("t.dup", registry=kinds)
        async def second(ctx: conveyor.JobContext, payload: Any) -> None:
            return None

    assert "first" in str(caught.value)
    assert "second" in str(caught.value)
    assert kinds.get("t.dup").handler is first


def test_registering_the_same_handler_again_is_harmless(kinds: conveyor.Registry) -> None:
    async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    conveyor.job("t.same", registry=kinds)(handler)
    conveyor.job("t.same", registry=kinds)(handler)

    assert kinds.names() == ["t.same"]


# -- typed payloads --------------------------------------------------------------------------
async def test_model_payload_is_validated_at_enqueue(
    kinds: conveyor.Registry, client: conveyor.Client
) -> None:
    @conveyor.job("t.report", registry=kinds)
    async def build(ctx: conveyor.JobContext, payload: Report) -> None:
        return None

    assert kinds.get("t.report").input_model is Report
    with pytest.raises(conveyor.InvalidJob, match="month") as caught:
        await client.enqueue("t.report", {"month": "October"})

    assert "t.report" in str(caught.value)
    assert await client.list() == []


async def test_model_error_names_a_nested_field(
    kinds: conveyor.Registry, client: conveyor.Client
) -> None:
    @conveyor.job("t.order", registry=kinds)
    async def place(ctx: conveyor.JobContext, payload: Order) -> None:
        return None

    with pytest.raises(conveyor.InvalidJob, match=r"lines\.1\.qty"):
        await client.enqueue("t.order", {"lines": [{"sku": "a", "qty": 1}, {"sku": "b"}]})


async def test_model_payload_is_stored_normalised(
    kinds: conveyor.Registry, client: conveyor.Client
) -> None:
    @conveyor.job("t.report", registry=kinds)
    async def build(ctx: conveyor.JobContext, payload: Report) -> None:
        return None

    enqueued = await client.enqueue("t.report", {"month": "2026-10"})

    assert (await client.get(enqueued.id)).payload == {"month": "2026-10", "pages": 1}


async def test_handler_receives_the_model_instance(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    received: list[Any] = []

    @conveyor.job("t.report", registry=kinds)
    async def build(ctx: conveyor.JobContext, payload: Report) -> dict[str, Any]:
        received.append(payload)
        return {"pages": payload.pages}

    enqueued = await client.enqueue("t.report", {"month": "2026-10", "pages": 4})
    await workers.burst()

    assert received == [Report(month="2026-10", pages=4)]
    assert isinstance(received[0], Report)
    assert (await client.get(enqueued.id)).result == {"pages": 4}


async def test_sync_handler_receives_the_model_instance(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    received: list[Any] = []

    @conveyor.job("t.report", registry=kinds)
    def build(ctx: conveyor.JobContext, payload: Report) -> None:
        received.append(payload)

    await client.enqueue("t.report", {"month": "2026-10"})
    await workers.burst()

    assert received == [Report(month="2026-10")]


async def test_unannotated_payload_is_passed_as_stored(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    received: list[Any] = []

    @conveyor.job("t.raw", registry=kinds)
    async def raw(ctx: conveyor.JobContext, payload: dict[str, Any]) -> None:
        received.append(payload)

    await client.enqueue("t.raw", {"anything": [1, "two"]})
    await workers.burst()

    assert received == [{"anything": [1, "two"]}]


# -- unknown kinds and imports ---------------------------------------------------------------
def test_unknown_kind_lists_registered_kinds(kinds: conveyor.Registry) -> None:
    for name in ("b.two", "a.one"):

        @conveyor.job(name, registry=kinds)
        async def handler(ctx: conveyor.JobContext, payload: Any) -> None:
            return None

    with pytest.raises(conveyor.UnknownKind) as caught:
        kinds.get("c.three")

    message = str(caught.value)
    assert "'c.three'" in message
    assert "a.one, b.two" in message
    assert caught.value.kind == "c.three"
    assert isinstance(caught.value, conveyor.ConveyorError)


def test_unknown_kind_in_an_empty_registry_says_so(kinds: conveyor.Registry) -> None:
    with pytest.raises(conveyor.UnknownKind, match="registered kinds: none"):
        kinds.get("x")


async def test_a_payload_enqueued_by_name_is_validated_where_the_kind_is_known(
    store: Any, kinds: conveyor.Registry, workers: Any
) -> None:
    """Enqueued from a process without the kind, a payload is not validated at enqueue;
    the worker that has the kind validates it, and a payload its model rejects fails the
    job at once, naming the fields (no attempt could make it valid)."""
    seen: list[Line] = []

    @conveyor.job("t.line", max_attempts=5, registry=kinds)
    async def line(ctx: conveyor.JobContext, payload: Line) -> None:
        seen.append(payload)

    producer = conveyor.Client(store, kinds=conveyor.Registry())
    good = await producer.enqueue("t.line", {"sku": "A-1", "qty": "3"})
    bad = await producer.enqueue("t.line", {"sku": "A-1", "qty": "many"})
    await workers.burst()

    assert seen == [Line(sku="A-1", qty=3)]
    assert (await producer.get(good.id)).state is conveyor.JobState.COMPLETED
    failed = await producer.get(bad.id)
    assert (failed.state, failed.attempt) == (conveyor.JobState.FAILED, 1)
    [error] = failed.errors
    assert error.type == "InvalidJob"
    assert "qty" in error.message
    assert error.traceback is None
    # Where the kind is registered, the same payload is refused at enqueue, as before.
    with pytest.raises(conveyor.InvalidJob, match="qty"):
        await conveyor.Client(store, kinds=kinds).enqueue("t.line", {"sku": "A", "qty": "x"})


def test_import_modules_names_a_missing_module() -> None:
    with pytest.raises(ImportError, match="conveyor_test_no_such_module") as caught:
        import_modules(["conveyor_test_no_such_module"])

    assert "CONVEYOR_IMPORTS" in str(caught.value)


def test_import_modules_names_a_module_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conveyor_test_broken_jobs.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "conveyor_test_broken_jobs", raising=False)

    with pytest.raises(ImportError, match="conveyor_test_broken_jobs") as caught:
        import_modules(["json", "conveyor_test_broken_jobs"])

    assert "RuntimeError: boom" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_import_modules_imports_each_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conveyor_test_good_jobs.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "conveyor_test_good_jobs", raising=False)

    import_modules(["conveyor_test_good_jobs"])

    assert sys.modules["conveyor_test_good_jobs"].LOADED is True
    monkeypatch.delitem(sys.modules, "conveyor_test_good_jobs")
