"""Content-keyed stage cache: a stage re-runs only when what it reads has changed.

A stage's key is the sha256 of its inputs' description (recipe sections, upstream keys,
the code version); its outputs live in `<cache>/<stage>-<key16>/`, complete once `DONE`
is written, so an interrupted build never leaves a half stage that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from modelgen import __version__ as CODE_VERSION


def content_key(*parts: Any) -> str:
    blob = json.dumps([CODE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key[:16]}"

    def done(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / "DONE").is_file()

    def begin(self, stage: str, key: str) -> Path:
        """A fresh, empty directory for the stage's outputs."""
        d = self.path(stage, key)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def finish(self, stage: str, key: str) -> None:
        (self.path(stage, key) / "DONE").write_text(key)
