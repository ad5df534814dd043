"""The unit files: valid for systemd (with their ExecStart binaries present) and hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edvit.service import FATAL_EXITS

UNITS = Path(__file__).resolve().parent.parent / "systemd"
BIN = Path(sys.executable).parent
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _installed(tmp_path: Path, name: str, instance: str | None = None) -> Path:
    """The unit as installed here: ExecStart pointing at this venv's console scripts."""
    text = (UNITS / name).read_text().replace("/opt/edvit/venv/bin", str(BIN))
    (tmp_path / name).write_text(text)
    if instance is not None:
        target = tmp_path / name.replace("@.", f"@{instance}.")
        target.write_text(text)
        return target
    return tmp_path / name


@pytest.mark.parametrize(
    ("name", "instance"), [("edvit-node@.service", "cam-1"), ("edvit-aggregator.service", None)]
)
def test_unit_verifies(tmp_path: Path, name: str, instance: str | None) -> None:
    unit = _installed(tmp_path, name, instance)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    # and verify does fail on a unit whose program is missing
    broken = tmp_path / "broken" / unit.name
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace(str(BIN), "/nonexistent/bin"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0


@pytest.mark.parametrize("name", ["edvit-node@.service", "edvit-aggregator.service"])
def test_unit_exposure_is_low(name: str) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert found is not None, proc.stdout + proc.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE


@pytest.mark.parametrize("name", ["edvit-node@.service", "edvit-aggregator.service"])
def test_unit_runs_as_the_design_says(name: str) -> None:
    s = _settings(UNITS / name)
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"]
    assert float(s["WatchdogSec"][0]) > 0
    assert s["DynamicUser"] == ["yes"]
    assert any(c.startswith("mqtt-password:") for c in s["LoadCredential"])
    # the password file is optional: its SetCredential= fallback reads as "no password"
    assert s["SetCredential"] == ["mqtt-password:\\n"]
    assert set(s["RestartPreventExitStatus"][0].split()) == {str(c) for c in FATAL_EXITS}
    after = " ".join(s["After"]).split()
    assert "network-online.target" in after
    # ticks are wall-clock times: wait for the first NTP sync, not just time-sync.target
    assert {"time-sync.target", "systemd-time-wait-sync.service"} <= set(after)
    assert "systemd-time-wait-sync.service" in " ".join(s["Wants"]).split()
    assert not any("password" in v.lower() for v in s.get("Environment", []))
    if name.startswith("edvit-node"):
        assert set(" ".join(s["SupplementaryGroups"]).split()) >= {"video", "audio"}
        assert "--node %i" in s["ExecStart"][0]
        # USB cameras, microphones and the Pi camera module (libcamera)
        allowed = {d.split()[0] for d in s["DeviceAllow"]}
        assert allowed >= {"char-video4linux", "char-alsa", "char-media", "char-dma_heap"}
