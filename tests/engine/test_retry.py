"""Backoff between attempts: exponential ceiling, capped, with full jitter."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import conveyor
from conveyor.engine.limits import MAX_DELAY_S


def test_defaults() -> None:
    backoff = conveyor.Backoff()

    assert (backoff.base, backoff.factor, backoff.cap, backoff.jitter) == (5.0, 2.0, 3600.0, True)


def test_ceiling_doubles_from_the_base() -> None:
    backoff = conveyor.Backoff(base=5)

    assert [backoff.ceiling(n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 40.0, 80.0]


def test_ceiling_is_capped() -> None:
    backoff = conveyor.Backoff(base=5, cap=30)

    assert [backoff.ceiling(n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert backoff.ceiling(10_000) == 30.0


def test_custom_factor() -> None:
    backoff = conveyor.Backoff(base=1, factor=3, cap=1000)

    assert [backoff.ceiling(n) for n in range(1, 5)] == [1.0, 3.0, 9.0, 27.0]


def test_factor_one_is_constant() -> None:
    backoff = conveyor.Backoff(base=7, factor=1)

    assert {backoff.ceiling(n) for n in range(1, 50)} == {7.0}


def test_attempt_zero_or_below_counts_as_the_first() -> None:
    backoff = conveyor.Backoff(base=5)

    assert backoff.ceiling(0) == backoff.ceiling(-3) == 5.0


@pytest.mark.parametrize("factor", [2.0, 10.0, 1000.0])
@pytest.mark.parametrize("attempt", [100, 500, 1024, 5000, 10**9])
def test_huge_attempts_reach_the_cap_without_overflow(factor: float, attempt: int) -> None:
    backoff = conveyor.Backoff(base=1, factor=factor, cap=60)

    assert backoff.ceiling(attempt) == 60.0
    assert 0.0 <= backoff.delay(attempt) <= 60.0


@pytest.mark.parametrize("attempt", [1, 10, 1000, 1001, 5000])
def test_zero_base_never_waits(attempt: int) -> None:
    backoff = conveyor.Backoff(base=0)

    assert backoff.ceiling(attempt) == 0.0
    assert backoff.delay(attempt) == 0.0


def test_full_jitter_stays_within_zero_and_the_ceiling() -> None:
    backoff = conveyor.Backoff(base=4, cap=100)
    rng = random.Random(1234)

    for attempt in range(1, 10):
        ceiling = backoff.ceiling(attempt)
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Spread over the whole range, not bunched at one end.
        assert min(delays) < ceiling * 0.2
        assert max(delays) > ceiling * 0.8


def test_jitter_follows_the_given_rng() -> None:
    backoff = conveyor.Backoff(base=4)

    first = [backoff.delay(3, random.Random(7)) for _ in range(3)]

    assert len(set(first)) == 1


def test_without_jitter_the_delay_is_the_ceiling() -> None:
    backoff = conveyor.Backoff(base=2, cap=50, jitter=False)

    assert [backoff.delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 50.0]
    assert backoff.delay(3) == backoff.delay(3)


@given(
    base=st.floats(0, 1e6),
    factor=st.floats(1, 1e3),
    cap=st.floats(0, MAX_DELAY_S),  # larger caps are refused (limits.MAX_DELAY_S)
    attempt=st.integers(-5, 10**6),
)
def test_delay_is_always_within_bounds(
    base: float, factor: float, cap: float, attempt: int
) -> None:
    backoff = conveyor.Backoff(base=base, factor=factor, cap=cap)

    ceiling = backoff.ceiling(attempt)

    assert 0.0 <= ceiling <= cap
    assert 0.0 <= backoff.delay(attempt, random.Random(0)) <= ceiling


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -1},
        {"cap": -1},
        {"factor": 0.5},
        {"factor": 0},
        {"base": float("nan")},
        {"cap": float("nan")},
        {"factor": float("nan")},
    ],
)
def test_invalid_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        conveyor.Backoff(**kwargs)


def test_backoff_is_immutable() -> None:
    backoff = conveyor.Backoff()

    with pytest.raises(AttributeError):
        backoff.base = 1  # type: ignore[misc]


@pytest.mark.parametrize("cap", [MAX_DELAY_S * 2, float("inf"), float("nan")])
def test_a_cap_past_the_longest_delay_is_refused(cap: float) -> None:
    with pytest.raises(ValueError, match="10 years"):
        conveyor.Backoff(cap=cap)
