"""Capture sources on real files: videos written with cv2.VideoWriter, images written with
cv2, WAVs written with soundfile, real JPEG bytes, and the microphone's ring buffer fed
through its own callback. A file-backed VideoCapture stands in for a camera."""

from __future__ import annotations

import functools
import http.server
import importlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import soundfile as sf

from edge_node.sources import (
    SOURCES,
    AudioRing,
    CameraSource,
    ImagesSource,
    MicrophoneSource,
    MissingLibraryError,
    PicameraSource,
    RecordingSource,
    RelaySource,
    Sample,
    SourceError,
    VideoSource,
    WavSource,
    build_source,
    decode_jpeg,
    encode_jpeg,
)
from edvit.config import site
from edvit.preprocess import AudioPreprocess, ImagePreprocess, fix_length, preprocess

W, H = 32, 24
STEP = 5  # grey-level step between consecutive frames: MJPG keeps a flat frame within ±2


def rgb_frame(index: int) -> np.ndarray:
    """Frame `index` in RGB: red carries the index, blue its complement (so order shows)."""
    frame = np.zeros((H, W, 3), dtype=np.uint8)
    frame[:, :, 0] = index * STEP
    frame[:, :, 2] = 255 - index * STEP
    return frame


def frame_index(rgb: np.ndarray) -> int:
    """Inverse of rgb_frame, checking the channel order on the way."""
    red, blue = float(rgb[:, :, 0].mean()), float(rgb[:, :, 2].mean())
    assert abs(red + blue - 255) < 6, f"not an RGB frame of ours: R={red:.1f} B={blue:.1f}"
    return round(red / STEP)


def write_video(
    path: Path, frames: list[np.ndarray], fps: float = 25.0, fourcc: str = "MJPG"
) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (W, H))
    assert writer.isOpened(), f"VideoWriter cannot write {fourcc} to {path}"
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# --------------------------------------------------------------------------- video replay


@pytest.mark.parametrize("cache_mib", [64.0, 0.0], ids=["cached", "seeking"])
def test_video_tick_k_shows_frame_k_mod_n(tmp_path: Path, cache_mib: float) -> None:
    n = 20
    path = write_video(tmp_path / "clip.avi", [rgb_frame(i) for i in range(n)])
    with VideoSource(path, cache_mib=cache_mib) as src:
        assert isinstance(src, VideoSource)
        assert len(src) == n
        ticks = [0, 1, 2, 19, 20, 21, 45, 7, 3, 3, 100, -1]  # forwards, backwards, repeats
        for k in ticks:
            sample = src.read(k)
            assert sample is not None
            assert sample.tick == k
            assert sample.item == f"clip.avi#{k % n}"
            assert sample.data.shape == (H, W, 3)
            assert sample.data.dtype == np.uint8
            assert frame_index(sample.data) == k % n
        assert src.stats.reads == len(ticks)


def test_video_mp4v_red_frames_and_independent_agreement(tmp_path: Path) -> None:
    red = np.zeros((H, W, 3), dtype=np.uint8)
    red[:, :, 0] = 255
    path = write_video(tmp_path / "red.mp4", [red] * 6 + [rgb_frame(40)] * 6, fourcc="mp4v")
    a, b = VideoSource(path), VideoSource(path, cache_mib=0)
    with a, b:
        assert len(a) == len(b) == 12
        for k in (0, 5, 13, 30, 11):
            sa, sb = a.read(k), b.read(k)
            assert sa is not None
            assert sb is not None
            assert sa.item == sb.item
            np.testing.assert_allclose(sa.data, sb.data, atol=1)
        first = a.read(0)
        assert first is not None
        r, g, bl = (float(first.data[:, :, c].mean()) for c in range(3))
        assert r > 240
        assert g < 15
        assert bl < 15


def test_video_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nothing\.avi: no such video file"):
        VideoSource(tmp_path / "nothing.avi").open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match=r"junk\.avi"):
        VideoSource(junk).open()


# --------------------------------------------------------------------------- camera on a file


