"""Compact JSON as every payload and digest is written: no spaces, UTF-8, NaN refused.

NaN and Infinity are not JSON; a payload with them would break every subscriber's parser,
so they are an error here rather than a surprise there.
"""

from __future__ import annotations

import json
from typing import Any


def compact_json(data: Any, sort_keys: bool = False) -> bytes:
    """`data` as compact UTF-8 JSON bytes; ValueError on NaN or Infinity."""
    text = json.dumps(
        data, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=sort_keys
    )
    return text.encode("utf-8")
