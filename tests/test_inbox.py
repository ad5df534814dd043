"""The per-sender inbox: a flooding sender sheds only its own messages (pure logic)."""

from __future__ import annotations

import threading

import pytest

from aggregator.inbox import FairInbox


def test_senders_are_served_in_turn() -> None:
    inbox: FairInbox[str] = FairInbox(["a", "b", "c"], depth=10)
    for i in range(3):
        inbox.put("a", f"a{i}")
    inbox.put("b", "b0")
    inbox.put("c", "c0")
    got = [inbox.get(0.0) for _ in range(5)]
    assert got == ["a0", "b0", "c0", "a1", "a2"]
    assert inbox.get(0.0) is None


def test_a_flood_sheds_only_the_flooders_oldest_messages() -> None:
    inbox: FairInbox[tuple[str, int]] = FairInbox(["flood", "good"], depth=4)
    for i in range(20_000):
        inbox.put("flood", ("flood", i))
        if i % 5_000 == 0:
            assert inbox.put("good", ("good", i))
    assert inbox.shed == {"flood": 20_000 - 4, "good": 0}
    assert len(inbox) == 4 + 4
    got = [inbox.get(0.0) for _ in range(8)]
    assert [g for g in got if g is not None and g[0] == "good"] == [
        ("good", i) for i in (0, 5_000, 10_000, 15_000)
    ]
    # the flooder's newest messages are the ones kept
    assert [g[1] for g in got if g is not None and g[0] == "flood"] == [
        19_996,
        19_997,
        19_998,
        19_999,
    ]


def test_get_waits_for_a_put_from_another_thread() -> None:
    inbox: FairInbox[int] = FairInbox(["a"], depth=1)
    timer = threading.Timer(0.05, inbox.put, args=("a", 7))
    timer.start()
    try:
        assert inbox.get(5.0) == 7
    finally:
        timer.cancel()
    assert inbox.get(0.01) is None


def test_unknown_keys_and_bad_sizes_are_refused() -> None:
    inbox: FairInbox[int] = FairInbox(["a"], depth=2)
    assert "a" in inbox
    assert "b" not in inbox
    with pytest.raises(KeyError):
        inbox.put("b", 1)
    with pytest.raises(ValueError, match="depth"):
        FairInbox(["a"], depth=0)
    with pytest.raises(ValueError, match="unique"):
        FairInbox(["a", "a"], depth=1)
