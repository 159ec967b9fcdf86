"""The public API is exactly what ``conveyor`` exports; everything else is internal."""

import conveyor

EXPECTED = {
    "Backoff",
    "Client",
    "ConveyorError",
    "Discard",
    "Event",
    "EventType",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobConflict",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "QueueNotFound",
    "Registry",
    "Settings",
    "StreamOverflow",
    "TenantLimits",
    "UnknownKind",
    "Worker",
    "WorkerConfig",
    "job",
    "periodic",
    "registry",
}


def test_all_is_the_public_api() -> None:
    assert set(conveyor.__all__) == EXPECTED


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in conveyor.__all__:
        value = getattr(conveyor, name)
        if callable(value):
            assert value.__doc__, f"conveyor.{name} has no docstring"
