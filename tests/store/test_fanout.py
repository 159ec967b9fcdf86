"""One store's listeners: every notice to each, removal safe at any time."""

from __future__ import annotations

from conveyor.store.base import JobsAvailable, Notice
from conveyor.store.fanout import Fanout

NOTICE = JobsAvailable(frozenset({"q"}))


def test_every_listener_hears_every_notice_in_the_order_added() -> None:
    fanout = Fanout()
    heard: list[tuple[str, Notice]] = []
    fanout.add(lambda n: heard.append(("a", n)))
    fanout.add(lambda n: heard.append(("b", n)))
    fanout.publish(NOTICE)
    assert heard == [("a", NOTICE), ("b", NOTICE)]


def test_a_removed_listener_hears_nothing_more_and_removing_twice_is_harmless() -> None:
    fanout = Fanout()
    heard: list[Notice] = []
    remove = fanout.add(heard.append)
    remove()
    remove()
    fanout.publish(NOTICE)
    assert heard == []


def test_a_listener_removed_during_a_delivery_still_gets_that_notice() -> None:
    fanout = Fanout()
    heard: list[str] = []
    removers = []

    def first(_notice: Notice) -> None:
        heard.append("first")
        removers[1]()

    removers.append(fanout.add(first))
    removers.append(fanout.add(lambda _n: heard.append("second")))
    fanout.publish(NOTICE)
    fanout.publish(NOTICE)
    assert heard == ["first", "second", "first"]


def test_the_same_listener_added_twice_is_called_twice_until_each_is_removed() -> None:
    fanout = Fanout()
    heard: list[Notice] = []
    remove_one = fanout.add(heard.append)
    fanout.add(heard.append)
    fanout.publish(NOTICE)
    remove_one()
    fanout.publish(NOTICE)
    assert len(heard) == 3
