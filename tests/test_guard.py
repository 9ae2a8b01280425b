"""Drop guard: large drops wait for DROP_CONFIRMATIONS sightings in a row."""

from __future__ import annotations

from sensor_sd.guard import DropGuard

CURRENT = tuple(f"s{i}" for i in range(10))


def test_small_changes_apply_at_once() -> None:
    guard = DropGuard(0.5, 3)
    assert guard.check(CURRENT, CURRENT[:5], 5).apply  # exactly the ratio is allowed
    assert not guard.active


def test_large_drop_is_held_until_confirmed() -> None:
    guard = DropGuard(0.5, 3)
    new = CURRENT[:2]
    first, second, third = (guard.check(CURRENT, new, 8) for _ in range(3))
    assert (first.apply, first.seen) == (False, 1)
    assert (second.apply, second.seen) == (False, 2)
    assert third.apply and not guard.active


def test_a_different_list_restarts_the_count() -> None:
    guard = DropGuard(0.5, 2)
    assert not guard.check(CURRENT, (), 10).apply
    assert not guard.check(CURRENT, CURRENT[:1], 9).apply  # not the same list: first sighting again
    assert guard.seen == 1
    assert guard.check(CURRENT, CURRENT[:1], 9).apply


def test_empty_list_is_a_drop() -> None:
    guard = DropGuard(0.5, 3)
    assert not guard.check(CURRENT, (), len(CURRENT)).apply
    assert guard.pending == ()


def test_good_list_in_between_clears_the_hold() -> None:
    guard = DropGuard(0.5, 2)
    guard.check(CURRENT, (), 10)
    assert guard.check(CURRENT, CURRENT, 0).apply
    assert not guard.active
    assert not guard.check(CURRENT, (), 10).apply  # counting starts over


def test_ratio_one_turns_the_guard_off() -> None:
    assert DropGuard(1.0, 3).check(CURRENT, (), 10).apply


def test_one_confirmation_applies_the_first_sighting() -> None:
    assert DropGuard(0.5, 1).check(CURRENT, (), 10).apply


def test_nothing_current_applies() -> None:
    guard = DropGuard(0.0, 5)
    assert guard.check(None, ("a",), 0).apply
    assert guard.check((), ("a",), 0).apply
