"""edvit.wire: the feature codec round trip, and every reason a message is refused."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edvit import topics
from edvit.ids import IdError
from edvit.wire import (
    FEATURE_KEYS,
    REASONS,
    WireError,
    decode_features,
    decode_frame,
    encode_features,
    encode_frame,
    encode_result,
)

SITE = "home"
PERIOD = 0.5
NOW = 1_700_000_000.0
TICK = int(NOW / PERIOD)
HASH = {"g0": "0123456789abcdef", "g1": "fedcba9876543210"}
DIMS = {"g0": 8, "g1": 4}
EXPECTED = {sub: (HASH[sub], DIMS[sub]) for sub in HASH}
LIMIT = 4096


def decode(payload: bytes, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = {
        "site": SITE,
        "expected": EXPECTED,
        "now": NOW,
        "period_s": PERIOD,
        "max_past": 10,
        "max_future": 2,
        "max_bytes": LIMIT,
    }
    kwargs.update(overrides)
    return decode_features(payload, **kwargs)


def message(**fields: Any) -> dict[str, Any]:
    """A valid g0 message as a dict, with `fields` replaced."""
    feat = np.linspace(-1, 1, DIMS["g0"]).astype("<f2")
    data: dict[str, Any] = {
        "v": 1,
        "site": SITE,
        "node": "cam-1",
        "sub": "g0",
        "tick": TICK,
        "ts": TICK * PERIOD + 0.01,
        "seq": 7,
        "model": HASH["g0"],
        "dtype": "float16",
        "shape": [DIMS["g0"]],
        "feat": feat.tobytes(),
    }
    data.update(fields)
    return data


def pack(data: Any) -> bytes:
    out: bytes = msgpack.packb(data, use_bin_type=True)
    return out


def reason_of(payload: bytes, **overrides: Any) -> str:
    with pytest.raises(WireError) as err:
        decode(payload, **overrides)
    assert err.value.reason in REASONS
    assert str(err.value).startswith(err.value.reason + ": ")
    return err.value.reason


def test_round_trip() -> None:
    feat = np.array([0.1, -2.5, 3.0, 1e-3, 0, 65504, -65504, 0.333], np.float32)
    payload = encode_features(SITE, "cam-1", "g0", TICK, NOW - 0.1, 42, HASH["g0"], feat)
    msg = decode(payload)
    assert (msg.site, msg.node, msg.sub, msg.tick, msg.seq, msg.model) == (
        SITE,
        "cam-1",
        "g0",
        TICK,
        42,
        HASH["g0"],
    )
    assert msg.ts == NOW - 0.1
    assert msg.feat.dtype == np.float16
    np.testing.assert_array_equal(msg.feat, feat.astype(np.float16))
    raw = msgpack.unpackb(payload)
    assert set(raw) == FEATURE_KEYS
    assert raw["dtype"] == "float16"
    assert raw["shape"] == [8]
    assert raw["feat"] == feat.astype("<f2").tobytes()  # little-endian raw bytes


def test_batch_of_one_is_accepted_and_bad_shapes_are_refused() -> None:
    feat = np.ones((1, DIMS["g1"]), np.float32)
    msg = decode(encode_features(SITE, "n", "g1", TICK, NOW, 0, HASH["g1"], feat))
    assert msg.feat.shape == (4,)
    with pytest.raises(ValueError, match="shape"):
        encode_features(SITE, "n", "g1", TICK, NOW, 0, HASH["g1"], np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="floating"):
        encode_features(SITE, "n", "g1", TICK, NOW, 0, HASH["g1"], np.ones(4, np.int32))


@given(
    hnp.arrays(
        np.float32,
        st.sampled_from([DIMS["g0"]]),
        elements=st.floats(-60000, 60000, width=32, allow_nan=False),
    ),
    st.integers(TICK - 10, TICK + 2),
    st.integers(0, 2**62 - 1),
)
def test_round_trip_equals_fp16_rounding(feat: np.ndarray, tick: int, seq: int) -> None:
    """What arrives is exactly what `modelgen eval` computes: the fp16 rounding."""
    msg = decode(encode_features(SITE, "n", "g0", tick, NOW, seq, HASH["g0"], feat))
    np.testing.assert_array_equal(msg.feat, feat.astype(np.float16))
    assert (msg.tick, msg.seq) == (tick, seq)


# --- every reason -----------------------------------------------------------------------------

CASES: list[tuple[str, bytes, dict[str, Any]]] = [
    ("oversized", b"\x00" * (LIMIT + 1), {}),
    ("oversized", pack(message()), {"max_bytes": 64}),
    ("malformed", b"\xc1", {}),
    ("malformed", pack(message())[:-3], {}),
    ("malformed", pack(message()) + b"\x00", {}),
    ("malformed", b"garbage that is not msgpack", {}),
    ("malformed", pack({1: 2}), {}),  # non-string map key
    ("malformed", pack(msgpack.ExtType(1, b"x")), {}),
    ("schema", pack([1, 2, 3]), {}),
    ("schema", pack(message(v="1")), {}),
    ("schema", pack({k: v for k, v in message().items() if k != "seq"}), {}),
    ("schema", pack({**message(), "extra": 1}), {}),
    ("schema", pack(message(tick="12")), {}),
    ("schema", pack(message(tick=True)), {}),
    ("schema", pack(message(tick=-1)), {}),
    ("schema", pack(message(seq=1.5)), {}),
    ("schema", pack(message(ts=float("nan"))), {}),
    ("schema", pack(message(ts="now")), {}),
    ("schema", pack(message(node="")), {}),
    ("schema", pack(message(node="x" * 300)), {}),
    ("schema", pack(message(feat="not bytes")), {}),
    ("schema", pack(message(shape="8")), {}),
    ("schema", pack(message()), {"topic_sub": "g1"}),
    ("wrong_node", pack(message()), {"topic_node": "someone-else"}),
    ("version", pack(message(v=2)), {}),
    ("site", pack(message(site="other")), {}),
    ("unknown_sub", pack(message(sub="g9")), {}),
    ("model_hash", pack(message(model="0000000000000000")), {}),
    ("dtype", pack(message(dtype="float32")), {}),
    ("shape", pack(message(shape=[9])), {}),
    ("shape", pack(message(shape=[1, 8])), {}),
    ("shape", pack(message(feat=b"\x00" * 14)), {}),
    ("non_finite", pack(message(feat=np.array([np.nan] + [0] * 7, "<f2").tobytes())), {}),
    ("non_finite", pack(message(feat=np.array([0] * 7 + [np.inf], "<f2").tobytes())), {}),
    ("tick_range", pack(message(tick=TICK + 3)), {}),
    ("tick_range", pack(message(tick=TICK - 11)), {}),
    ("tick_range", pack(message(tick=0)), {}),
]


@pytest.mark.parametrize(
    ("reason", "payload", "overrides"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_refused_with_reason(reason: str, payload: bytes, overrides: dict[str, Any]) -> None:
    assert reason_of(payload, **overrides) == reason


def test_every_reason_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(REASONS)


def test_fp16_overflow_is_refused_not_clipped() -> None:
    feat = np.full(DIMS["g0"], 1e6, np.float32)  # beyond fp16's 65504
    payload = encode_features(SITE, "n", "g0", TICK, NOW, 0, HASH["g0"], feat)
    assert reason_of(payload) == "non_finite"


def test_tick_window_edges_are_inclusive() -> None:
    for tick in (TICK - 10, TICK + 2):
        assert decode(pack(message(tick=tick))).tick == tick


def outcome(payload: bytes) -> Any:
    """The decoded message, or the WireError's reason; any other exception propagates."""
    try:
        return decode(payload)
    except WireError as exc:
        return exc.reason


