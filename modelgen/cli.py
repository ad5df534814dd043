"""`modelgen`: the offline commands: stats, plan, build, eval, report, dataset, keygen, sign."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edvit.bundle import BundleError
from edvit.config import ConfigError, DevicesFile, load_config
from edvit.config.recipe import Recipe
from edvit.plan import Plan
from edvit.signing import (
    SIGNATURE,
    KeyFileError,
    generate_keypair,
    key_id,
    public_text,
    read_private_key,
    sign_bundle,
)
from modelgen.grouping import contiguous_groups
from modelgen.planning import PlanError, make_plan
from modelgen.sizing import vit_stats
from modelgen.vit_shape import ShapeError, ViTShape, parse_arch

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def _shape(args: argparse.Namespace) -> ViTShape:
    try:
        return parse_arch(args.arch)
    except ShapeError as exc:
        raise CliError(str(exc)) from None


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_stats(args: argparse.Namespace) -> None:
    shape = _shape(args)
    if args.heads is not None:
        shape = shape.with_heads(args.heads)
    stats = vit_stats(shape, args.num_classes)
    if args.json:
        print(json.dumps(stats.to_json()))
        return
    print(
        f"{stats.arch}: {stats.heads} heads, embed {stats.embed_dim}, depth {stats.depth}\n"
        f"  params {stats.params:,}  size {stats.size_mib:.2f} MiB (fp32)\n"
        f"  {stats.gmacs:.3f} GMACs (linear + conv), {stats.gmacs_total:.3f} with attention"
    )


def _print_plan(plan: Plan) -> None:
    budget = f"{plan.budget_mib:g} MiB" if plan.budget_mib is not None else "none"
    print(f"{plan.arch}, {plan.num_classes} classes, budget {budget}, rate {plan.rate_hz:g} Hz")
    for s in plan.submodels:
        print(
            f"  {s.id}: classes {s.classes}  heads {s.heads}  embed {s.embed_dim}  "
            f"{s.size_mib:.2f} MiB  {s.gmacs:.3f} GMACs"
        )
    print(f"  total {plan.total_mib:.2f} MiB")
    if plan.devices is not None:
        print(f"assignment ({plan.solver_used}), makespan {plan.makespan_s:.4f} s")
        for d in plan.devices:
            print(
                f"  {d.id}: {', '.join(d.submodels) or '-'}  "
                f"{d.used_mib:.2f}/{d.memory_mib:g} MiB  latency {d.latency_s:.4f} s"
            )
    if plan.solver_note:
        print(f"note: {plan.solver_note}")


def _cmd_plan(args: argparse.Namespace) -> None:
    shape = _shape(args)
    if args.devices is None and args.num_submodels is None:
        raise CliError("give --devices FILE, --num-submodels N, or both")
    devices = None
    if args.devices is not None:
        devices = load_config(args.devices, DevicesFile).devices
    n = args.num_submodels or (len(devices) if devices else 0)
    try:
        groups = contiguous_groups(args.num_classes, n)
        plan = make_plan(
            shape,
            args.num_classes,
            groups,
            devices=devices,
            budget_mib=args.budget_mib,
            rate_hz=args.rate_hz,
            solver=args.solver,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(plan.model_dump(mode="json")))
    else:
        _print_plan(plan)


def _cmd_build(args: argparse.Namespace) -> None:
    from modelgen.build import BuildError, build_file
    from modelgen.datasets import DatasetError
    from modelgen.export import ExportError

    try:
        key = None if args.sign is None else read_private_key(Path(args.sign))  # before hours
        build_file(
            Path(args.recipe),
            Path(args.out),
            log=lambda msg: print(msg, file=sys.stderr),
            sign=key,
            cache_dir=None if args.cache is None else Path(args.cache),
        )
    except (BuildError, DatasetError, ExportError, BundleError, KeyFileError) as exc:
        raise CliError(str(exc)) from None


def _cmd_keygen(args: argparse.Namespace) -> None:
    try:
        public, key = generate_keypair(Path(args.out))
    except KeyFileError as exc:
        raise CliError(str(exc)) from None
    print(f"{args.out}: private key (keep it secret; `modelgen build --sign`, `modelgen sign`)")
    print(f"{public}: public key, key id {key_id(key)}; trust it in the site config as")
    print(f"  bundle: {{trusted_keys: [{public_text(key)}]}}")


def _cmd_sign(args: argparse.Namespace) -> None:
    try:
        sig = sign_bundle(Path(args.bundle), read_private_key(Path(args.key)))
    except (BundleError, KeyFileError) as exc:
        raise CliError(str(exc)) from None
    print(f"{Path(args.bundle) / SIGNATURE}: signed by key id {sig.key_id}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from modelgen.datasets import DatasetError
    from modelgen.evaluate import EvalError, evaluate_bundle

    try:
        result = evaluate_bundle(
            args.bundle, drop=args.drop, data=args.data, predictions=args.predictions
        )
    except (EvalError, DatasetError, BundleError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(result))
        return
    for key in ("base_acc", "fused_acc", "avg_softmax_acc", "kept_classes_fused_acc"):
        if result.get(key) is not None:
            print(f"{key}: {result[key]:.4f}")
    for sub in result["per_submodel"]:
        print(
            f"  {sub['id']}: heads {sub['heads']}  {sub['size_mib']:.3f} MiB  "
            f"{sub['gmacs']:.4f} GMACs  {sub['latency_ms']:.2f} ms"
        )


def _cmd_samples(args: argparse.Namespace) -> None:
    from modelgen.datasets import DatasetError
    from modelgen.evaluate import EvalError, write_samples

    try:
        print(write_samples(args.bundle, args.out, data=args.data))
    except (EvalError, DatasetError, BundleError) as exc:
        raise CliError(str(exc)) from None


def _cmd_report(args: argparse.Namespace) -> None:
    from modelgen.report import write_report, write_sweep_report
    from modelgen.sweep import SWEEP_FILE

    try:
        if (Path(args.bundle) / SWEEP_FILE).is_file():
            print(write_sweep_report(args.bundle))
        else:
            print(write_report(args.bundle))
    except BundleError as exc:
        raise CliError(str(exc)) from None


def _cmd_sweep(args: argparse.Namespace) -> None:
    from modelgen.build import BuildError
    from modelgen.datasets import DatasetError
    from modelgen.export import ExportError
    from modelgen.report import write_sweep_report
    from modelgen.sweep import run_sweep

    path = Path(args.recipe)
    try:
        recipe = load_config(path, Recipe)
        run_sweep(
            recipe, path.parent, args.ns, Path(args.out), log=lambda m: print(m, file=sys.stderr)
        )
        print(write_sweep_report(args.out))
    except (ConfigError, BuildError, DatasetError, ExportError, BundleError) as exc:
        raise CliError(str(exc)) from None


def _cmd_keywords(args: argparse.Namespace) -> None:
    from modelgen.datasets.keywords import generate_keywords
    from modelgen.datasets.room import RoomSpec

    made = generate_keywords(
        Path(args.out),
        per_word=args.per_word,
        seed=args.seed,
        heldout_per_word=args.heldout_per_word,
        workers=args.workers,
        room=RoomSpec(reverb=args.reverb, band=args.mic_band),
    )
    for engine, voices in made.engines.items():
        found = f"{len(voices)} voices" if voices else "not found (scripts/setup.sh installs it)"
        print(f"{engine}: {found}", file=sys.stderr)
    for corpus, folder in made.corpora.items():
        print(f"{corpus}: {folder}")
    if "unseen_engine" not in made.corpora:
        print("no Festival HTS voice: no unseen-engine corpus was made", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def arch_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--arch", required=True, help="timm name (vit_base_patch16_224) or vit:...")
        p.add_argument("--num-classes", type=_positive_int, required=True)
        p.add_argument("--json", action="store_true", help="print one JSON object")

    stats = sub.add_parser("stats", help="params, fp32 MiB and GMACs of one ViT shape")
    arch_args(stats)
    stats.add_argument("--heads", type=_positive_int, help="the ED-ViT sub-model with K heads")
    stats.set_defaults(func=_cmd_stats)

    plan = sub.add_parser("plan", help="sub-model heads and device assignment, no training")
    arch_args(plan)
    plan.add_argument("--devices", help="YAML devices file")
    plan.add_argument(
        "--num-submodels", type=_positive_int, help="N (default: the number of devices)"
    )
    plan.add_argument("--budget-mib", type=float, help="total memory budget of all sub-models")
    plan.add_argument("--rate-hz", type=float, default=1.0, help="samples per second per device")
    plan.add_argument("--solver", choices=["greedy", "optimal"], default="optimal")
    plan.set_defaults(func=_cmd_plan)

    build = sub.add_parser("build", help="the whole offline pipeline: recipe → bundle")
    build.add_argument("recipe", help="recipe YAML (config/modelgen/*.yaml)")
    build.add_argument("--out", required=True, help="bundle directory (stages cached inside)")
    build.add_argument("--sign", metavar="KEY", help="sign the bundle with this private key")
    build.add_argument(
        "--cache",
        metavar="DIR",
        help="stage cache (default OUT/.cache): recipes that differ only in `export` share "
        "every trained model",
    )
    build.set_defaults(func=_cmd_build)

    keygen = sub.add_parser("keygen", help="a new ed25519 key pair for signing bundles")
    keygen.add_argument("--out", required=True, help="private key file; PATH.pub gets the public")
    keygen.set_defaults(func=_cmd_keygen)

    sign = sub.add_parser("sign", help="verify a bundle, then sign it (writes manifest.sig)")
    sign.add_argument("bundle", help="bundle directory")
    sign.add_argument("--key", required=True, help="private key file (modelgen keygen)")
    sign.set_defaults(func=_cmd_sign)

    ev = sub.add_parser("eval", help="accuracy of a bundle, run as the site runs it")
    ev.add_argument("bundle", help="bundle directory")
    ev.add_argument("--drop", nargs="+", default=[], metavar="SUB", help="sub-models to leave out")
    ev.add_argument("--data", type=Path, help="every sample of another dataset of the same kind")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--predictions", action="store_true", help="add each sample's label and prediction"
    )
    ev.set_defaults(func=_cmd_eval)

    samples = sub.add_parser(
        "samples", help="write the test split as files for replay sources (+ labels.json)"
    )
    samples.add_argument("bundle", help="bundle directory")
    samples.add_argument("--out", required=True, type=Path, help="output folder")
    samples.add_argument("--data", type=Path, help="every sample of another dataset instead")
    samples.set_defaults(func=_cmd_samples)

    report = sub.add_parser(
        "report", help="report.md and PNG plots into a bundle (or sweep.md into a sweep)"
    )
    report.add_argument("bundle", help="bundle directory, or a `modelgen sweep` directory")
    report.set_defaults(func=_cmd_report)

    sweep = sub.add_parser(
        "sweep", help="build and evaluate a recipe at several N (shared base): Fig. 3 of the paper"
    )
    sweep.add_argument("recipe", help="recipe YAML")
    sweep.add_argument("--ns", nargs="+", type=_positive_int, default=[1, 2, 3, 5, 10])
    sweep.add_argument("--out", required=True, help="directory: n<N>/ bundles, sweep.json")
    sweep.set_defaults(func=_cmd_sweep)

    dataset = sub.add_parser("dataset", help="make a dataset")
    kinds = dataset.add_subparsers(dest="dataset", required=True)
    kw = kinds.add_parser(
        "keywords",
        help="the Speech Commands 12-class task (ten words, _unknown_, _silence_) from "
        "espeak-ng and Festival, with held-out voices and engine in corpora of their own",
    )
    kw.add_argument(
        "--out", required=True, help="output folder, one sub-folder per class (held out: beside)"
    )
    kw.add_argument("--per-word", type=_positive_int, default=300, help="clips per word")
    kw.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    kw.add_argument(
        "--heldout-per-word",
        type=_positive_int,
        help="clips per class of each held-out corpus (default: per-word / 5)",
    )
    kw.add_argument("--workers", type=_positive_int, default=2, help="processes")
    kw.add_argument(
        "--reverb",
        type=_probability,
        default=0.0,
        help="share of training clips said in a synthetic room (default 0)",
    )
    kw.add_argument(
        "--mic-band",
        type=_probability,
        default=0.0,
        help="share of training clips band-limited as a cheap microphone hears (default 0)",
    )
    kw.set_defaults(func=_cmd_keywords)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CliError, PlanError) as exc:
        print(f"modelgen {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"modelgen {args.command}: invalid config\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
