"""aggregator.alignment: pure logic with an injected clock, no broker."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.alignment import Aligner, Emitted

SUBS = ("g0", "g1", "g2")
PERIOD = 0.5
DEADLINE = 0.4


def vec(value: float = 1.0) -> np.ndarray:
    return np.full(4, value, np.float16)


def aligner(buffer_ticks: int = 8, record_ticks: int | None = None) -> Aligner:
    return Aligner(
        SUBS,
        period_s=PERIOD,
        deadline_s=DEADLINE,
        buffer_ticks=buffer_ticks,
        record_ticks=record_ticks,
    )


def t(tick: int, after: float = 0.0) -> float:
    """Wall-clock time `after` seconds past tick's capture time."""
    return tick * PERIOD + after


def test_complete_as_soon_as_every_sub_reported() -> None:
    a = aligner()
    assert a.add(10, "g0", t(10, 0.01), vec(0), now=t(10, 0.05)) == []
    assert a.add(10, "g2", t(10, 0.02), vec(2), now=t(10, 0.06)) == []
    [out] = a.add(10, "g1", t(10, 0.005), vec(1), now=t(10, 0.07))
    assert isinstance(out, Emitted)
    assert (out.tick, out.complete, out.missing, out.cause) == (10, True, (), "complete")
    assert out.ts == t(10, 0.005)  # the earliest capture time reported
    assert sorted(out.features) == list(SUBS)
    np.testing.assert_array_equal(out.features["g2"], vec(2))
    assert (a.complete, a.partial, a.pending) == (1, 0, 0)
    assert a.next_deadline() is None


def test_partial_at_the_deadline_with_missing_list() -> None:
    a = aligner()
    a.add(10, "g1", t(10), vec(), now=t(10, 0.1))
    assert a.next_deadline() == pytest.approx(t(10, DEADLINE))
    assert a.expire(t(10, DEADLINE - 0.001)) == []
    [out] = a.expire(t(10, DEADLINE))
    assert (out.tick, out.complete, out.cause) == (10, False, "deadline")
    assert out.missing == ("g0", "g2")  # in the bundle's order
    assert list(out.features) == ["g1"]
    assert (a.complete, a.partial, a.pending) == (0, 1, 0)


def test_add_expires_due_ticks_first() -> None:
    a = aligner()
    a.add(10, "g0", t(10), vec(), now=t(10, 0.1))
    out = a.add(11, "g0", t(11), vec(), now=t(11, 0.0))  # tick 10's deadline has passed
    assert [(e.tick, e.cause) for e in out] == [(10, "deadline")]
    assert a.pending == 1


def test_late_message_for_an_emitted_tick_is_dropped() -> None:
    a = aligner()
    for sub in SUBS:
        a.add(10, sub, t(10), vec(), now=t(10, 0.1))
    assert a.complete == 1
    # before the deadline: the tick is remembered as emitted
    assert a.add(10, "g0", t(10), vec(), now=t(10, 0.2)) == []
    assert a.late == 1
    # a partial tick: the missing sub-model turns up after the deadline
    a.add(11, "g0", t(11), vec(), now=t(11, 0.1))
    [partial] = a.expire(t(11, DEADLINE))
    assert partial.missing == ("g1", "g2")
    assert a.add(11, "g1", t(11), vec(), now=t(11, DEADLINE + 0.01)) == []
    assert a.late == 2
    assert a.pending == 0  # never re-opened, never fused into another tick


def test_message_for_a_never_seen_tick_past_its_deadline_is_late() -> None:
    a = aligner()
    assert a.add(5, "g0", t(5), vec(), now=t(5, DEADLINE)) == []
    assert (a.late, a.pending) == (1, 0)


def test_duplicates_are_counted_and_the_first_kept() -> None:
    a = aligner()
    a.add(10, "g0", t(10), vec(1), now=t(10, 0.1))
    assert a.add(10, "g0", t(10), vec(9), now=t(10, 0.11)) == []
    assert a.duplicate == 1
    a.add(10, "g1", t(10), vec(), now=t(10, 0.12))
    [out] = a.add(10, "g2", t(10), vec(), now=t(10, 0.13))
    np.testing.assert_array_equal(out.features["g0"], vec(1))


