"""JPEG bytes for relayed frames: what a camera node publishes and a relay node decodes."""

from __future__ import annotations

import cv2
import numpy as np

from edge_node.sources.base import UInt8Array
from edvit import media


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """An RGB (or grayscale) uint8 image → JPEG bytes, for relay frames on MQTT."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError("encode_jpeg expects a uint8 numpy image")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", media.rgb_to_bgr(rgb), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {rgb.shape} as JPEG")
    return bytes(buf)


def decode_jpeg(data: bytes) -> UInt8Array:
    """JPEG bytes → HWC uint8 RGB (HWx1 for a grayscale JPEG); ValueError if undecodable."""
    return media.decode_image(data, f"relay frame ({len(data)} bytes)")
