"""`edvit`: commands for the whole system: validate configs and bundles; install and uninstall
a node or the aggregator as a systemd service; run the demo (README)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pydantic import BaseModel

from edvit.bundle import Bundle, BundleError, load_bundle
from edvit.config import ConfigError, DevicesFile, load_config
from edvit.config.loader import load_yaml
from edvit.config.recipe import Recipe
from edvit.config.site import SiteConfig, check_site, load_site_config
from edvit.install import (
    CHECKOUT,
    VENV,
    InstallError,
    InstallOptions,
    Service,
    install,
    uninstall,
)
from edvit.provision import CONF_DIR, ProvisionError, grants, write_site_credentials
from edvit.service import run_cli
from edvit.signing import check_site_signature, describe_signature
from edvit.site_ca import write_site_ca

# kind → (the top-level key that marks a YAML file as that kind, its model)
CONFIG_KINDS: dict[str, tuple[str, type[BaseModel]]] = {
    "devices": ("devices", DevicesFile),
    "recipe": ("dataset", Recipe),
    "site": ("site", SiteConfig),
}


def _kind_of(path: Path) -> type[BaseModel]:
    data = load_yaml(path)
    keys = set(data) if isinstance(data, dict) else set()
    for marker, model in CONFIG_KINDS.values():
        if marker in keys:
            return model
    markers = ", ".join(marker for marker, _ in CONFIG_KINDS.values())
    raise ConfigError(
        str(path), [f"(top level): not a known config; expected one of the keys {markers}"]
    )


def _validate_one(path: Path, kind: str | None) -> tuple[str, BaseModel | Bundle]:
    """What `path` is, once it has validated, and what it holds; raises ConfigError or
    BundleError."""
    if path.is_dir() or path.name == "manifest.json":
        bundle = load_bundle(path)
        what = (
            f"bundle, {len(bundle.manifest.submodels)} sub-models, every sha256 verified, "
            f"{describe_signature(bundle)}"
        )
        return what, bundle
    model = CONFIG_KINDS[kind][1] if kind else _kind_of(path)
    if model is SiteConfig:  # its key files are relative to it
        return model.__name__, load_site_config(path)
    return model.__name__, load_config(path, model)


def _check_site(name: str, cfg: SiteConfig, bundle: Bundle) -> int:
    """Print what `check_site` finds (the sources of every node probed on this host); 1 when
    the site cannot work with the bundle, else 0."""
    check = check_site(cfg, bundle.manifest, local=cfg.nodes)
    for warning in check.warnings:
        print(f"{name}: warning: {warning}", file=sys.stderr)
    for problem in check.problems:
        print(f"{name}: {problem}", file=sys.stderr)
    if check.problems:
        return 1
    print(f"{name}: ok with {bundle.root} (every sub-model on one node)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    """Each file on its own, then each bundle against each site config: its trusted keys, then
    the whole site (`check_site`)."""
    failed = 0
    sites: list[tuple[str, SiteConfig]] = []
    bundles: list[Bundle] = []
    for name in args.files:
        try:
            what, loaded = _validate_one(Path(name), args.kind)
        except (ConfigError, BundleError) as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: ok ({what})")
        if isinstance(loaded, SiteConfig):
            sites.append((name, loaded))
        elif isinstance(loaded, Bundle):
            bundles.append(loaded)
    for site_name, cfg in sites:
        for bundle in bundles:
            try:
                print(check_site_signature(bundle, cfg, site_name).note)
            except (ConfigError, BundleError) as exc:
                print(exc, file=sys.stderr)
                failed += 1
                continue
            failed += _check_site(site_name, cfg, bundle)
    return 2 if failed else 0


def _service(args: argparse.Namespace) -> Service:
    if args.role == "node":
        return Service("node", args.node_id)
    return Service("aggregator")


def _cmd_install(args: argparse.Namespace) -> int:
    opts = InstallOptions(
        service=_service(args),
        config=Path(args.config),
        bundle=Path(args.bundle),
        root=Path(args.root),
        password_file=None if args.password_file is None else Path(args.password_file),
        venv=PurePosixPath(args.venv),
        make_venv=not args.no_venv,
        source=args.source,
    )
    try:
        install(opts)
    except InstallError as exc:
        print(f"edvit install: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    try:
        uninstall(_service(args), root=Path(args.root), purge=args.purge)
    except InstallError as exc:
        print(f"edvit uninstall: {exc}", file=sys.stderr)
        return 2
    return 0


def _service_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`node ID` and `aggregator` under install or uninstall, each with --root."""
    roles = parser.add_subparsers(dest="role", required=True)
    node = roles.add_parser("node", help="an edge node: unit edvit-node@ID")
    node.add_argument("node_id", metavar="ID", help="the node's id in the site config")
    aggregator = roles.add_parser("aggregator", help="the aggregator: unit edvit-aggregator")
    for role in (node, aggregator):
        role.add_argument(
            "--root",
            default="/",
            help="a staging root to install into instead of / (systemctl is printed, not run)",
        )
    return [node, aggregator]