def test_camera_keeps_only_the_newest_frame(tmp_path: Path) -> None:
    n, fps = 50, 50.0
    path = write_video(tmp_path / "cam.avi", [rgb_frame(i) for i in range(n)], fps=fps)
    cam = CameraSource(str(path), backoff=(0.05, 0.2))
    assert cam.pace  # a file is paced like a live camera
    cam.open()
    try:
        seen: list[int] = []
        for k in range(5):
            time.sleep(0.1)
            before = time.time()
            sample = cam.read(k)
            assert sample is not None
            assert sample.tick == k
            assert sample.item is None
            assert before - 0.5 < sample.ts <= before + 0.01  # grab time, fresh
            seen.append(frame_index(sample.data))
        steps = np.diff(seen)
        # newest-frame: at 50 fps and a read every 0.1 s about 5 frames pass per read (a
        # queue would hand out 0, 1, 2, …); a wrap to the start of the file is a reopen
        forward = [s for s in steps if s > 0]
        assert forward, seen
        assert np.median(forward) >= 3, seen
        stats = cam.stats
        assert stats.frames_dropped >= 10
        assert stats.frames_in >= 15
        assert stats.reads == 5
        assert stats.misses == 0
    finally:
        cam.close()
    assert cam.read(99) is None  # closed: nothing stale is handed out
    assert not [t for t in threading.enumerate() if t.name.startswith("grab-")]


def test_camera_reopens_after_the_file_ends_or_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "cam.avi"
    write_video(path, [rgb_frame(2)] * 5, fps=50.0)  # 0.1 s, then the "camera" is lost
    cam = CameraSource(str(path), backoff=(0.05, 0.2))
    with cam:
        assert wait_until(lambda: cam.stats.reopens >= 2)
        sample = cam.read(0)
        assert sample is not None
        assert frame_index(sample.data) == 2
        replacement = write_video(tmp_path / "new.avi", [rgb_frame(30)] * 5, fps=50.0)
        os.replace(replacement, path)
        reopens = cam.stats.reopens

        def shows_new() -> bool:
            s = cam.read(1)
            return s is not None and frame_index(s.data) == 30

        assert wait_until(shows_new)
        assert cam.stats.reopens > reopens
        # the file disappears: reopen attempts fail (counted), reads go stale, no crash
        path.unlink()
        errors = cam.stats.errors
        assert wait_until(lambda: cam.stats.errors > errors)
    assert cam.stats.errors > errors


def test_camera_stale_frame_is_not_delivered(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cam.avi", [rgb_frame(1)] * 3, fps=50.0)
    cam = CameraSource(str(path), backoff=(1.0, 1.0), max_age=0.2)
    with cam:
        assert cam.read(0) is not None
        path.unlink()  # no reopen can succeed now
        assert wait_until(lambda: cam.read(1) is None, timeout=3.0)
        assert cam.stats.misses >= 1


def test_camera_errors_name_the_device(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=r"camera .*nope\.mp4: no such file"):
        CameraSource(str(missing)).open()
    with pytest.raises(SourceError, match=r"camera 7: OpenCV cannot open it"):
        CameraSource("7").open()  # "7" is a device index; no /dev/video7 here


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_camera_on_an_http_url_and_a_server_that_never_answers(tmp_path: Path) -> None:
    write_video(tmp_path / "cam.avi", [rgb_frame(i) for i in range(40)], fps=25.0)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()  # accepts connections, never sends a byte
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        port = server.server_address[1]
        cam = CameraSource(f"http://127.0.0.1:{port}/cam.avi", fps=25.0, pace=True)
        assert not cam.is_file
        with cam:
            time.sleep(0.2)
            sample = cam.read(0)
            assert sample is not None
            assert frame_index(sample.data) >= 2
        t0 = time.monotonic()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/cam.avi"
        with pytest.raises(SourceError, match=rf"camera {url}: OpenCV cannot open it"):
            CameraSource(url, open_timeout=1.0).open()
        assert time.monotonic() - t0 < 5  # the open timeout applies; no minutes-long hang
    finally:
        server.shutdown()
        server.server_close()
        silent.close()


# --------------------------------------------------------------------------- image folders


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr)


