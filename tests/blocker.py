"""Run Python code in a fresh interpreter where some top-level packages cannot be imported.

A sys.meta_path finder, installed before the code runs, raises ImportError for the blocked
names (as on a Pi without torch) and records every attempt, so an import that a
`try/except ImportError` swallows is caught too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PRELUDE = """
import atexit, importlib.abc, json, sys

_BLOCKED = frozenset({blocked!r})
_ATTEMPTS = []

class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            _ATTEMPTS.append(name)
            raise ImportError(f"{{name}} is blocked by the test")
        return None

_early = sorted(m for m in sys.modules if m.split(".")[0] in _BLOCKED)
if _early:
    raise SystemExit(f"already imported before the blocker: {{_early}}")
sys.meta_path.insert(0, _Blocker())

def _report():
    with open({report!r}, "w") as f:
        json.dump(_ATTEMPTS, f)

atexit.register(_report)
"""


@dataclass(frozen=True)
class Blocked:
    """How the code ran, and the blocked imports it attempted (in order)."""

    proc: subprocess.CompletedProcess[str]
    attempts: list[str]


def run_blocked(code: str, blocked: Iterable[str], *args: str, timeout: float = 120) -> Blocked:
    """Run `code` (with `args` as sys.argv[1:]) in a fresh interpreter with `blocked` hidden."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "attempts.json"
        prelude = _PRELUDE.format(blocked=sorted(blocked), report=str(report))
        proc = subprocess.run(
            [sys.executable, "-c", prelude + code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=os.environ,
        )
        attempts = json.loads(report.read_text()) if report.exists() else []
    return Blocked(proc, attempts)