def test_full_buffer_emits_the_oldest_first() -> None:
    a = Aligner(SUBS, period_s=PERIOD, deadline_s=5.0, buffer_ticks=3)
    now = t(10, 0.01)
    for tick in (10, 11, 12):
        a.add(tick, "g0", t(tick), vec(), now=now)
    out = a.add(13, "g0", t(13), vec(), now=now)
    assert [(e.tick, e.cause, e.complete) for e in out] == [(10, "evicted", False)]
    assert (a.pending, a.evicted) == (3, 1)
    # a message for the evicted tick is late; one older than everything held overflows
    assert a.add(10, "g1", t(10), vec(), now=now) == []
    assert a.late == 1
    assert a.add(9, "g1", t(9), vec(), now=now) == []
    assert a.overflow == 1


def test_out_of_order_ticks_complete_independently() -> None:
    a = aligner()
    now = t(20, 0.01)
    for sub in SUBS[:2]:
        a.add(20, sub, t(20), vec(), now=now)
    for sub in SUBS:
        out = a.add(21, sub, t(21), vec(), now=now)
    assert [e.tick for e in out] == [21]
    [last] = a.add(20, "g2", t(20), vec(), now=now)
    assert last.tick == 20
    assert last.complete


def test_unexpected_sub_model_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="g9"):
        aligner().add(1, "g9", 0.0, vec(), now=0.0)
    with pytest.raises(ValueError, match="unique"):
        Aligner(["g0", "g0"], period_s=1, deadline_s=1, buffer_ticks=1)


def test_single_sub_model_bundle_completes_immediately() -> None:
    a = Aligner(["only"], period_s=1.0, deadline_s=0.5, buffer_ticks=2)
    [out] = a.add(3, "only", 3.0, vec(), now=3.1)
    assert out.complete


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.integers(-5, 400),  # tick offset from "now" (hostile: far past and future)
            st.sampled_from(SUBS),
            st.floats(0, 0.2),  # clock advance before this message
        ),
        max_size=600,
    ),
    st.integers(1, 16),
)
def test_memory_stays_bounded_under_any_flood(
    events: list[tuple[int, str, float]], buffer_ticks: int
) -> None:
    """Random and hostile ticks: the buffer and the emitted-record never exceed their bounds,
    each tick is emitted at most once, and every accepted vector is emitted or pending."""
    a = aligner(buffer_ticks=buffer_ticks, record_ticks=2 * buffer_ticks)
    now = 1000 * PERIOD
    emitted: list[Emitted] = []
    for offset, sub, advance in events:
        now += advance
        tick = int(now / PERIOD) + offset
        emitted += a.add(tick, sub, tick * PERIOD, vec(), now=now)
        assert a.pending <= buffer_ticks
        assert a.recorded <= 2 * buffer_ticks
        assert len(a._heap) <= 2 * buffer_ticks + 64 + 1  # internal, bounded too
    emitted += a.expire(now + 1000)
    ticks = [e.tick for e in emitted]
    assert len(ticks) == len(set(ticks))
    assert a.pending == 0
    assert sum(len(e.features) for e in emitted) == a.accepted
    assert a.accepted + a.duplicate + a.late + a.overflow == len(events)
    assert a.complete + a.partial == len(emitted)
    assert all(e.complete == (not e.missing) for e in emitted)


def test_a_long_steady_stream_holds_nothing_back() -> None:
    """10,000 ticks, one sub-model always late: memory stays flat, every tick comes out."""
    a = aligner(buffer_ticks=4)
    out: list[Emitted] = []
    for tick in range(1000, 11000):
        now = t(tick, 0.05)
        out += a.add(tick, "g0", t(tick), vec(), now=now)
        out += a.add(tick, "g1", t(tick), vec(), now=now)
        out += a.add(tick - 1, "g2", t(tick - 1), vec(), now=t(tick, DEADLINE + 0.01))
        assert a.pending <= 4
        assert a.recorded <= 4 * 4 + 16
    assert len(out) == 10000
    assert all(e.missing == ("g2",) for e in out)
    assert a.late == 10000  # every g2 arrived after its tick's deadline
