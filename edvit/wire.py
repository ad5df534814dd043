"""What travels over MQTT: feature messages, relay frames and results, and their validation.

Feature message, msgpack map, version 1 (topic `edvit/<site>/node/<node>/feat/<sub>`):

    v      1                      site   site id            node   publishing node id
    sub    sub-model id           tick   k (capture at k·period on the wall clock)
    ts     capture time, Unix s   seq    per-node counter   model  first 16 hex of the ONNX sha256
    dtype  "float16"              shape  [feature_dim]      feat   raw little-endian fp16 bytes

Everything arriving is untrusted: `decode_features` checks the size before parsing, parses
with msgpack limits, and refuses anything that is not exactly a v1 message of a known
sub-model of the running bundle. Each refusal is a WireError whose `reason` is one of
REASONS, so the aggregator counts drops by cause instead of crashing or logging floods.
fp16 halves the bytes; the offline evaluation rounds features the same way, so fused
predictions do not depend on which side of the wire they were computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import msgpack
import numpy as np
from numpy.typing import NDArray

from edvit.jsonfmt import compact_json

WIRE_VERSION: Final = 1
DTYPE: Final = "float16"
_FP16_LE = np.dtype("<f2")

Reason = Literal[
    "oversized",
    "malformed",
    "schema",
    "version",
    "site",
    "unknown_sub",
    "wrong_node",
    "model_hash",
    "dtype",
    "shape",
    "non_finite",
    "tick_range",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

FEATURE_KEYS: Final = frozenset(
    ("v", "site", "node", "sub", "tick", "ts", "seq", "model", "dtype", "shape", "feat")
)
FRAME_KEYS: Final = frozenset(("v", "tick", "ts", "jpeg"))
MAX_FRAME_BYTES: Final = 8 << 20  # a relayed JPEG frame larger than this is refused unread
_MAX_STR = 256  # ids and hashes are short; a long string is an attack or a bug
_MAX_TICK = 2**62


class WireError(Exception):
    """A message refused; `reason` is one of REASONS (a stats counter), `detail` says why."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason: Reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True, eq=False)
class FeatureMessage:
    """A validated feature message; `feat` is the (feature_dim,) float16 vector."""

    site: str
    node: str
    sub: str
    tick: int
    ts: float
    seq: int
    model: str
    feat: NDArray[np.float16]


@dataclass(frozen=True)
class Frame:
    """A relay frame: the JPEG a camera node captured at tick `tick`."""

    tick: int
    ts: float
    jpeg: bytes


# --- encoding ---------------------------------------------------------------------------------


def encode_features(
    site: str,
    node: str,
    sub: str,
    tick: int,
    ts: float,
    seq: int,
    model_hash: str,
    feat: NDArray[Any],
) -> bytes:
    """One sample's features as a v1 message; `feat` is (d,) or (1, d), any float dtype.

    Values are rounded to fp16 here; ones beyond fp16's range become infinity and the
    aggregator drops the message (non_finite) rather than fuse a clipped vector.
    """
    arr = np.asarray(feat)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"features must be (d,) or (1, d), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"features must be floating point, got {arr.dtype}")
    with np.errstate(over="ignore"):
        half = np.ascontiguousarray(arr, dtype=_FP16_LE)
    return _pack(
        {
            "v": WIRE_VERSION,
            "site": site,
            "node": node,
            "sub": sub,
            "tick": int(tick),
            "ts": float(ts),
            "seq": int(seq),
            "model": model_hash,
            "dtype": DTYPE,
            "shape": [int(half.shape[0])],
            "feat": half.tobytes(),
        }
    )


def encode_frame(tick: int, ts: float, jpeg: bytes) -> bytes:
    """A relay frame message: msgpack `{v, tick, ts, jpeg}`."""
    return _pack({"v": WIRE_VERSION, "tick": int(tick), "ts": float(ts), "jpeg": bytes(jpeg)})


