"""`edge-node`: one edge node (systemd: edvit-node@ID).

    edge-node run --bundle DIR --node ID --config site.yaml [--broker HOST:PORT]
                  [--validate-config] [--connect-timeout S] [--ticks N] [--log-level LEVEL]

Exit status: 0 after a clean stop (SIGTERM, SIGINT, or --ticks N ticks run), 2 for an
unusable bundle or config or an unknown node (the message names the file and key), 1 when
the broker refuses or never answers, or the capture device is absent or lost.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edvit.bundle import BundleError
from edvit.config import ConfigError
from edvit.config.site import load_site_config, with_broker
from edvit.service import (
    run_cli,
    serve,
    service_parser,
    setup_logging,
    stop_on_signals,
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser, _, run = service_parser(
        "edge-node",
        "Capture, run this node's sub-models and publish features (see the README).",
        "check the bundle (every sha256), the node's sub-models and its source, then exit",
    )
    run.add_argument("--node", required=True, help="node id (a key of `nodes` in the config)")
    run.add_argument(
        "--ticks",
        type=_positive_int,
        metavar="N",
        help="stop cleanly after N ticks have run (tests, demos)",
    )
    run.set_defaults(func=_cmd_run)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    # First of all: a SIGTERM while the models load must still end in a clean stop.
    stop = stop_on_signals()

    from edge_node.app import EdgeNode
    from edge_node.runner import RunnerError

    setup_logging(args.log_level)
    try:
        cfg = with_broker(load_site_config(args.config), args.broker)
        app = EdgeNode(
            args.bundle,
            cfg,
            args.node,
            config_source=str(args.config),
            max_ticks=args.ticks,
            cancel=stop,
        )
        if args.validate_config:
            app.prepare()
            app.check_source()
            print(
                f"{args.config}: ok (site {cfg.site}, node {args.node}: sub-models "
                f"{','.join(app.sub_ids)}, {app.node.source.kind} source); {args.bundle}: ok "
                "(every sha256 verified)"
            )
            return 0
    except (ConfigError, BundleError, RunnerError) as exc:
        print(exc, file=sys.stderr)
        return 2

    return serve(
        app, "edge-node", stop, args.connect_timeout, (ConfigError, BundleError, RunnerError)
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
