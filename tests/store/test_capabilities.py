"""Stores declare what they can do; a store that declares handoff is a HandoffQueue."""

from __future__ import annotations

import inspect

from conveyor.store.base import HandoffQueue, Store, handoff_queue
from conveyor.store.postgres import PostgresStore
from conveyor.store.sqlite import SqliteStore


def test_a_store_that_declares_handoff_takes_offers_on_its_exchange(store: Store) -> None:
    takes_offers = "offers" in inspect.signature(store.settle_and_claim).parameters
    if store.capabilities.handoff:
        assert takes_offers
        assert handoff_queue(store) is store
    else:
        assert handoff_queue(store) is None


def test_declared_not_inferred() -> None:
    assert SqliteStore.capabilities.handoff is False
    assert SqliteStore.capabilities.listen is False
    listening = PostgresStore("postgresql://u@h/d", listen=True).capabilities
    polling = PostgresStore("postgresql://u@h/d", listen=False).capabilities
    assert (listening.handoff, listening.listen) == (True, True)
    assert (polling.handoff, polling.listen) == (False, False)
    assert "offers" in inspect.signature(HandoffQueue.settle_and_claim).parameters