def _cmd_site_credentials(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        cfg = load_site_config(args.site)
        write_site_credentials(
            cfg, out, conf_dir=PurePosixPath(args.conf_dir), bind=args.bind, tls=args.ca
        )
        if args.ca:
            write_site_ca(cfg, out / "tls", list(grants(cfg)))
    except (ConfigError, ProvisionError) as exc:
        print(f"edvit site credentials: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edvit site credentials: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    print(
        f"next: copy {out / 'mosquitto'}/edvit.conf to /etc/mosquitto/conf.d/ and its passwd "
        f"and acl{' and tls/' if args.ca else ''} to {args.conf_dir}/ on the broker host, "
        f"restart mosquitto; on each host `edvit install … --password-file "
        f"{out / 'credentials'}/<node-ID | aggregator>` (README: Site set-up)"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edvit.demo.keywords import run_keyword_demo
    from edvit.demo.run import DemoError, DemoOptions, default_workdir, run_demo
    from edvit.demo.tally import print_table

    kind = "keywords" if args.keywords else "digits-demo"
    opts = DemoOptions(
        bundle=Path(args.bundle or f"bundles/{kind}"),
        recipe=Path(args.recipe or f"config/modelgen/{kind}.yaml"),
        ticks=args.ticks,
        period_s=args.period,
        broker=args.broker,
        workdir=default_workdir(),
        embedded_broker=args.embedded_broker,
    )
    run = run_keyword_demo if args.keywords else run_demo
    try:
        summary = run(opts, out=sys.stderr if args.json else sys.stdout)
    except (DemoError, BundleError, ConfigError) as exc:
        print(f"edvit demo: {exc}", file=sys.stderr)
        return 2
    if args.json or args.keywords:
        print(json.dumps(summary))
    else:
        print_table(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser(
        "validate",
        help="check config files, naming every bad key; a site config given with bundles is "
        "checked against each (trusted keys, sub-models on nodes, sources, tick vs inference)",
    )
    validate.add_argument("files", nargs="+", help="YAML config files or bundle directories")
    validate.add_argument("--kind", choices=sorted(CONFIG_KINDS), help="skip detection")
    validate.set_defaults(func=_cmd_validate)

    inst = sub.add_parser(
        "install", help="(root) venv, unit, site config, bundle and password; enable the unit"
    )
    inst.set_defaults(func=_cmd_install)
    for role in _service_parsers(inst):
        role.add_argument("--config", required=True, help="the site config (YAML)")
        role.add_argument("--bundle", required=True, help="the bundle directory")
        role.add_argument(
            "--password-file",
            help="the broker password (from `edvit site credentials`), installed as "
            "/etc/edvit/credentials/node-ID or …/aggregator (0600); omit for an "
            "anonymous broker or to keep the installed one",
        )
        role.add_argument(
            "--no-venv", action="store_true", help="skip creating the venv (the host manages it)"
        )
        role.add_argument(
            "--venv", default=str(VENV), help="the venv the unit runs from (default: %(default)s)"
        )
        role.add_argument(
            "--source",
            default=str(CHECKOUT),
            help="what pip installs into the venv (default: this checkout, %(default)s)",
        )
    uninst = sub.add_parser(
        "uninstall", help="(root) disable the unit and remove what install wrote"
    )
    uninst.set_defaults(func=_cmd_uninstall)
    for role in _service_parsers(uninst):
        role.add_argument("--purge", action="store_true", help="remove the venv too")

    site = sub.add_parser("site", help="site-wide set-up").add_subparsers(
        dest="site_command", required=True
    )
    creds = site.add_parser(
        "credentials",
        help="a password per node, aggregator and reader, and the broker's passwd, ACL and "
        "config (each login may write only its own topics)",
    )
    creds.add_argument("site", help="the site config (YAML)")
    creds.add_argument("--out", required=True, help="directory to write into (kept passwords)")
    creds.add_argument(
        "--conf-dir",
        default=str(CONF_DIR),
        help="where the broker host keeps passwd, acl and tls/ (default: %(default)s)",
    )
    creds.add_argument("--bind", help="the address the listener binds (default: all)")
    creds.add_argument(
        "--ca",
        action="store_true",
        help="also a site CA, the broker's certificate and client certificates (mutual TLS)",
    )
    creds.set_defaults(func=_cmd_site_credentials)

    demo = sub.add_parser("demo", help="the whole site on this machine, with live results")
    demo.add_argument(
        "--keywords",
        action="store_true",
        help="the keyword path: a microphone node hearing a recording, events as they fire "
        "(first run: makes the keyword dataset and builds its bundle, ~15 min on 2 cores)",
    )
    demo.add_argument(
        "--bundle", help="bundle, built if missing (default: bundles/digits-demo or keywords)"
    )
    demo.add_argument("--recipe", help="recipe to build it from (default: config/modelgen/…)")
    demo.add_argument("--ticks", type=int, default=100, help="results to wait for")
    demo.add_argument("--period", type=float, default=0.25, help="seconds between ticks")
    demo.add_argument("--broker", help="HOST:PORT of a broker to use instead of a private one")
    demo.add_argument(
        "--embedded-broker",
        action="store_true",
        help="amqtt, the Python broker (extra `demo`), even if mosquitto is here",
    )
    demo.add_argument("--json", action="store_true", help="the final table as one JSON object")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
