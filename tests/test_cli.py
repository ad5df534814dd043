"""The installed console scripts `modelgen` and `edvit`, run as a user runs them."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DEVICES = REPO / "config" / "devices.example.yaml"
BIN = Path(sys.executable).parent  # the venv's bin: where pip put the console scripts
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
MIB = 2**20

torch.set_num_threads(1)


def script(name: str) -> str:
    found = shutil.which(name, path=ENV["PATH"])
    assert found is not None, f"console script {name!r} is not installed next to {sys.executable}"
    return found


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd, *rest = (str(a) for a in args)
    return subprocess.run(
        [script(cmd), *rest], capture_output=True, text=True, env=ENV, timeout=120, check=False
    )


def run_json(*args: str | Path) -> dict[str, Any]:
    out = run(*args)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def assert_clean_failure(out: subprocess.CompletedProcess[str]) -> None:
    """Exit 2, a message on stderr, nothing on stdout, no traceback."""
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.strip()
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def timm_params(embed: int, heads: int, num_classes: int, depth: int = 12) -> int:
    with torch.device("meta"):
        model = VisionTransformer(
            embed_dim=embed,
            depth=depth,
            num_heads=heads,
            num_classes=num_classes,
            weight_init="skip",
        )
    return sum(p.numel() for p in model.parameters())


# --- modelgen stats -------------------------------------------------------------------------

STATS_FIELDS = {"arch", "heads", "embed_dim", "depth", "params", "size_mib", "gmacs", "gmacs_total"}


def test_stats_json() -> None:
    data = run_json(
        "modelgen", "stats", "--arch", "vit_base_patch16_224", "--num-classes", "10", "--json"
    )
    assert set(data) == STATS_FIELDS
    assert data["arch"] == "vit_base_patch16_224"
    assert (data["heads"], data["embed_dim"], data["depth"]) == (12, 768, 12)
    assert data["params"] == timm_params(768, 12, 10)
    assert data["size_mib"] == pytest.approx(data["params"] * 4 / MIB, rel=1e-12)
    assert data["size_mib"] == pytest.approx(327.38, rel=0.002)  # paper §5
    assert data["gmacs"] == pytest.approx(16.86, rel=0.005)  # paper Table 1
    assert data["gmacs_total"] > data["gmacs"]


def test_stats_submodel_heads() -> None:
    data = run_json(
        "modelgen",
        "stats",
        "--arch",
        "vit_base_patch16_224",
        "--heads",
        "3",
        "--num-classes",
        "10",
        "--json",
    )
    assert (data["heads"], data["embed_dim"], data["depth"]) == (3, 192, 12)
    assert data["params"] == timm_params(192, 3, 10)
    assert data["size_mib"] == pytest.approx(21.13, rel=0.01)  # paper Appendix E.2


def test_stats_custom_arch_and_text_output() -> None:
    arch = "vit:img=8,patch=2,chans=1,embed=64,depth=4,heads=4"
    data = run_json("modelgen", "stats", "--arch", arch, "--num-classes", "5", "--json")
    with torch.device("meta"):
        model = VisionTransformer(
            img_size=8,
            patch_size=2,
            in_chans=1,
            embed_dim=64,
            depth=4,
            num_heads=4,
            num_classes=5,
            weight_init="skip",
        )
    assert data["arch"] == "custom"
    assert data["params"] == sum(p.numel() for p in model.parameters())
    text = run("modelgen", "stats", "--arch", arch, "--num-classes", "5")
    assert text.returncode == 0
    assert f"{data['params']:,}" in text.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--arch", "resnet50", "--num-classes", "10"],
        ["--arch", "vit:img=8,patch=3,embed=64,depth=4,heads=4", "--num-classes", "10"],
        ["--arch", "vit:img=8,patch=2,embed=64,depth=4,heads=4,mlp=nan", "--num-classes", "10"],
        ["--arch", "vit_base_patch16_224", "--num-classes", "0"],
        ["--arch", "vit_base_patch16_224", "--num-classes", "ten"],
        ["--arch", "vit_base_patch16_224", "--num-classes", "10", "--heads", "0"],
    ],
)
def test_stats_bad_arguments_exit_2(args: list[str]) -> None:
    out = run("modelgen", "stats", *args, "--json")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip()


# --- modelgen plan --------------------------------------------------------------------------

PLAN_FIELDS = {
    "arch",
    "num_classes",
    "budget_mib",
    "rate_hz",
    "solver_used",
    "solver_note",
    "submodels",
    "total_mib",
    "devices",
    "assignment",
    "makespan_s",
}
SUB_FIELDS = {"id", "classes", "heads", "embed_dim", "size_mib", "gmacs"}
DEVICE_FIELDS = {"id", "memory_mib", "gmacs_per_s", "submodels", "used_mib", "latency_s"}


def test_plan_without_devices() -> None:
    data = run_json(
        "modelgen",
        "plan",
        "--arch",
        "vit_base_patch16_224",
        "--num-classes",
        "10",
        "--num-submodels",
        "3",
        "--budget-mib",
        "100",
        "--json",
    )
    assert set(data) >= PLAN_FIELDS
    assert data["arch"] == "vit_base_patch16_224"
    assert data["num_classes"] == 10
    assert data["budget_mib"] == 100
    assert data["rate_hz"] == 1
    assert data["devices"] is None
    assert data["assignment"] is None
    assert data["makespan_s"] is None
    subs = data["submodels"]
    assert [s["id"] for s in subs] == ["g0", "g1", "g2"]
    assert sorted(c for s in subs for c in s["classes"]) == list(range(10))
    for s in subs:
        assert set(s) >= SUB_FIELDS
        assert s["embed_dim"] == 64 * s["heads"]
    # Paper Appendix E.2: two 4-head sub-models and one 3-head, 95.45 MB together.
    assert sorted(s["heads"] for s in subs) == [3, 4, 4]
    assert data["total_mib"] == pytest.approx(sum(s["size_mib"] for s in subs), rel=1e-12)
    assert data["total_mib"] <= 100
    assert data["total_mib"] == pytest.approx(95.45, rel=0.01)


@pytest.mark.parametrize("solver", ["greedy", "optimal"])
def test_plan_with_example_devices(solver: str) -> None:
    """The paper's Appendix E.3 case through the command line."""
    data = run_json(
        "modelgen",
        "plan",
        "--arch",
        "vit_base_patch16_224",
        "--num-classes",
        "10",
        "--devices",
        EXAMPLE_DEVICES,
        "--budget-mib",
        "100",
        "--solver",
        solver,
        "--json",
    )
    assert set(data) >= PLAN_FIELDS
    assert data["solver_used"] == solver
    subs = {s["id"]: s for s in data["submodels"]}
    assert len(subs) == 10  # N defaults to the number of devices
    assert {s["heads"] for s in subs.values()} == {2}
    assert set(data["assignment"]) == set(subs)
    devices = data["devices"]
    assert [d["id"] for d in devices] == ["cam-1"] + [f"pi-{i}" for i in range(1, 10)]
    latencies = []
    for d in devices:
        assert set(d) >= DEVICE_FIELDS
        assert d["submodels"] == [s for s, dev in data["assignment"].items() if dev == d["id"]]
        used = sum(subs[s]["size_mib"] for s in d["submodels"])
        assert d["used_mib"] == pytest.approx(used, rel=1e-9, abs=1e-12)
        assert d["used_mib"] <= d["memory_mib"]
        gmacs = sum(subs[s]["gmacs"] for s in d["submodels"])
        assert gmacs <= d["gmacs_per_s"]  # 1 Hz
        assert d["latency_s"] == pytest.approx(gmacs / d["gmacs_per_s"], rel=1e-9, abs=1e-15)
        latencies.append(d["latency_s"])
    assert data["makespan_s"] == pytest.approx(max(latencies), rel=1e-12)
    assert data["makespan_s"] == pytest.approx(subs["g0"]["gmacs"] / 0.5, rel=1e-9)
    if solver == "greedy":  # Alg. 3 in the paper: 3 on the big device, 7 alone, 2 idle
        counts = sorted(len(d["submodels"]) for d in devices)
        assert counts == [0, 0] + [1] * 7 + [3]
        assert len(devices[0]["submodels"]) == 3


