"""Fixtures of the notify suite (helpers in notify_support)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from notify_support import Delivering

from conveyor.store.base import Store


@pytest.fixture
async def delivering(store: Store) -> AsyncIterator[Delivering]:
    harness = Delivering(store)
    try:
        yield harness
    finally:
        await harness.close()
