"""`edge-node`: one edge node (systemd: edvit-node@ID).

    edge-node run --bundle DIR --node ID --config site.yaml [--broker HOST:PORT]
                  [--validate-config] [--connect-timeout S] [--ticks N] [--log-level LEVEL]
    edge-node probe --config site.yaml --node ID [--bundle DIR] [--samples N] [--out DIR]
    edge-node devices [--json]

Exit status of `run`: 0 after a clean stop (SIGTERM, SIGINT, or --ticks N ticks run), 2 for
an unusable bundle or config or an unknown node (the message names the file and key; with
--validate-config also a source that cannot open or gives no sample), 1 when the broker
refuses or never answers, or the capture device is absent or lost. `probe`: 0, or 2 when
the config or bundle is unusable or the source cannot open or gives no sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edvit.bundle import BundleError, load_bundle
from edvit.config import ConfigError
from edvit.config.site import load_site_config, with_broker
from edvit.media import MediaError
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
    parser, sub, run = service_parser(
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

    probe = sub.add_parser(
        "probe",
        help="open a node's source as the service would; print and save a few samples",
    )
    probe.add_argument("--config", required=True, type=Path, help="site config (YAML)")
    probe.add_argument("--node", required=True, help="node id (a key of `nodes` in the config)")
    probe.add_argument(
        "--bundle",
        type=Path,
        help="bundle directory: audio at its sample rate and clip length (default: 16 kHz, 1 s)",
    )
    probe.add_argument(
        "--samples", type=_positive_int, default=3, metavar="N", help="samples (default 3)"
    )
    probe.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="folder for the snapshots, <node>-<i>.png or .wav (default: here)",
    )
    probe.set_defaults(func=_cmd_probe)

    devices = sub.add_parser("devices", help="list the cameras and microphones of this host")
    devices.add_argument("--json", action="store_true", help="machine-readable output")
    devices.set_defaults(func=_cmd_devices)
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


def _cmd_probe(args: argparse.Namespace) -> int:
    from edge_node.probe import Reading, open_node_source, probe
    from edge_node.sources import SourceError, source_key

    setup_logging("WARNING")
    try:
        cfg = load_site_config(args.config)
        # the bundle's preprocessing only: no model file is hashed or loaded
        given = None
        if args.bundle is not None:
            given = load_bundle(args.bundle, verify=False).manifest.preprocess
        source, spec = open_node_source(cfg, args.node, given, str(args.config))
    except (ConfigError, BundleError) as exc:
        print(exc, file=sys.stderr)
        return 2

    def report(i: int, reading: Reading) -> None:
        print(f"sample {i + 1}/{args.samples}: {reading.describe()}", flush=True)

    print(f"node {args.node}: {source.name}", flush=True)
    try:
        readings = probe(
            source, samples=args.samples, out=args.out, stem=args.node, spec=spec, report=report
        )
    except SourceError as exc:
        key = source_key(args.node, cfg.nodes[args.node].source)
        print(f"{args.config}: {key}: {exc}", file=sys.stderr)
        return 2
    except (OSError, MediaError) as exc:  # the snapshot folder
        print(f"edge-node probe: --out {args.out}: {exc}", file=sys.stderr)
        return 2
    finally:
        source.close()
    print(f"wrote {', '.join(str(r.snapshot) for r in readings)}")
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from edge_node.probe import format_devices, list_devices

    found = list_devices()
    print(json.dumps(found, indent=2) if args.json else format_devices(found))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
