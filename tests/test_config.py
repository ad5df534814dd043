"""The config loader: every problem is a ConfigError naming the file, the key path and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edvit.cli import main as edvit_main
from edvit.config import ConfigError, Device, DeviceKind, DevicesFile, key_path, load_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "config").rglob("*.yaml")) + sorted((REPO / "config").rglob("*.yml"))

GOOD = """\
devices:
  - {id: cam-1, memory_mib: 30, gmacs_per_s: 1.6, kind: camera}
  - id: pi-1
    memory_mib: 10
    gmacs_per_s: 0.5
"""


def write(tmp_path: Path, text: str | bytes, name: str = "devices.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    """The error lines of loading `path` as a devices file (which must fail)."""
    with pytest.raises(ConfigError) as err:
        load_config(path, DevicesFile)
    exc = err.value
    assert exc.source == str(path)
    assert exc.problems
    lines = str(exc).splitlines()
    assert lines == [f"{path}: {p}" for p in exc.problems]
    return exc.problems


def test_good_file_loads(tmp_path: Path) -> None:
    devices = load_config(write(tmp_path, GOOD), DevicesFile).devices
    assert devices == [
        Device(id="cam-1", memory_mib=30, gmacs_per_s=1.6, kind=DeviceKind.camera),
        Device(id="pi-1", memory_mib=10, gmacs_per_s=0.5, kind=DeviceKind.compute),
    ]


def test_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "    colour: red\n")
    assert problems(path) == ["devices[1].colour: unknown key (line 6)"]


def test_unknown_key_in_flow_mapping(tmp_path: Path) -> None:
    text = GOOD.replace("kind: camera}", "kind: camera, zoom: 2}")
    assert problems(write(tmp_path, text)) == ["devices[0].zoom: unknown key (line 2)"]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "site: home\n")
    assert problems(path) == ["site: unknown key (line 6)"]


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("memory_mib: 10", "memory_mib: lots"))
    [problem] = problems(path)
    assert problem.startswith("devices[1].memory_mib: ")
    assert "number" in problem
    assert problem.endswith("(line 4)")


def test_negative_value(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("gmacs_per_s: 0.5", "gmacs_per_s: -0.5"))
    assert problems(path) == ["devices[1].gmacs_per_s: Input should be greater than 0 (line 5)"]


def test_zero_memory_in_flow_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("memory_mib: 30", "memory_mib: 0"))
    assert problems(path) == ["devices[0].memory_mib: Input should be greater than 0 (line 2)"]


def test_bad_kind_and_id(tmp_path: Path) -> None:
    text = GOOD.replace("kind: camera", "kind: lidar").replace("id: pi-1", "id: pi 1")
    found = problems(write(tmp_path, text))
    assert len(found) == 2, "every problem is reported, not only the first"
    assert found[0].startswith("devices[0].kind: ")
    assert "camera" in found[0]
    assert found[0].endswith("(line 2)")
    assert found[1].startswith("devices[1].id: ")
    assert found[1].endswith("(line 3)")


def test_missing_key_points_at_its_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    gmacs_per_s: 0.5\n", ""))
    assert problems(path) == ["devices[1].gmacs_per_s: Field required (line 3)"]


def test_duplicate_device_id(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "  - {id: cam-1, memory_mib: 5, gmacs_per_s: 1}\n")
    [problem] = problems(path)
    assert problem.startswith("devices")
    assert "'cam-1'" in problem
    assert "more than once" in problem
    assert "(line " in problem


def test_empty_device_list(tmp_path: Path) -> None:
    [problem] = problems(write(tmp_path, "devices: []\n"))
    assert problem.startswith("devices: ")
    assert "at least 1" in problem
    assert problem.endswith("(line 1)")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    text = GOOD.replace("kind: camera}", "kind: camera")  # unclosed flow mapping
    [problem] = problems(write(tmp_path, text))
    assert "YAML" in problem
    assert "line 3" in problem  # where the parser noticed


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n", "", "# only a comment\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    [problem] = problems(write(tmp_path, text))
    assert problem.startswith("(top level): ")
    assert "mapping" in problem


def test_missing_file(tmp_path: Path) -> None:
    [problem] = problems(tmp_path / "nowhere.yaml")
    assert "cannot read" in problem


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    [problem] = problems(tmp_path)
    assert "cannot read" in problem


def test_not_utf8(tmp_path: Path) -> None:
    [problem] = problems(write(tmp_path, GOOD.encode() + b"# \xff\xfe\n"))
    assert "UTF-8" in problem


def test_key_path() -> None:
    assert key_path(("devices", 3, "memory_mib")) == "devices[3].memory_mib"
    assert key_path(("devices", 0)) == "devices[0]"
    assert key_path(("a", "b", 1, 2, "c")) == "a.b[1][2].c"
    assert key_path(()) == "(top level)"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_example_configs_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every YAML under config/ passes `edvit validate` (which picks the model by its keys)."""
    code = edvit_main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ok" in out


def test_examples_exist() -> None:
    assert REPO / "config" / "devices.example.yaml" in EXAMPLES
    assert load_config(REPO / "config" / "devices.example.yaml", DevicesFile).devices