@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_wire_error(payload: bytes) -> None:
    result = outcome(payload)
    assert result in REASONS or result.feat.shape == (DIMS[result.sub],)


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=40),
)
_value = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from([*sorted(FEATURE_KEYS), "x"]), _value))
def test_hostile_maps_only_ever_raise_wire_error(fields: dict[str, Any]) -> None:
    result = outcome(pack({**message(), **fields}))
    if isinstance(result, str):
        assert result in REASONS
    else:
        assert result.feat.shape == (DIMS[result.sub],)
        assert np.isfinite(result.feat).all()


# --- relay frames and results -----------------------------------------------------------------

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100 + b"\xff\xd9"


def test_frame_round_trip() -> None:
    frame = decode_frame(encode_frame(TICK, NOW, JPEG), max_bytes=LIMIT)
    assert (frame.tick, frame.ts, frame.jpeg) == (TICK, NOW, JPEG)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (encode_frame(TICK, NOW, b"\x89PNG not a jpeg"), "schema"),
        (encode_frame(TICK, NOW, JPEG * 100), "oversized"),
        (b"\xc1", "malformed"),
        (pack({"v": 2, "tick": 1, "ts": 1.0, "jpeg": JPEG}), "version"),
        (pack({"v": 1, "tick": 1, "ts": 1.0}), "schema"),
    ],
)
def test_bad_frames(payload: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        decode_frame(payload, max_bytes=LIMIT)
    assert err.value.reason == reason


def test_result_json() -> None:
    payload = encode_result(
        tick=TICK,
        ts=NOW,
        label="7",
        score=0.91234567,
        scores={"7": 0.91234567, "1": 0.08765433},
        complete=False,
        missing=["g1"],
        latency_ms=12.34567,
    )
    data = json.loads(payload)
    assert set(data) == {
        "tick",
        "ts",
        "label",
        "score",
        "scores",
        "complete",
        "missing",
        "latency_ms",
    }
    assert data["label"] == "7"
    assert data["score"] == 0.912346
    assert data["complete"] is False
    assert data["missing"] == ["g1"]
    assert math.isclose(data["latency_ms"], 12.346)
    with pytest.raises(ValueError, match="JSON"):
        encode_result(
            tick=1,
            ts=NOW,
            label="7",
            score=float("nan"),
            scores={},
            complete=True,
            missing=[],
            latency_ms=1,
        )


# --- topics -----------------------------------------------------------------------------------


def test_topics() -> None:
    assert topics.feat("home", "cam-1", "g0") == "edvit/home/node/cam-1/feat/g0"
    assert topics.feat_wildcard("home") == "edvit/home/node/+/feat/+"
    assert topics.result("home") == "edvit/home/result"
    assert topics.node_status("home", "cam-1") == "edvit/home/node/cam-1/status"
    assert topics.node_stats("home", "cam-1") == "edvit/home/node/cam-1/stats"
    assert topics.aggregator_status("home") == "edvit/home/aggregator/status"
    assert topics.aggregator_stats("home") == "edvit/home/aggregator/stats"
    assert topics.frame("home", "cam-1") == "edvit/home/frame/cam-1"
    assert topics.node_session("home", "cam-1") == "edvit/home/node/cam-1/session"
    assert topics.aggregator_session("home") == "edvit/home/aggregator/session"
    parse = topics.parse_feat_topic
    assert parse("home", "edvit/home/node/cam-1/feat/g3") == ("cam-1", "g3")
    assert parse("home", "edvit/other/node/cam-1/feat/g3") is None
    assert parse("home", "edvit/home/node/cam-1/feat/g3/x") is None
    assert parse("home", "edvit/home/node/cam-1/stats") is None
    assert parse("home", "edvit/home/node//feat/g3") is None
    assert (topics.ONLINE, topics.OFFLINE, topics.STOPPED) == ("online", "offline", "stopped")


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x\x00", " x", "x" * 65])
def test_topic_levels_are_checked(bad: str) -> None:
    with pytest.raises(IdError):
        topics.feat("home", "cam-1", bad)
    with pytest.raises(IdError):
        topics.feat("home", bad, "g0")
    with pytest.raises(IdError):
        topics.result(bad)
