"""`edge-node probe`, `edge-node devices` and `run --validate-config`, run as a user runs
them (the installed console script, as a subprocess), on image and WAV folders the tests
write, a camera device that is not there, and tests/fakes/picamera2 standing in for a
Raspberry Pi camera module (libcamera is hardware)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import soundfile as sf
import yaml

from edge_node.probe import Reading, list_devices, probe, v4l2_cameras
from edge_node.sources import MicrophoneSource
from edvit.preprocess import AudioPreprocess

from tiny import build_bundle, tiny_digits

REPO = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fakes"
BIN = Path(sys.executable).parent
RATE = 16000
LEVELS = (0, 100, 250)  # the grey level of image i


def edge_node(*args: str | Path, fakes: bool = False) -> subprocess.CompletedProcess[str]:
    """The edge-node script, on this tree's code (with the fake picamera2 if `fakes`)."""
    paths = [str(FAKES)] if fakes else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(REPO)])}
    return subprocess.run(
        [str(BIN / "edge-node"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site whose nodes read an image folder, a WAV folder, an absent camera, a Pi
    camera module, and another node's frames."""
    images = tmp_path / "images"
    images.mkdir()
    for i, level in enumerate(LEVELS):
        image = np.full((24, 32, 3), level, dtype=np.uint8)
        image[0, 0] = (level // 2, 0, 255)  # min and max differ from the mean
        assert cv2.imwrite(str(images / f"{i}.png"), image)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    t = np.arange(RATE) / RATE
    for i, amplitude in enumerate((0.5, 0.1)):
        sf.write(sounds / f"{i}.wav", amplitude * np.sin(2 * np.pi * 440 * t), RATE)
    cfg = {
        "site": "lab",
        "broker": {"host": "127.0.0.1"},
        "tick": {"period_s": 1.0},
        "nodes": {
            "cam": {"source": {"kind": "images", "folder": "images"}, "publish_frames": True},
            "mic": {"source": {"kind": "wav", "folder": "sounds"}},
            "usb": {"source": {"kind": "camera", "device": "/dev/video7"}},
            "pi": {"source": {"kind": "picamera", "width": 64, "height": 48}},
            "relay": {"source": {"kind": "relay", "camera": "cam"}},
            "gone": {"source": {"kind": "images", "folder": "missing"}},
        },
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


SAMPLE = re.compile(
    r"^sample (\d)/(\d): shape \((.*)\) (\w+), ([0-9.]+) ([a-z/]+), (.*) → (\S+)$", re.M
)


def test_probe_an_image_folder_writes_pngs(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "snaps"
    proc = edge_node("probe", "--config", site, "--node", "cam", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"node cam: images {tmp_path / 'images'}\n")
    lines = SAMPLE.findall(proc.stdout)
    assert [line[:4] for line in lines] == [
        (str(i + 1), "3", "24, 32, 3", "uint8") for i in range(3)
    ]
    for i, (*_, rate, unit, level, snapshot) in enumerate(lines):
        assert unit == "reads/s"
        assert float(rate) > 0
        mean = (LEVELS[i] * (24 * 32 * 3 - 3) + LEVELS[i] // 2 + 255) / (24 * 32 * 3)
        assert level == f"brightness mean {mean:.1f} min 0 max 255, item {i}.png"
        assert snapshot == str(out / f"cam-{i}.png")
        written = cv2.imread(snapshot)
        np.testing.assert_array_equal(written, cv2.imread(str(tmp_path / "images" / f"{i}.png")))
    assert proc.stdout.rstrip().endswith(
        "wrote " + ", ".join(str(out / f"cam-{i}.png") for i in range(3))
    )


def test_probe_a_wav_folder_writes_wavs(site: Path, tmp_path: Path) -> None:
    proc = edge_node(
        "probe", "--config", site, "--node", "mic", "--samples", "2", "--out", tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = SAMPLE.findall(proc.stdout)
    assert [line[:4] for line in lines] == [
        ("1", "2", f"{RATE},", "float32"),
        ("2", "2", f"{RATE},", "float32"),
    ]
    # a sine's RMS is its amplitude / sqrt(2): 0.5 → -9.0 dBFS, 0.1 → -23.0 dBFS
    assert lines[0][6] == "level -9.0 dBFS RMS, peak 0.500 (-6.0 dBFS), item 0.wav"
    assert lines[1][6] == "level -23.0 dBFS RMS, peak 0.100 (-20.0 dBFS), item 1.wav"
    for i, line in enumerate(lines):
        wave, rate = sf.read(line[7], dtype="float32")
        assert rate == RATE
        original, _ = sf.read(tmp_path / "sounds" / f"{i}.wav", dtype="float32")
        np.testing.assert_allclose(wave, original, atol=1e-6)


def test_probe_a_pi_camera_module(site: Path, tmp_path: Path) -> None:
    proc = edge_node("probe", "--config", site, "--node", "pi", "--out", tmp_path, fakes=True)
    assert proc.returncode == 0, proc.stderr
    lines = SAMPLE.findall(proc.stdout)
    assert [line[2:4] for line in lines] == [("48, 64, 3", "uint8")] * 3
    for *_, rate, unit, level, snapshot in lines:
        assert unit == "frames/s"
        assert 10 < float(rate) <= 110  # the fake delivers a frame every 10 ms
        assert level.startswith("brightness mean ")
        rgb = cv2.cvtColor(cv2.imread(snapshot), cv2.COLOR_BGR2RGB)
        assert rgb.shape == (48, 64, 3)
        assert (rgb[..., 0] == 200).all()  # the fake's red: delivered and saved as RGB
        assert (rgb[..., 1] == 64).all()


def test_probe_measures_a_microphone_rate(tmp_path: Path) -> None:
    """A microphone fed through its own PortAudio callback as a 16 kHz device would, in
    10 ms blocks of a constant 0.25: the probe measures 16,000 samples/s and that level."""
    import sounddevice as sd

    mic = MicrophoneSource(None, sample_rate=RATE, clip_samples=RATE // 2)
    stop = threading.Event()

    def device() -> None:
        block = np.full((RATE // 100, 1), 0.25, dtype=np.float32)
        next_due = time.monotonic()
        while not stop.is_set():
            mic.callback(block, len(block), None, sd.CallbackFlags())
            next_due += 0.01
            time.sleep(max(0.0, next_due - time.monotonic()))

    feeder = threading.Thread(target=device, daemon=True)
    feeder.start()
    got: list[Reading] = []
    try:
        spec = AudioPreprocess(sample_rate=RATE, clip_seconds=0.5)
        probe(
            mic, samples=2, out=tmp_path, stem="mic", spec=spec, report=lambda i, r: got.append(r)
        )
    finally:
        stop.set()
        feeder.join()
    assert [r.unit for r in got] == ["samples/s", "samples/s"]
    for reading in got:
        assert 0.8 * RATE < reading.rate < 1.2 * RATE, reading.rate
        assert reading.describe().startswith(f"shape ({RATE // 2},) float32, ")
        assert "level -12.0 dBFS RMS, peak 0.250 (-12.0 dBFS)" in reading.describe()
        wave, rate = sf.read(reading.snapshot, dtype="float32")
        assert rate == RATE
        assert wave.shape == (RATE // 2,)
    assert [r.snapshot.name for r in got] == ["mic-0.wav", "mic-1.wav"]


def test_probe_errors_name_the_key(site: Path, tmp_path: Path) -> None:
    def fails(node: str, *extra: str | Path, fakes: bool = False) -> str:
        proc = edge_node(
            "probe", "--config", site, "--node", node, "--out", tmp_path, *extra, fakes=fakes
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        return proc.stderr

    err = fails("usb")
    assert f"{site}: nodes.usb.source.device: camera /dev/video7: no such device" in err
    err = fails("gone")
    assert f"{site}: nodes.gone.source.folder: {tmp_path / 'missing'}: not a folder" in err
    err = fails("pi")  # no picamera2 here
    assert f"{site}: nodes.pi.source.camera: picamera 0: picamera2 is not installed" in err
    assert "edvit[pi-camera]" in err
    err = fails("relay")
    assert "nodes.relay.source.camera: a relay source gets its frames from node 'cam'" in err
    err = fails("nope")
    assert f"{site}: nodes: no node 'nope'" in err
    assert not list(tmp_path.glob("*.png"))  # nothing written for a source that failed
    (tmp_path / "a-file").touch()
    err = fails("cam", "--out", tmp_path / "a-file" / "snaps")
    assert f"edge-node probe: --out {tmp_path / 'a-file' / 'snaps'}: " in err


def test_devices_lists_what_is_there(tmp_path: Path) -> None:
    sysfs = tmp_path / "video4linux"
    for n, name in ((10, "bcm2835-isp"), (0, "USB Camera: USB Camera"), (2, "unicam-image")):
        (sysfs / f"video{n}").mkdir(parents=True)
        (sysfs / f"video{n}" / "name").write_text(name + "\n")
    assert v4l2_cameras(sysfs) == [
        {"kind": "camera", "device": "/dev/video0", "name": "USB Camera: USB Camera"},
        {"kind": "camera", "device": "/dev/video2", "name": "unicam-image"},
        {"kind": "camera", "device": "/dev/video10", "name": "bcm2835-isp"},
    ]
    assert v4l2_cameras(tmp_path / "none") == []
    found = list_devices(sysfs)
    assert set(found) == {"cameras", "microphones", "notes"}
    assert found["cameras"][:3] == v4l2_cameras(sysfs)

    # the command, on this host as it is (no camera, probably no microphone)
    proc = edge_node("devices", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert listed["cameras"] == v4l2_cameras()
    assert "picamera2 is not installed: Raspberry Pi camera modules not listed" in listed["notes"]
    for mic in listed["microphones"]:
        assert set(mic) == {"kind", "device", "name", "channels", "default_rate", "default"}
        assert mic["channels"] >= 1
    text = edge_node("devices")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("cameras:\n")
    assert "microphones:\n" in text.stdout
    if not listed["cameras"]:
        assert "cameras:\n  none found\n" in text.stdout

    # with a Pi camera module (the fake) it is listed with the config that selects it
    pi = edge_node("devices", fakes=True)
    assert pi.returncode == 0, pi.stderr
    assert "  picamera 0  imx708-fake0  (source: {kind: picamera, camera: 0})" in pi.stdout
    pi_json: dict[str, Any] = json.loads(edge_node("devices", "--json", fakes=True).stdout)
    assert {"kind": "picamera", "camera": 0, "name": "imx708-fake0", "id": "/base/fake/i2c@0"} in (
        pi_json["cameras"]
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle"), tiny_digits("tiny-probe"))


@pytest.mark.slow
def test_validate_config_opens_the_source(bundle: Path, site: Path, tmp_path: Path) -> None:
    text = site.read_text()
    for node in ("cam", "usb", "gone", "mic", "pi"):  # each runs all three sub-models
        text = text.replace(f"  {node}:\n", f"  {node}:\n    submodels: [g0, g1, g2]\n")
    site.write_text(text)

    def validate(node: str) -> subprocess.CompletedProcess[str]:
        return edge_node(
            "run", "--bundle", bundle, "--node", node, "--config", site, "--validate-config"
        )

    ok = validate("cam")
    assert ok.returncode == 0, ok.stderr
    assert "images source" in ok.stdout
    for node, message in (
        ("usb", f"{site}: nodes.usb.source.device: camera /dev/video7: no such device"),
        ("gone", f"{site}: nodes.gone.source.folder: {tmp_path / 'missing'}: not a folder"),
        ("mic", f"{site}: nodes.mic.source: the bundle's model takes images"),
    ):
        proc = validate(node)
        assert proc.returncode == 2, (node, proc.stdout, proc.stderr)
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
    # without picamera2 the service itself exits 2 (a restart cannot install it)
    pi = edge_node("run", "--bundle", bundle, "--node", "pi", "--config", site)
    assert pi.returncode == 2, pi.stderr
    assert f"{site}: nodes.pi.source.camera: picamera 0: picamera2 is not installed" in pi.stderr
    assert "Traceback" not in pi.stderr
    # and probe takes the bundle's preprocessing when given one
    proc = edge_node("probe", "--config", site, "--node", "mic", "--bundle", bundle)
    assert proc.returncode == 2
    assert "nodes.mic.source: the bundle's model takes images" in proc.stderr
