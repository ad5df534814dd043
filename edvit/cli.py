"""`edvit`: commands for the whole system (validate; demo lands with the online system)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel

from edvit.config import ConfigError, DevicesFile, load_config

# The top-level key that tells which kind of config a YAML file is.
CONFIG_KINDS: dict[str, type[BaseModel]] = {
    "devices": DevicesFile,
}


def _kind_of(path: Path) -> type[BaseModel]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    keys = set(data) if isinstance(data, dict) else set()
    for key, model in CONFIG_KINDS.items():
        if key in keys:
            return model
    raise ConfigError(
        str(path),
        [f"(top level): not a known config; expected one of the keys {', '.join(CONFIG_KINDS)}"],
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.files:
        path = Path(name)
        try:
            model = CONFIG_KINDS[args.kind] if args.kind else _kind_of(path)
            load_config(path, model)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: ok ({model.__name__})")
    return 2 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check config files, naming every bad key")
    validate.add_argument("files", nargs="+", help="YAML config files")
    validate.add_argument("--kind", choices=sorted(CONFIG_KINDS), help="skip detection")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