def test_plan_text_output() -> None:
    out = run(
        "modelgen",
        "plan",
        "--arch",
        "vit_base_patch16_224",
        "--num-classes",
        "10",
        "--devices",
        EXAMPLE_DEVICES,
        "--budget-mib",
        "100",
    )
    assert out.returncode == 0, out.stderr
    assert "cam-1" in out.stdout
    assert "makespan" in out.stdout


def test_plan_infeasible_exits_2_with_the_reason(tmp_path: Path) -> None:
    devices = tmp_path / "tiny.yaml"
    devices.write_text(
        "devices:\n"
        + "".join(f"  - {{id: d{i}, memory_mib: 2, gmacs_per_s: 5}}\n" for i in range(4))
    )
    out = run(
        "modelgen",
        "plan",
        "--arch",
        "vit_base_patch16_224",
        "--num-classes",
        "10",
        "--devices",
        devices,
        "--json",
    )
    assert_clean_failure(out)
    # g0 (3 classes + others) at one head, sized by timm; the largest device has 2 MiB.
    need = timm_params(64, 1, 4) * 4 / MIB
    assert f"sub-model g0 needs {need:.1f} MiB; the largest free device memory is 2.0 MiB" in (
        out.stderr
    )


def test_plan_over_budget_exits_2() -> None:
    out = run(
        "modelgen",
        "plan",
        "--arch",
        "vit_base_patch16_224",
        "--num-classes",
        "10",
        "--num-submodels",
        "2",
        "--budget-mib",
        "1",
        "--json",
    )
    assert_clean_failure(out)
    assert "budget" in out.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--rate-hz", "nan"],
        ["--rate-hz", "0"],
        ["--rate-hz", "inf"],
        ["--budget-mib", "nan"],
        ["--budget-mib", "-3"],
        ["--num-submodels", "11"],  # more groups than classes
    ],
)
def test_plan_bad_numbers_exit_2(extra: list[str]) -> None:
    args = ["--num-submodels", "2", *extra] if "--num-submodels" not in extra else extra
    out = run(
        "modelgen", "plan", "--arch", "vit_base_patch16_224", "--num-classes", "10", *args, "--json"
    )
    assert_clean_failure(out)


