"""Load YAML into pydantic models, reporting every problem as `file: key.path[3]: message`.

A config error must stop start-up with the exact key to fix, so pydantic's error locations
are rendered as key paths and, where the YAML has the key, its line number. A key given
twice is an error too: plain YAML loaders keep the second silently.
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


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping that gives the same key twice (where the second one is)."""

    def __init__(self, path: str, key: yaml.Node, first: yaml.Node) -> None:
        super().__init__(
            problem=f"duplicate key (line {key.start_mark.line + 1}, first on line "
            f"{first.start_mark.line + 1}); YAML would keep the second silently, remove one",
            problem_mark=key.start_mark,
        )
        self.key_path = path


def _check_duplicates(node: yaml.Node, loc: tuple[int | str, ...] = ()) -> None:
    """Raise DuplicateKeyError for the first mapping key given twice, anywhere under `node`."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, (*loc, i))
    elif isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, Any], yaml.Node] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            ident = (key.tag, key.value if isinstance(key, yaml.ScalarNode) else id(key))
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            if ident in seen:
                raise DuplicateKeyError(key_path((*loc, name)), key, seen[ident])
            seen[ident] = key
            _check_duplicates(value, (*loc, name))


def _load(text: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree and its plain data (safe types only); YAMLError when not YAML
    or a key is given twice."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_duplicates(root)
        return root, loader.construct_document(root)
    finally:
        loader.dispose()


def parse_config(text: str, model: type[M], source: str = "<string>") -> M:
    """Validate YAML text against `model`; raise ConfigError naming every bad key."""
    try:
        root, data = _load(text)
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
    if isinstance(exc, DuplicateKeyError):
        return f"{exc.key_path}: {exc.problem}"
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
        return _load(read_text(path))[1]
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [_yaml_problem(exc)]) from None


def load_config(path: str | Path, model: type[M]) -> M:
    """Read and validate a YAML config file."""
    return parse_config(read_text(path), model, str(path))
