"""Drop guard: pure decisions with explicit times.

A large drop (against the current list, or against the largest list published
within DROP_WINDOW) waits for DROP_CONFIRMATIONS sightings in a row *and*
DROP_HOLD seconds since the first sighting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from sensor_sd.guard import WINDOW_SLOTS, DropGuard

CURRENT = tuple(f"s{i}" for i in range(10))


def fleet(n: int) -> tuple[str, ...]:
    return tuple(sorted(f"sensor_{i}" for i in range(n)))


def removed(current: tuple[str, ...], new: tuple[str, ...]) -> int:
    return len(set(current) - set(new))


# --- ratio and confirmations (the guard of the first release) -------------------------------------


def test_small_changes_apply_at_once() -> None:
    guard = DropGuard(0.5, 3)
    assert guard.check(CURRENT, CURRENT[:5], 5, 0.0).apply  # exactly the ratio is allowed
    assert not guard.active


def test_large_drop_is_held_until_confirmed() -> None:
    guard = DropGuard(0.5, 3)
    new = CURRENT[:2]
    first, second, third = (guard.check(CURRENT, new, 8, float(t)) for t in range(3))
    assert (first.apply, first.seen) == (False, 1)
    assert (second.apply, second.seen) == (False, 2)
    assert third.apply and third.drop and not guard.active


def test_a_different_list_restarts_the_count() -> None:
    guard = DropGuard(0.5, 2)
    assert not guard.check(CURRENT, (), 10, 0.0).apply
    assert not guard.check(CURRENT, CURRENT[:1], 9, 1.0).apply  # not the same list: first sighting again
    assert guard.seen == 1
    assert guard.check(CURRENT, CURRENT[:1], 9, 2.0).apply


def test_empty_list_is_a_drop() -> None:
    guard = DropGuard(0.5, 3)
    assert not guard.check(CURRENT, (), len(CURRENT), 0.0).apply
    assert guard.pending == ()


def test_good_list_in_between_clears_the_hold() -> None:
    guard = DropGuard(0.5, 2)
    guard.check(CURRENT, (), 10, 0.0)
    assert guard.check(CURRENT, CURRENT, 0, 1.0).apply
    assert not guard.active
    assert not guard.check(CURRENT, (), 10, 2.0).apply  # counting starts over


def test_ratio_one_turns_the_guard_off() -> None:
    assert DropGuard(1.0, 3).check(CURRENT, (), 10, 0.0).apply


def test_one_confirmation_applies_the_first_sighting() -> None:
    assert DropGuard(0.5, 1).check(CURRENT, (), 10, 0.0).apply


def test_nothing_current_applies() -> None:
    guard = DropGuard(0.0, 5)
    assert guard.check(None, ("a",), 0, 0.0).apply
    assert guard.check((), ("a",), 0, 0.0).apply


# --- issue 10 item 11: the slow shrink, measured against the window ------------------------------


def shrink(guard: DropGuard, sizes: list[int], start: float = 0.0, step: float = 30.0
           ) -> tuple[tuple[str, ...], list[bool]]:
    """Offer 100 -> sizes[0] -> sizes[1] ... one poll `step` apart; the published list and each decision."""
    current, applied, now = fleet(100), [], start
    for size in sizes:
        new = fleet(size)
        decision = guard.check(current, new, removed(current, new), now)
        applied.append(decision.apply)
        if decision.apply:
            current = new
        now += step
    return current, applied


def test_slow_shrink_is_held_against_the_largest_list_in_the_window() -> None:
    """100 -> 60 -> 36 -> 22 -> 13: every step removes < 50 % of the list before it."""
    current, applied = shrink(DropGuard(0.5, 3, window=3600), [60, 36, 22, 13])
    assert applied == [True, False, False, False]  # 36 < 0.5 * 100, and so is everything after it
    assert current == fleet(60)


def test_window_zero_compares_with_the_current_list_only() -> None:
    current, applied = shrink(DropGuard(0.5, 3, window=0), [60, 36, 22, 13])
    assert applied == [True, True, True, True]
    assert current == fleet(13)


def test_the_boundary_against_the_window_max() -> None:
    """A drop is `new size < (1 - MAX_DROP_RATIO) * largest size`; exactly half of 100 is allowed."""
    guard = DropGuard(0.5, 3, window=3600)
    current = fleet(100)
    assert guard.check(current, fleet(60), 40, 0.0).apply
    decision = guard.decide(fleet(60), fleet(50), 10, 1.0)
    assert decision.apply and decision.baseline == 100
    decision = guard.decide(fleet(60), fleet(49), 11, 1.0)
    assert not decision.apply and decision.baseline == 100


def test_a_replaced_list_counts_until_the_window_has_passed_since_it_was_last_published() -> None:
    guard = DropGuard(0.5, 3, window=3600)
    assert guard.check(fleet(100), fleet(60), 40, 1000.0).apply  # 100 published until t=1000
    resolution = 3600 / WINDOW_SLOTS
    assert not guard.decide(fleet(60), fleet(36), 24, 1000.0 + 3600).apply
    late = guard.decide(fleet(60), fleet(36), 24, 1000.0 + 3600 + resolution + 1)
    assert late.apply and late.baseline == 60  # 36 removes 40 % of 60: allowed once 100 left the window


def test_a_long_published_list_is_remembered_from_when_it_was_replaced() -> None:
    """100 stays for two hours, then 60 and 36 a minute apart: 100 was published a minute ago."""
    guard = DropGuard(0.5, 3, window=3600)
    assert guard.check(fleet(100), fleet(100), 0, 0.0).apply
    assert guard.check(fleet(100), fleet(60), 40, 7200.0).apply
    assert not guard.check(fleet(60), fleet(36), 24, 7260.0).apply


def test_growth_is_never_held_even_below_the_window_max() -> None:
    guard = DropGuard(0.5, 3, window=3600)
    assert guard.check(fleet(100), fleet(60), 40, 0.0).apply
    assert not guard.check(fleet(60), fleet(40), 20, 1.0).apply
    assert guard.check(fleet(60), fleet(70), 0, 2.0).apply  # removes nothing: applied at once


def test_a_confirmed_drop_becomes_the_new_baseline() -> None:
    """After 100 -> 10 was confirmed, 10 -> 9 is judged against 10, not against the 100 of an hour ago."""
    guard = DropGuard(0.5, 2, window=3600)
    assert not guard.check(fleet(100), fleet(10), 90, 0.0).apply
    assert guard.check(fleet(100), fleet(10), 90, 1.0).apply
    assert guard.check(fleet(10), fleet(9), 1, 2.0).apply


def test_accept_clears_the_window_and_the_hold() -> None:
    """What `once --force` does: the forced list is the new baseline."""
    guard = DropGuard(0.5, 3, window=3600, hold=300)
    assert guard.check(fleet(100), fleet(60), 40, 0.0).apply
    assert not guard.check(fleet(60), fleet(36), 24, 1.0).apply
    guard.accept()
    assert not guard.active
    assert guard.check(fleet(36), fleet(30), 6, 2.0).apply


def test_the_window_memory_is_bounded() -> None:
    """A list shrinking by one every poll for a whole window keeps at most WINDOW_SLOTS + 1 sizes."""
    guard = DropGuard(0.5, 3, window=3600)
    size, now = 1_000_000, 0.0
    for _ in range(20_000):
        guard.record(size, now)
        size -= 1
        now += 0.18  # 20,000 polls in one hour
    assert len(guard._window) <= WINDOW_SLOTS + 1
    query = now + 100  # exactly: sizes recorded at t >= 100 count; rounded up, from t >= 100 - W/64
    low, high = 1_000_000 - int(100 / 0.18) - 1, 1_000_000 - int((100 - 3600 / WINDOW_SLOTS) / 0.18) + 1
    assert low <= guard.decide(fleet(10), (), 10, query).baseline <= high


# --- issue 13 item 5: the time floor DROP_HOLD ----------------------------------------------------


def test_polls_alone_do_not_release_before_the_hold() -> None:
    guard = DropGuard(0.5, 3, hold=300)
    decisions = [guard.check(CURRENT, (), 10, t) for t in (0.0, 2.0, 4.0, 6.0, 299.0)]
    assert [d.apply for d in decisions] == [False] * 5
    assert [d.seen for d in decisions] == [1, 2, 3, 4, 5]
    assert decisions[-1].since == 0.0 and decisions[-1].release == 300.0
    assert guard.check(CURRENT, (), 10, 300.0).apply


def test_time_alone_does_not_release_before_the_polls() -> None:
    guard = DropGuard(0.5, 3, hold=10)
    assert not guard.check(CURRENT, (), 10, 0.0).apply
    assert not guard.check(CURRENT, (), 10, 1000.0).apply  # long enough, but only the second sighting
    assert guard.check(CURRENT, (), 10, 1001.0).apply


def test_a_different_list_restarts_the_clock() -> None:
    guard = DropGuard(0.5, 2, hold=60)
    guard.check(CURRENT, (), 10, 0.0)
    guard.check(CURRENT, (), 10, 30.0)
    assert not guard.check(CURRENT, CURRENT[:1], 9, 61.0).apply
    assert guard.since == 61.0
    assert not guard.check(CURRENT, CURRENT[:1], 9, 120.0).apply
    assert guard.check(CURRENT, CURRENT[:1], 9, 121.0).apply


def test_ratio_one_ignores_window_and_hold() -> None:
    guard = DropGuard(1.0, 1000, window=3600, hold=86400)
    current, applied = shrink(guard, [60, 36, 0, 13])
    assert applied == [True] * 4 and current == fleet(13)


def test_decide_is_a_pure_query() -> None:
    guard = DropGuard(0.5, 3, window=3600, hold=300)
    guard.check(CURRENT, (), 10, 0.0)
    before = (guard.pending, guard.seen, guard.since, tuple(guard._window))
    for t in (1.0, 500.0, 10_000.0):
        decision = guard.decide(CURRENT, (), 10, t)
        assert not decision.apply and decision.seen == 2  # what a poll now would see: the second sighting
    assert guard.decide(CURRENT, CURRENT, 0, 1.0).apply
    assert (guard.pending, guard.seen, guard.since, tuple(guard._window)) == before


def test_the_decision_says_what_a_held_drop_waits_for() -> None:
    """`check` words its answer from the decision alone: sightings needed, and whether only time is missing."""
    polls = DropGuard(0.5, 3, hold=300).decide(CURRENT, (), 10, 0.0)
    assert polls.held and (polls.seen, polls.needed, polls.hold) == (1, 3, 300) and not polls.waits_for_time
    time_only = DropGuard(0.5, 1, hold=300).decide(CURRENT, (), 10, 0.0)
    assert time_only.held and (time_only.seen, time_only.needed) == (1, 1) and time_only.waits_for_time
    confirmed = DropGuard(0.5, 1).decide(CURRENT, (), 10, 0.0)
    assert confirmed.drop and not confirmed.held and not confirmed.waits_for_time
    small = DropGuard(0.5, 3, hold=300).decide(CURRENT, CURRENT[1:], 1, 0.0)
    assert not small.drop and not small.held and small.needed == 0


# --- the property: no unconfirmed large drop is ever applied ---------------------------------------

UNIVERSE = tuple(f"h{i:02d}" for i in range(20))


@dataclass
class Oracle:
    """Restates SPEC §7 from the outside: exact window, full history, no deque."""

    ratio: float
    confirmations: int
    window: float
    hold: float
    history: list[tuple[float, float | None, int]] = field(default_factory=list)  # (from, until, size)
    run: tuple[tuple[str, ...], int, float] | None = None  # (list, polls in a row, first sighting)

    def window_max(self, now: float) -> int:
        return max(size for start, until, size in self.history if until is None or until > now - self.window)

    def is_drop(self, current: tuple[str, ...], new: tuple[str, ...], now: float) -> bool:
        gone = removed(current, new)
        if not current or gone == 0:
            return False
        top = self.window_max(now)
        return gone / len(current) > self.ratio or (top - len(new)) / top > self.ratio


lists = st.lists(st.sampled_from(UNIVERSE), unique=True, max_size=len(UNIVERSE)).map(lambda xs: tuple(sorted(xs)))
# What the next poll offers: any list, the last offered one again, or the published one cut to a share (slow shrinks).
offers = st.one_of(st.tuples(st.just("list"), lists), st.tuples(st.just("again"), st.just(())),
                   st.tuples(st.just("shrink"), st.sampled_from([0.95, 0.8, 0.7, 0.6, 0.5, 0.4])))


@given(ratio=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]), confirmations=st.integers(1, 4),
       window=st.sampled_from([0.0, 1.0, 10.0, 60.0, 3600.0]), hold=st.sampled_from([0.0, 1.0, 5.0, 30.0]),
       start=lists, steps=st.lists(st.tuples(st.floats(0, 40, allow_nan=False), offers), max_size=40))
def test_no_unconfirmed_drop_is_ever_applied(ratio: float, confirmations: int, window: float, hold: float,
                                             start: tuple[str, ...], steps: list[tuple[float, tuple[str, object]]]
                                             ) -> None:
    """For any sequence of (time, list): a drop past the ratio (against the current list or the window's
    largest) is applied only after DROP_CONFIRMATIONS polls and DROP_HOLD seconds; ratio 1 applies all."""
    guard = DropGuard(ratio, confirmations, window=window, hold=hold)
    oracle = Oracle(ratio, confirmations, window, hold, history=[(0.0, None, len(start))])
    current, offered, now = start, start, 1_700_000_000.0
    for dt, (kind, arg) in steps:
        now += dt
        if kind == "list":
            offered = arg  # type: ignore[assignment]
        elif kind == "shrink":
            offered = current[:math.ceil(len(current) * arg)]  # type: ignore[operator]
        new = offered
        same = oracle.run is not None and oracle.run[0] == new
        oracle.run = (new, oracle.run[1] + 1, oracle.run[2]) if same and oracle.run else (new, 1, now)
        drop = oracle.is_drop(current, new, now)
        decision = guard.check(current, new, removed(current, new), now)
        if ratio >= 1 or not removed(current, new):
            assert decision.apply, "removing nothing, or MAX_DROP_RATIO=1, always applies"
        if not decision.apply:
            continue
        if drop:
            _, seen, first = oracle.run
            assert seen >= confirmations, f"applied a drop seen {seen} < {confirmations} polls"
            assert now - first >= hold, f"applied a drop seen for {now - first} s < DROP_HOLD {hold}"
            oracle.history = [(now, None, len(new))]  # a confirmed drop is the new baseline
        elif new != current:
            start_, _, size = oracle.history[-1]
            oracle.history[-1] = (start_, now, size)
            oracle.history.append((now, None, len(new)))
        current = new