def _pack(data: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(data, use_bin_type=True)
    return out


# --- decoding ---------------------------------------------------------------------------------


def _unpack(payload: bytes, max_bytes: int, keys: frozenset[str]) -> dict[str, Any]:
    """Size check, bounded msgpack parse, version and exact key set."""
    if len(payload) > max_bytes:
        raise WireError("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    try:
        data = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_bytes,
            max_str_len=min(max_bytes, 4096),
            max_array_len=64,
            max_map_len=64,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise WireError("malformed", f"not msgpack: {type(exc).__name__}: {exc}") from None
    except RecursionError:
        raise WireError("malformed", "nested too deeply") from None
    if not isinstance(data, dict):
        raise WireError("schema", f"expected a map at the top level, got {type(data).__name__}")
    version = data.get("v")
    if version != WIRE_VERSION:
        if isinstance(version, int) and not isinstance(version, bool):
            raise WireError("version", f"v={version}, this code reads v={WIRE_VERSION}")
        raise WireError("schema", f"'v' must be the integer {WIRE_VERSION}, got {version!r}")
    if set(data) != keys:
        missing = sorted(keys - set(data))
        extra = sorted(str(k)[:40] for k in set(data) - keys)
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unknown keys {extra}"] if extra else []
        )
        raise WireError("schema", "; ".join(parts))
    return data


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value or len(value) > _MAX_STR:
        raise WireError("schema", f"'{key}' must be a non-empty string of at most {_MAX_STR}")
    return value


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _MAX_TICK:
        raise WireError("schema", f"'{key}' must be an integer in 0…2^62, got {value!r}"[:200])
    return value


def _time(data: Mapping[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError("schema", f"'{key}' must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise WireError("schema", f"'{key}' must be finite, got {value}")
    return value


def decode_features(
    payload: bytes,
    *,
    site: str,
    expected: Mapping[str, tuple[str, int]],
    now: float,
    period_s: float,
    max_past: int,
    max_future: int,
    max_bytes: int,
    topic_sub: str | None = None,
    topic_node: str | None = None,
) -> FeatureMessage:
    """Validate and decode one feature message, or raise WireError with its reason.

    `expected` maps each sub-model id of the running bundle to (model hash, feature dim).
    The tick must lie within [now/period_s − max_past, now/period_s + max_future].
    `topic_sub` and `topic_node`, the sub-model and node the topic names, must match the
    payload's when given (the broker vouches for the topic: only that node's login may
    publish there).
    """
    data = _unpack(payload, max_bytes, FEATURE_KEYS)
    msg_site = _text(data, "site")
    node = _text(data, "node")
    sub = _text(data, "sub")
    model = _text(data, "model")
    dtype = _text(data, "dtype")
    tick = _integer(data, "tick")
    seq = _integer(data, "seq")
    ts = _time(data, "ts")
    shape = data["shape"]
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in shape
    ):
        raise WireError("schema", "'shape' must be a list of integers")
    feat = data["feat"]
    if not isinstance(feat, bytes):
        raise WireError("schema", f"'feat' must be bytes, got {type(feat).__name__}")
    if msg_site != site:
        raise WireError("site", f"site {msg_site!r}, this is site {site!r}")
    if topic_sub is not None and topic_sub != sub:
        raise WireError("schema", f"topic names sub-model {topic_sub!r}, payload {sub!r}")
    if topic_node is not None and topic_node != node:
        raise WireError("wrong_node", f"published by node {topic_node!r}, payload says {node!r}")
    if sub not in expected:
        raise WireError("unknown_sub", f"sub-model {sub!r} is not in the bundle")
    want_hash, dim = expected[sub]
    if model != want_hash:
        raise WireError(
            "model_hash", f"{sub}: model {model!r}, the bundle's is {want_hash!r} (other bundle?)"
        )
    if dtype != DTYPE:
        raise WireError("dtype", f"dtype {dtype!r}, expected {DTYPE!r}")
    if shape != [dim]:
        raise WireError("shape", f"{sub}: shape {shape[:4]}, expected [{dim}]")
    if len(feat) != 2 * dim:
        raise WireError("shape", f"{sub}: {len(feat)} feature bytes, expected {2 * dim}")
    values = np.frombuffer(feat, dtype=_FP16_LE)
    if not np.isfinite(values).all():
        raise WireError("non_finite", f"{sub}: features contain NaN or infinity")
    now_tick = now / period_s
    if not now_tick - max_past <= tick <= now_tick + max_future:
        raise WireError(
            "tick_range",
            f"tick {tick} is {tick - now_tick:+.1f} ticks from now "
            f"(allowed −{max_past}…+{max_future}); is the node's clock right?",
        )
    return FeatureMessage(
        site=msg_site,
        node=node,
        sub=sub,
        tick=tick,
        ts=ts,
        seq=seq,
        model=model,
        feat=values.astype(np.float16),
    )


def decode_frame(payload: bytes, *, max_bytes: int) -> Frame:
    """Validate and decode a relay frame, or raise WireError (oversized, malformed, …)."""
    data = _unpack(payload, max_bytes, FRAME_KEYS)
    tick = _integer(data, "tick")
    ts = _time(data, "ts")
    jpeg = data["jpeg"]
    if not isinstance(jpeg, bytes) or not jpeg.startswith(b"\xff\xd8"):
        raise WireError("schema", "'jpeg' must be the bytes of a JPEG image")
    return Frame(tick=tick, ts=ts, jpeg=jpeg)


# --- results ----------------------------------------------------------------------------------


def encode_result(
    *,
    tick: int,
    ts: float,
    label: str,
    score: float,
    scores: Mapping[str, float],
    complete: bool,
    missing: Sequence[str],
    latency_ms: float,
) -> bytes:
    """The JSON result on `edvit/<site>/result` (UTF-8, no NaN).

    `ts` is the capture time and `latency_ms` the time from capture to this result.
    """
    data = {
        "tick": int(tick),
        "ts": float(ts),
        "label": label,
        "score": round(float(score), 6),
        "scores": {name: round(float(p), 6) for name, p in scores.items()},
        "complete": bool(complete),
        "missing": list(missing),
        "latency_ms": round(float(latency_ms), 3),
    }
    return compact_json(data)