def test_plan_bad_devices_file_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "devices.yaml"
    bad.write_text(
        "devices:\n"
        "  - {id: a, memory_mib: 10, gmacs_per_s: 1}\n"
        "  - {id: b, memory_mib: -1, gmacs_per_s: 1}\n"
    )
    out = run(
        "modelgen",
        "plan",
        "--arch",
        "vit_base_patch16_224",
        "--num-classes",
        "10",
        "--devices",
        bad,
        "--json",
    )
    assert_clean_failure(out)
    assert f"{bad}: devices[1].memory_mib: " in out.stderr
    assert "(line 3)" in out.stderr


@pytest.mark.parametrize("content", [None, b"devices: [\n", b"\xff\xfe devices"])
def test_plan_unreadable_devices_file_exits_2(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "devices.yaml"
    if content is not None:
        path.write_bytes(content)
    out = run(
        "modelgen",
        "plan",
        "--arch",
        "vit_base_patch16_224",
        "--num-classes",
        "10",
        "--devices",
        path,
        "--json",
    )
    assert_clean_failure(out)
    assert str(path) in out.stderr


def test_plan_unknown_arch_exits_2() -> None:
    out = run(
        "modelgen",
        "plan",
        "--arch",
        "vit_enormous_patch16_224",
        "--num-classes",
        "10",
        "--num-submodels",
        "2",
        "--json",
    )
    assert_clean_failure(out)
    assert "vit_enormous_patch16_224" in out.stderr


def test_plan_json_is_strict_json() -> None:
    out = run(
        "modelgen",
        "plan",
        "--arch",
        "vit_small_patch16_224",
        "--num-classes",
        "7",
        "--num-submodels",
        "3",
        "--rate-hz",
        "2.5",
        "--json",
    )
    assert out.returncode == 0, out.stderr

    def reject(token: str) -> float:
        raise AssertionError(f"non-standard JSON number {token}")

    data = json.loads(out.stdout, parse_constant=reject)
    assert data["rate_hz"] == 2.5
    assert data["budget_mib"] is None
    assert all(math.isfinite(s["gmacs"]) for s in data["submodels"])


# --- edvit validate -------------------------------------------------------------------------


def test_validate_ok() -> None:
    out = run("edvit", "validate", EXAMPLE_DEVICES)
    assert out.returncode == 0, out.stderr
    assert f"{EXAMPLE_DEVICES}: ok" in out.stdout


def test_validate_reports_every_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "devices.yaml"
    bad.write_text("devices:\n  - id: a\n    memory_mib: 10\n    gmacs_per_s: 1\n    speed: 3\n")
    out = run("edvit", "validate", EXAMPLE_DEVICES, bad, tmp_path / "missing.yaml")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{EXAMPLE_DEVICES}: ok" in out.stdout
    assert f"{bad}: devices[0].speed: unknown key (line 5)" in out.stderr
    assert f"{tmp_path / 'missing.yaml'}: cannot read" in out.stderr


@pytest.mark.parametrize(
    "content", [b"- just\n- a list\n", b"colour: blue\n", b"devices: {\n", b"\xff\xfe\x00"]
)
def test_validate_rejects_non_configs(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "thing.yaml"
    path.write_bytes(content)
    out = run("edvit", "validate", path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert str(path) in out.stderr


def test_validate_with_kind(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("devices:\n  - {id: a, memory_mib: 0, gmacs_per_s: 1}\n")
    out = run("edvit", "validate", "--kind", "devices", path)
    assert out.returncode == 2
    assert f"{path}: devices[0].memory_mib: Input should be greater than 0 (line 2)" in out.stderr


def test_plan_takes_num_submodels_with_devices(tmp_path: Path) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text(
        "devices:\n"
        "  - {id: a, memory_mib: 100, gmacs_per_s: 2}\n"
        "  - {id: b, memory_mib: 100, gmacs_per_s: 1}\n"
    )
    cmd = ("modelgen", "plan", "--arch", "vit_base_patch16_224", "--num-classes", "10")
    plan = run_json(*cmd, "--devices", devices, "--num-submodels", "3", "--json")
    assert [s["id"] for s in plan["submodels"]] == ["g0", "g1", "g2"]
    assert set(plan["assignment"].values()) <= {"a", "b"}
    neither = run(*cmd)
    assert_clean_failure(neither)
    assert "--num-submodels" in neither.stderr