def test_images_are_rgb_sorted_and_replayed_mod_m(tmp_path: Path) -> None:
    red = np.zeros((10, 12, 3), dtype=np.uint8)
    red[:, :, 0] = 255
    gray = np.arange(80, dtype=np.uint8).reshape(8, 10)
    write_png(tmp_path / "b_red.png", red)
    write_png(tmp_path / "a_gray.png", gray)
    assert cv2.imwrite(str(tmp_path / "c_red.jpg"), cv2.cvtColor(red, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")

    src = ImagesSource(tmp_path, "*")
    other = ImagesSource(tmp_path, "*")  # started independently: must agree on every tick
    with src, other:
        assert src.items == ["a_gray.png", "b_red.png", "c_red.jpg"]
        for k in range(-2, 9):
            s, o = src.read(k), other.read(k)
            assert s is not None
            assert o is not None
            assert s.item == o.item == src.items[k % 3]
            np.testing.assert_array_equal(s.data, o.data)
        s_red = src.read(1)
        assert s_red is not None
        np.testing.assert_array_equal(s_red.data, red)  # pure red stays in channel 0
        s_gray = src.read(0)
        assert s_gray is not None
        assert s_gray.data.shape == (8, 10, 1)
        np.testing.assert_array_equal(s_gray.data[:, :, 0], gray)
        jpeg = src.read(2)
        assert jpeg is not None
        assert jpeg.data[:, :, 0].min() > 240
        assert jpeg.data[:, :, 2].max() < 15
        # what a node does next: the model input
        x = preprocess(ImagePreprocess(height=8, width=8, channels=3), s_red.data)
        assert x.shape == (3, 8, 8)


def test_images_pattern_errors_and_bad_files(tmp_path: Path) -> None:
    write_png(tmp_path / "cls0" / "x.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "cls1" / "y.png", np.full((4, 4, 3), 9, np.uint8))
    (tmp_path / "cls1" / "z.png").write_bytes(b"\x89PNG broken")
    with ImagesSource(tmp_path, "**/*.png") as src:
        assert isinstance(src, ImagesSource)
        assert src.items == ["cls0/x.png", "cls1/y.png", "cls1/z.png"]
        assert src.read(2) is None  # the broken file: logged, counted, the node goes on
        assert src.stats.errors == 1
        assert src.stats.misses == 1
        assert src.read(1) is not None
    with pytest.raises(SourceError, match=r"no image files matching '\*'"):
        ImagesSource(tmp_path, "*").open()  # only sub-folders at the top
    with pytest.raises(SourceError, match=r"missing: not a folder"):
        ImagesSource(tmp_path / "missing", "*").open()


# --------------------------------------------------------------------------- wav folders


def test_wav_44k_stereo_becomes_16k_mono_of_clip_length(tmp_path: Path) -> None:
    import librosa

    rate, clip = 16000, 16000
    t = np.arange(int(44100 * 1.5)) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.25 * np.sin(2 * np.pi * 1000 * t)
    sf.write(tmp_path / "long.wav", np.stack([left, right], axis=1), 44100)
    short = 0.3 * np.sin(2 * np.pi * 300 * np.arange(4410) / 44100)
    sf.write(tmp_path / "short.wav", np.stack([short, short], axis=1), 44100, subtype="FLOAT")
    sf.write(tmp_path / "mono16k.wav", 0.1 * np.ones(8000), 16000)

    with WavSource(tmp_path, sample_rate=rate, clip_samples=clip, pattern="**/*") as src:
        assert isinstance(src, WavSource)
        assert src.items == ["long.wav", "mono16k.wav", "short.wav"]
        for k in range(7):
            sample = src.read(k)
            assert sample is not None
            assert sample.item == src.items[k % 3]
            assert sample.data.dtype == np.float32
            assert sample.data.shape == (clip,)
        long = src.read(0)
        assert long is not None
        data, _ = sf.read(tmp_path / "long.wav", dtype="float32")
        want = fix_length(librosa.resample(data.mean(axis=1), orig_sr=44100, target_sr=rate), clip)
        np.testing.assert_allclose(long.data, want, atol=1e-6)  # centre crop of 1.5 s
        # the 1000 Hz right channel survives the mixdown at a quarter of full scale
        spectrum = np.abs(np.fft.rfft(long.data))
        freqs = np.fft.rfftfreq(clip, 1 / rate)
        assert sorted(freqs[np.argsort(spectrum)[-2:]].round()) == [440.0, 1000.0]
        shorter = src.read(2)
        assert shorter is not None
        assert np.count_nonzero(shorter.data) < 1700  # 0.1 s of sound, zero-padded
        assert abs(np.flatnonzero(shorter.data).mean() - clip / 2) < 50  # centred
        x = preprocess(AudioPreprocess(), long.data)
        assert x.shape == (1, 40, 101)


def test_wav_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no sound files"):
        WavSource(tmp_path, sample_rate=16000, clip_samples=100, pattern="**/*").open()
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    with WavSource(tmp_path, sample_rate=16000, clip_samples=100, pattern="**/*") as src:
        assert src.read(0) is None
        assert src.stats.errors == 1


# --------------------------------------------------------------------------- relay


def test_jpeg_round_trip_keeps_rgb() -> None:
    red = np.zeros((16, 20, 3), dtype=np.uint8)
    red[:, :, 0] = 255
    data = encode_jpeg(red, quality=90)
    assert data[:2] == b"\xff\xd8"  # a real JPEG
    back = decode_jpeg(data)
    assert back.shape == (16, 20, 3)
    assert back[:, :, 0].min() > 240
    assert back[:, :, 1:].max() < 15
    gray = decode_jpeg(encode_jpeg(np.full((8, 8), 77, np.uint8)))
    assert gray.shape == (8, 8, 1)
    assert abs(int(gray.mean()) - 77) <= 1
    with pytest.raises(ValueError, match="not a readable image"):
        decode_jpeg(b"garbage")
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(red, quality=0)


def test_relay_serves_the_tick_that_arrived() -> None:
    relay = RelaySource("cam-1", keep=3, wait=0.2)
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[:, :, 0] = 255
    with relay:
        assert relay.offer_jpeg(5, 1000.5, encode_jpeg(red))
        sample = relay.read(5)
        assert sample is not None
        assert sample.tick == 5
        assert sample.ts == 1000.5
        assert sample.item is None
        assert sample.data[:, :, 0].min() > 240
        assert sample.data[:, :, 2].max() < 15

        t0 = time.monotonic()
        assert relay.read(6) is None  # never arrived: waited `wait`, then gave up
        assert 0.15 <= time.monotonic() - t0 < 1.0

        # a frame arriving while read waits is delivered at once
        timer = threading.Timer(0.05, relay.offer, args=(7, 1.0, red))
        timer.start()
        t0 = time.monotonic()
        got = relay.read(7)
        timer.join()
        assert got is not None
        assert time.monotonic() - t0 < 0.18

        assert not relay.offer(6, 1.0, red)  # its tick was read already: late, dropped
        for tick in (8, 9, 10, 11):  # keep=3: tick 8 is evicted
            relay.offer(tick, 1.0, red)
        assert relay.read(8) is None
        assert relay.read(11) is not None  # 9 and 10 are skipped over and freed
        assert not relay.offer_jpeg(12, 1.0, b"not a jpeg")
        stats = relay.stats
    assert stats.errors == 1
    assert stats.frames_dropped == 1 + 1 + 2  # late 6, evicted 8, skipped 9 and 10
    assert stats.reads == 3
    assert stats.misses == 2


# --------------------------------------------------------------------------- microphone


def test_audio_ring_keeps_the_last_window_in_order() -> None:
    ring = AudioRing(10)
    assert ring.latest() is None
    ring.write(np.arange(4, dtype=np.float32))
    assert ring.latest() is None  # not a full window yet
    np.testing.assert_array_equal(ring.latest(3), [1, 2, 3])
    ring.write(np.arange(4, 13, dtype=np.float32))  # wraps around
    np.testing.assert_array_equal(ring.latest(), np.arange(3, 13))
    ring.write(np.arange(100, 125, dtype=np.float32))  # a block longer than the ring
    np.testing.assert_array_equal(ring.latest(), np.arange(115, 125))
    for start in range(125, 160, 7):  # many small wrapping writes
        ring.write(np.arange(start, start + 7, dtype=np.float32))
    np.testing.assert_array_equal(ring.latest(), np.arange(150, 160))
    assert ring.total == 4 + 9 + 25 + 35
    with pytest.raises(ValueError, match="does not fit"):
        ring.latest(11)


def test_microphone_callback_mixes_down_into_the_window() -> None:
    import sounddevice as sd

    mic = MicrophoneSource(None, sample_rate=16000, clip_samples=1600)
    assert mic.read(0) is None  # nothing heard yet
    rng = np.random.default_rng(0)
    blocks = [rng.uniform(-1, 1, (256, 2)).astype(np.float32) for _ in range(10)]
    for block in blocks:
        mic.callback(block, len(block), None, sd.CallbackFlags())
    flags = sd.CallbackFlags()
    flags.input_overflow = True
    mic.callback(blocks[0], 256, None, flags)
    sample = mic.read(3)
    assert isinstance(sample, Sample)
    assert sample.tick == 3
    assert abs(sample.ts - time.time()) < 1.0
    everything = np.concatenate([*blocks, blocks[0]]).mean(axis=1)
    np.testing.assert_allclose(sample.data, everything[-1600:], atol=1e-7)
    assert sample.data.dtype == np.float32
    assert sample.data.shape == (1600,)
    stats = mic.stats
    assert stats.frames_in == 11
    assert stats.frames_dropped == 1
    assert stats.reads == 1
    assert stats.misses == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("device", [None, "no-such-microphone"])
def test_microphone_open_without_a_device_fails_clearly(device: str | None) -> None:
    mic = MicrophoneSource(device, sample_rate=16000, clip_samples=16000)
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        mic.open()
    assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert message.startswith(f"microphone {device or '(default input)'}:")
    assert "python -m sounddevice" in message
    mic.close()  # harmless after a failed open


# --------------------------------------------------------------------------- picamera

FAKES = Path(__file__).resolve().parent / "fakes"


@pytest.fixture
def picamera2(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """tests/fakes/picamera2.py as `picamera2` (libcamera is hardware), fresh per test."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    module = importlib.import_module("picamera2")
    yield module
    sys.modules.pop("picamera2", None)


def test_picamera_delivers_the_newest_frame_in_rgb(picamera2: Any) -> None:
    cam = PicameraSource(0, width=32, height=24, fps=15.0, backoff=(0.05, 0.2))
    with cam:
        assert picamera2.EVENTS[:3] == ["open 0", "configure (32, 24) {'FrameRate': 15.0}", "start"]
        time.sleep(0.2)
        first = cam.read(0)
        time.sleep(0.2)
        second = cam.read(1)
        assert first is not None
        assert second is not None
        assert first.data.shape == (24, 32, 3)
        assert first.data.dtype == np.uint8
        # RGB888 is B, G, R in memory (B: the frame number): the source hands out R, G, B
        assert (first.data[..., 0] == 200).all()
        assert (first.data[..., 1] == 64).all()
        # newest frame only: ~20 frames were grabbed in 0.2 s, the read skips to the last
        assert int(second.data[0, 0, 2]) - int(first.data[0, 0, 2]) >= 5
        assert cam.stats.frames_dropped >= 5
        assert cam.stats.errors == 0
    assert picamera2.EVENTS[-2:] == ["stop", "close"]
    assert not [t for t in threading.enumerate() if t.name.startswith("grab-")]


def test_picamera_reopens_a_lost_camera(picamera2: Any) -> None:
    picamera2.FAIL_AFTER = 3  # every instance captures 3 frames, then "is unplugged"
    cam = PicameraSource(0, backoff=(0.05, 0.1))
    with cam:
        assert wait_until(lambda: cam.stats.reopens >= 2)
        assert cam.stats.errors >= 2
        assert cam.read(0) is not None  # the frames of a reopened camera are fresh
    opens = picamera2.EVENTS.count("open 0")
    assert opens >= 3
    assert picamera2.EVENTS.count("close") == opens  # every lost camera was released
    assert "configure (1280, 720) {}" in picamera2.EVENTS  # no size asked: the default


def test_picamera_errors_say_what_to_do(picamera2: Any) -> None:
    with pytest.raises(SourceError, match=r"^picamera 1: libcamera cannot open it \(IndexError"):
        PicameraSource(1).open()  # the fake has one camera, number 0
    assert "start" not in picamera2.EVENTS
    sys.modules["picamera2"] = None  # as if not installed (the fixture removes it)
    with pytest.raises(MissingLibraryError) as err:  # the node exits 2: no restart fixes it
        PicameraSource(0).open()
    message = str(err.value)
    assert message.startswith("picamera 0: picamera2 is not installed")
    assert "python3-picamera2" in message
    assert "edvit[pi-camera]" in message


# --------------------------------------------------------------------------- recording


BURSTS = ((2.0, 2.2), (4.6, 4.7))  # seconds into a 5 s recording; the second wraps round


def write_recording(path: Path, rate: int) -> None:
    """5 s of silence with a 1 kHz tone burst in each span of BURSTS."""
    t = np.arange(5 * rate) / rate
    wave = np.zeros_like(t)
    for start, end in BURSTS:
        on = (t >= start) & (t < end)
        wave[on] = 0.5 * np.sin(2 * np.pi * 1000 * t[on])
    sf.write(path, np.stack([wave, wave], axis=1), rate, subtype="FLOAT")


def loud_span(data: np.ndarray, rate: int) -> tuple[float, float] | None:
    """First and last loud instant of a window, in seconds from its start."""
    loud = np.flatnonzero(np.abs(data) > 0.25)
    return None if not len(loud) else (loud[0] / rate, loud[-1] / rate)


def test_recording_tick_hears_the_window_ending_at_its_time(tmp_path: Path) -> None:
    write_recording(tmp_path / "long.wav", 8000)  # resampled to the bundle's 16 kHz
    rate, period = 16000, 0.25
    with RecordingSource(
        tmp_path / "long.wav", sample_rate=rate, clip_samples=rate, period_s=period
    ) as src:
        assert src.duration_s == 5.0
        heard = {}
        for k in range(20):  # one loop of the file: 1 s windows every 0.25 s
            sample = src.read(k)
            assert sample is not None
            assert sample.data.shape == (rate,)
            assert sample.data.dtype == np.float32
            assert sample.item == f"long.wav@{k * period:.3f}"
            heard[k] = loud_span(sample.data, rate)
        # the first burst (2.0-2.2 s) is whole in the windows ending at 2.25 … 3.0 s
        for k in (9, 10, 11, 12):
            span = heard[k]
            assert span is not None
            assert span[0] == pytest.approx(2.0 - (k * period - 1), abs=0.003)
            assert span[1] - span[0] == pytest.approx(0.2, abs=0.003)
        # the second (4.6-4.7 s) is heard across the loop point, 0.1 s into [-0.5, 0.5]
        assert heard[2] == pytest.approx((0.1, 0.2), abs=0.003)
        assert heard[0] == pytest.approx((0.6, 0.7), abs=0.003)  # [4, 5]
        assert heard[19] == pytest.approx((0.85, 0.95), abs=0.003)  # [3.75, 4.75]
        silent = [k for k, span in heard.items() if span is None]
        assert silent == [3, 4, 5, 6, 7, 8, 13, 14, 15, 16, 17, 18]  # the others: no burst
        # a tick a day later hears what the tick of the same phase heard
        later = src.read(10 + 20 * 4 * 3600 * 24)
        again = src.read(10)
        assert later is not None
        assert again is not None
        np.testing.assert_array_equal(later.data, again.data)


def test_recording_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such sound file"):
        RecordingSource(tmp_path / "x.wav", sample_rate=16000, clip_samples=100, period_s=1).open()
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(SourceError, match=r"bad\.wav: not a readable sound file"):
        RecordingSource(
            tmp_path / "bad.wav", sample_rate=16000, clip_samples=100, period_s=1
        ).open()


# --------------------------------------------------------------------------- factory


IMAGE = ImagePreprocess(height=8, width=8)
AUDIO = AudioPreprocess(sample_rate=8000, clip_seconds=0.5)


def build(cfg: site.SourceConfig, spec: ImagePreprocess | AudioPreprocess) -> Any:
    return build_source(cfg, spec, period_s=0.25)


def test_build_source_builds_each_kind_from_its_config(tmp_path: Path) -> None:
    configs: list[site.SourceConfig] = [
        site.CameraSourceConfig(kind="camera", device="0", width=640, height=480, fps=15),
        site.PicameraSourceConfig(kind="picamera", camera=1, width=640, height=480),
        site.MicrophoneSourceConfig(kind="microphone"),
        site.VideoSourceConfig(kind="video", path=str(tmp_path / "clip.mp4")),
        site.ImagesSourceConfig(kind="images", folder=str(tmp_path / "imgs"), pattern="*.png"),
        site.WavSourceConfig(kind="wav", folder=str(tmp_path / "sounds")),
        site.RecordingSourceConfig(kind="recording", path=str(tmp_path / "long.wav")),
        site.RelaySourceConfig(kind="relay", camera="cam-1"),
    ]
    assert sorted(c.kind for c in configs) == sorted(SOURCES)
    for cfg in configs:
        src = build(cfg, AUDIO if SOURCES[cfg.kind].delivers == "audio" else IMAGE)
        assert type(src) is SOURCES[cfg.kind]
        assert src.kind == cfg.kind

    cam = build(site.CameraSourceConfig(kind="camera", device="0", width=640), IMAGE)
    assert isinstance(cam, CameraSource)
    assert (cam.device, cam.width, cam.height, cam.fps) == (0, 640, None, None)
    assert not cam.is_file
    file_cam = build(site.CameraSourceConfig(kind="camera", device=str(tmp_path / "c.avi")), IMAGE)
    assert isinstance(file_cam, CameraSource)
    assert file_cam.is_file
    assert file_cam.pace
    url_cam = build(site.CameraSourceConfig(kind="camera", device="rtsp://cam.local/s"), IMAGE)
    assert isinstance(url_cam, CameraSource)
    assert url_cam.device == "rtsp://cam.local/s"
    assert not url_cam.pace

    # the config's defaults are the sources' defaults
    write_png(tmp_path / "imgs" / "a.png", np.zeros((4, 4, 3), np.uint8))
    images = build(site.ImagesSourceConfig(kind="images", folder=str(tmp_path / "imgs")), IMAGE)
    assert isinstance(images, ImagesSource)
    assert (images.folder, images.pattern) == (tmp_path / "imgs", "*")
    with images:
        assert images.items == ["a.png"]
        assert images.read(0) is not None
    relay = build(site.RelaySourceConfig(kind="relay", camera="door-cam"), IMAGE)
    assert isinstance(relay, RelaySource)
    assert (relay.camera, relay.wait) == ("door-cam", 0.2)
    mic = build(site.MicrophoneSourceConfig(kind="microphone"), AUDIO)
    assert isinstance(mic, MicrophoneSource)
    assert (mic.device, mic.sample_rate, mic.clip_samples) == (None, 8000, 4000)
    wav = build(site.WavSourceConfig(kind="wav", folder=str(tmp_path)), AUDIO)
    assert isinstance(wav, WavSource)
    assert (wav.pattern, wav.sample_rate, wav.clip_samples) == ("**/*", 8000, 4000)
    rec = build(site.RecordingSourceConfig(kind="recording", path=str(tmp_path / "a.wav")), AUDIO)
    assert isinstance(rec, RecordingSource)
    assert (rec.path, rec.sample_rate, rec.clip_samples, rec.period_s) == (
        tmp_path / "a.wav",
        8000,
        4000,
        0.25,
    )


def test_build_source_refuses_a_source_the_model_cannot_take() -> None:
    with pytest.raises(
        SourceError,
        match=r"model takes audio; a 'camera' source delivers images "
        r"\(use one of \['microphone', 'recording', 'wav'\]\)",
    ):
        build(site.CameraSourceConfig(kind="camera", device=0), AUDIO)
    with pytest.raises(
        SourceError,
        match=r"model takes images; a 'wav' source delivers audio "
        r"\(use one of \['camera', 'images', 'picamera', 'relay', 'video'\]\)",
    ):
        build(site.WavSourceConfig(kind="wav", folder="x"), IMAGE)
    with pytest.raises(SourceError, match="model takes images; a 'microphone' source"):
        build(site.MicrophoneSourceConfig(kind="microphone"), IMAGE)
    with pytest.raises(SourceError, match="model takes audio; a 'relay' source"):
        build(site.RelaySourceConfig(kind="relay", camera="cam-1"), AUDIO)
