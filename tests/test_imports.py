"""The online side (edge_node, aggregator) and the shared `edvit` package work without torch.

Each package is imported, with every module pkgutil finds in it (so modules added later are
covered too), in a fresh interpreter where torch, torchvision, timm and modelgen cannot be
imported: a sys.meta_path finder raises ImportError for them, as on a Pi without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BLOCKED = ("torch", "torchvision", "timm", "modelgen")

_PROBE = """
import importlib, importlib.abc, json, pkgutil, sys, traceback

HIDDEN = {hidden!r}
WATCHED = {watched!r}

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ImportError(f"{{name}} is hidden by the test (no torch on this host)")
        return None

sys.meta_path.insert(0, Hide())
for name in WATCHED:
    assert name not in sys.modules, name

imported, failed = [], {{}}
def record_failure(name):
    failed[name] = traceback.format_exc()

top = {package!r}
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
print(json.dumps({{
    "imported": imported,
    "failed": failed,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in WATCHED),
}}))
"""

# Modules that must exist; discovery must at least find these.
EXPECTED = {
    "edge_node": {"edge_node", "edge_node.cli"},
    "aggregator": {"aggregator", "aggregator.cli"},
    "edvit": {"edvit", "edvit.cli", "edvit.config"},
}


def probe(package: str, hidden: tuple[str, ...]) -> dict[str, object]:
    """Import `package` and all its modules with `hidden` unimportable; report what loaded."""
    code = _PROBE.format(hidden=hidden, watched=BLOCKED, package=package)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_imports_without_torch(package: str) -> None:
    result = probe(package, BLOCKED)
    failed = result["failed"]
    assert isinstance(failed, dict)
    assert not failed, "\n".join(f"{name}:\n{tb}" for name, tb in failed.items())
    imported = result["imported"]
    assert isinstance(imported, list)
    assert EXPECTED[package] <= set(imported), f"discovery missed modules: {imported}"
    assert result["loaded"] == []


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_does_not_pull_in_torch_when_installed(package: str) -> None:
    """With torch available, importing these packages still leaves it (and modelgen) alone."""
    result = probe(package, ())
    assert result["failed"] == {}
    assert result["loaded"] == []


def test_the_blocker_really_blocks() -> None:
    """The finder hides torch: a package that needs it fails to import under the probe."""
    result = probe("modelgen", BLOCKED[:-1])
    failed = result["failed"]
    assert isinstance(failed, dict)
    assert any("hidden by the test" in tb for tb in failed.values())
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert not [m for m in loaded if m.split(".")[0] != "modelgen"]
