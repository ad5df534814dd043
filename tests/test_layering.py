"""The layering the design promises: which package may import what.

`edvit` is the ground floor every host installs: it imports none of the other packages nor
anything of the training or node extras (OpenCV and librosa only inside the functions that
decode a sample; `edvit demo` starts the other parts, and its broker, as processes). A node
installs `edvit[node]`: no torch and no modelgen. The aggregator installs
`edvit[aggregator]`: numpy and safetensors, nothing of the node or the training side.

Each package is imported, with every module pkgutil finds in it (so modules added later are
covered too), in a fresh interpreter where its forbidden imports are blocked
(tests/blocker.py); an attempt fails the test even where the code would survive its
ImportError.
"""

from __future__ import annotations

import json

import pytest

from blocker import Blocked, run_blocked

TRAINING = ("torch", "torchvision", "timm", "onnx")
NODE = ("onnxruntime", "cv2", "librosa", "soundfile", "sounddevice")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "edvit": ("modelgen", "edge_node", "aggregator", *TRAINING, *NODE, "amqtt"),
    # the audio front-end is numpy alone (edvit.melspec): no librosa stack on a node
    "edge_node": ("modelgen", "aggregator", *TRAINING, "librosa", "scipy", "numba"),
    "aggregator": ("modelgen", "edge_node", *TRAINING, *NODE),
}

# Modules that must exist; discovery must at least find these.
EXPECTED = {
    "edge_node": {"edge_node", "edge_node.cli", "edge_node.app"},
    "aggregator": {"aggregator", "aggregator.cli", "aggregator.app"},
    "edvit": {"edvit", "edvit.cli", "edvit.config", "edvit.preprocess", "edvit.demo.run"},
}

_IMPORT_ALL = """
import importlib, json, pkgutil, sys, traceback

imported, failed = [], {}
def record_failure(name):
    failed[name] = traceback.format_exc()

top = sys.argv[1]
try:
    pkg = importlib.import_module(top)
    imported.append(top)
    for info in pkgutil.walk_packages(pkg.__path__, top + ".", onerror=record_failure):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception:
            record_failure(info.name)
except Exception:
    record_failure(top)
print(json.dumps({"imported": imported, "failed": failed}))
"""


def import_all(package: str, blocked: tuple[str, ...]) -> tuple[dict[str, object], Blocked]:
    """Import `package` and all its modules with `blocked` unimportable."""
    run = run_blocked(_IMPORT_ALL, blocked, package)
    assert run.proc.returncode == 0, run.proc.stderr
    result: dict[str, object] = json.loads(run.proc.stdout.strip().splitlines()[-1])
    return result, run


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_what_its_layer_allows(package: str) -> None:
    result, run = import_all(package, FORBIDDEN[package])
    failed = result["failed"]
    assert isinstance(failed, dict)
    assert not failed, "\n".join(f"{name}:\n{tb}" for name, tb in failed.items())
    imported = result["imported"]
    assert isinstance(imported, list)
    assert EXPECTED[package] <= set(imported), f"discovery missed modules: {imported}"
    assert run.attempts == []


def test_the_blocker_really_blocks() -> None:
    """A package that needs torch fails to import under the blocker, and the attempt shows."""
    result, run = import_all("modelgen", ("torch",))
    failed = result["failed"]
    assert isinstance(failed, dict)
    assert any("torch is blocked by the test" in tb for tb in failed.values())
    assert "torch" in run.attempts
