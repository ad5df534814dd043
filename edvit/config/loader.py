"""Load YAML into pydantic models, reporting every problem as `file: key.path[3]: message`.

A config error must stop start-up with the exact key to fix, so pydantic's error locations
are rendered as key paths and, where the YAML has the key, its line number.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A config file that cannot be used; `problems` holds one `key.path: message` each."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


def key_path(loc: Sequence[int | str]) -> str:
    """Render a pydantic error location as `devices[3].memory_mib`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _node_at(root: yaml.Node | None, loc: Sequence[int | str]) -> yaml.Node | None:
    """The YAML node at a pydantic location, or the deepest one that exists."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
            if nxt is None:
                key = next((k for k, _ in node.value if k.value == part), None)
                return key or node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _describe(err: Any, root: yaml.Node | None) -> str:
    loc = tuple(err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    node = _node_at(root, loc)
    line = f" (line {node.start_mark.line + 1})" if node is not None else ""
    return f"{key_path(loc)}: {msg}{line}"


def parse_config(text: str, model: type[M], source: str = "<string>") -> M:
    """Validate YAML text against `model`; raise ConfigError naming every bad key."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of keys to values"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e, root) for e in exc.errors()]) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML syntax error on one line, with where the parser noticed it."""
    if isinstance(exc, yaml.MarkedYAMLError):
        what = ", ".join(p for p in (exc.context, exc.problem) if p)
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return f"not valid YAML: {what} (line {mark.line + 1}, column {mark.column + 1})"
    return f"not valid YAML: {' '.join(str(exc).split())}"


def read_text(path: str | Path) -> str:
    """A config file's text; ConfigError when it cannot be read or is not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path), [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]
        ) from None


def load_yaml(path: str | Path) -> object:
    """A YAML file as plain data, not validated; ConfigError when unreadable or not YAML."""
    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [_yaml_problem(exc)]) from None


def load_config(path: str | Path, model: type[M]) -> M:
    """Read and validate a YAML config file."""
    return parse_config(read_text(path), model, str(path))
