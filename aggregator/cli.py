"""`aggregator`: the fusing service (systemd: edvit-aggregator).

    aggregator run --bundle DIR --config site.yaml [--print] [--broker HOST:PORT]
                   [--validate-config] [--connect-timeout S] [--log-level LEVEL]

Exit status: 0 after a clean stop (SIGTERM, SIGINT), 2 for an unusable bundle or config
(the message names the file and key), 1 when the broker refuses or never answers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edvit.bundle import BundleError
from edvit.config import ConfigError
from edvit.config.site import load_site_config, site_problems, with_broker
from edvit.fusion import FusionError
from edvit.service import run_cli, serve, service_parser, setup_logging, stop_on_signals
from edvit.signing import load_site_bundle


def build_parser() -> argparse.ArgumentParser:
    parser, _, run = service_parser(
        "aggregator",
        "Fuse the site's sub-model features into results (see the README).",
        "check the bundle (every sha256) and the config against it, then exit",
    )
    run.add_argument("--print", action="store_true", help="print one line per result")
    run.set_defaults(func=_cmd_run)
    return parser


GIL_SWITCH_INTERVAL_S = 0.0005


def _cmd_run(args: argparse.Namespace) -> int:
    from aggregator.app import Aggregator

    stop = stop_on_signals()
    setup_logging(args.log_level)
    # A message crosses from paho's thread to the worker: with CPython's default 5 ms GIL
    # switch interval that hand-off alone can cost milliseconds at the tail.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        cfg = with_broker(load_site_config(args.config), args.broker)
        if args.validate_config:
            bundle = load_site_bundle(args.bundle, cfg, str(args.config))
            problems = site_problems(cfg, bundle.manifest)
            if problems:
                raise ConfigError(str(args.config), problems)
            print(
                f"{args.config}: ok (site {cfg.site}, {len(cfg.nodes)} nodes); "
                f"{args.bundle}: ok ({len(bundle.manifest.submodels)} sub-models, "
                "every sha256 verified)"
            )
            return 0
    except (ConfigError, BundleError) as exc:
        print(exc, file=sys.stderr)
        return 2

    app = Aggregator(args.bundle, cfg, print_results=args.print, cancel=stop)
    return serve(
        app, "aggregator", stop, args.connect_timeout, (ConfigError, BundleError, FusionError)
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
