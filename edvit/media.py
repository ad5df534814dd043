"""Image and sound files (and JPEG bytes) as the arrays `edvit.preprocess` expects.

One reader for training (`modelgen.datasets`) and for the nodes' replay and relay sources
(`edge_node.sources`), so a file replayed on a node gives exactly the training sample:
images HWC uint8 RGB (HWx1 for grayscale), sound mono float32 at the wanted rate.
OpenCV, soundfile and soxr are imported only by the function that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

UInt8Array = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
"""Image files `read_image` reads (lower case): the training loaders and replay sources agree."""
SOUND_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})
"""Sound files `read_wav` reads (libsndfile's formats the nodes and the training accept)."""


class MediaError(ValueError):
    """A file or buffer that is not a usable image or sound; the message names it."""


def bgr_to_rgb(image: np.ndarray) -> UInt8Array:
    """OpenCV's BGR/BGRA/gray → RGB HWC (C = 3), or HWx1 for gray; uint8."""
    import cv2

    if image.dtype != np.uint8:
        # 16-bit PNG/TIFF: keep the top 8 bits, as IMREAD_ANYCOLOR does for files
        image = (image.astype(np.float32) * (255.0 / float(np.iinfo(image.dtype).max))).round()
        image = image.astype(np.uint8)
    if image.ndim == 2:
        return np.ascontiguousarray(image[:, :, None])
    if image.shape[2] == 1:
        return np.ascontiguousarray(image)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return np.asarray(cv2.cvtColor(image, code), dtype=np.uint8)


def rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    """RGB HWC (or gray) → what OpenCV writes."""
    import cv2

    if image.ndim == 2 or image.shape[2] == 1:
        return np.ascontiguousarray(image)
    if image.shape[2] != 3:
        raise MediaError(f"expected HW, HWx1 or HWx3 (RGB), got shape {image.shape}")
    return np.asarray(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))


def decode_image(data: bytes | np.ndarray, what: str) -> UInt8Array:
    """Encoded image bytes (PNG, JPEG, …) → HWC uint8 RGB; `what` names them in errors."""
    import cv2

    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    image: Any = cv2.imdecode(raw, cv2.IMREAD_ANYCOLOR) if raw.size else None
    if image is None:
        raise MediaError(f"{what}: not a readable image (OpenCV cannot decode it)")
    return bgr_to_rgb(image)


def read_image(path: Path) -> UInt8Array:
    """An image file as HWC uint8 RGB.

    np.fromfile + imdecode rather than imread: imread returns None without saying why
    (missing, unreadable or undecodable), and fails on non-ASCII paths on some platforms.
    """
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise MediaError(f"{path}: cannot read: {exc.strerror}") from None
    return decode_image(raw, str(path))


def resample(wave: FloatArray, rate: int, target: int) -> FloatArray:
    """soxr's HQ resampler (librosa's default): band-limited and deterministic."""
    if rate == target:
        return wave
    import soxr

    out = soxr.resample(wave, rate, target, quality="soxr_hq")
    return np.ascontiguousarray(out, dtype=np.float32)


def read_wav(path: Path, sample_rate: int) -> FloatArray:
    """A sound file as a mono float32 waveform at `sample_rate` (channels averaged)."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise MediaError(f"{path}: not a readable sound file ({exc})") from None
    if data.shape[0] == 0:
        raise MediaError(f"{path}: sound file has no samples")
    return resample(mono(data), int(rate), sample_rate)


def mono(frames: np.ndarray) -> FloatArray:
    """(samples, channels) as soundfile reads them → one float32 channel, their mean."""
    return np.ascontiguousarray(frames.mean(axis=1, dtype=np.float32), dtype=np.float32)


def write_image(path: Path, rgb: np.ndarray) -> None:
    """An RGB (or HWx1) uint8 image as a file whose format the suffix names (PNG: lossless)."""
    import cv2

    if not cv2.imwrite(str(path), rgb_to_bgr(rgb)):
        raise MediaError(f"{path}: OpenCV could not write the image")


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """A mono waveform as 32-bit float WAV: read back, it gives the very same samples."""
    import soundfile as sf

    sf.write(str(path), np.asarray(wave, dtype=np.float32), sample_rate, subtype="FLOAT")
