"""Content-keyed stage cache: a stage re-runs only when what it reads has changed.

A stage's key is the sha256 of its inputs' description (recipe sections, upstream keys,
the code version); its outputs live in `<cache>/<stage>-<key16>/`, complete once `DONE`
is written, so an interrupted build never leaves a half stage that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from modelgen import __version__ as CODE_VERSION

T = TypeVar("T")
R = TypeVar("R")


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

    def store(self, stage: str, key: str, write: Callable[[Path], None]) -> Path:
        """`write` the stage's outputs into a fresh, empty directory, then mark it complete."""
        d = self.path(stage, key)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        write(d)
        (d / "DONE").write_text(key)
        return d

    def stage(
        self,
        stage: str,
        key: str,
        compute: Callable[[], T],
        save: Callable[[T, Path], None],
        load: Callable[[Path], R],
    ) -> R:
        """`load` of the stage's directory; unless cached, `save(compute(), dir)` fills it first.

        Always `load`, also right after computing, so a fresh and a cached run go on from the
        same (saved) values.
        """
        if not self.done(stage, key):
            value = compute()
            self.store(stage, key, lambda d: save(value, d))
        return load(self.path(stage, key))
