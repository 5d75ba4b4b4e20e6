"""`hubprune prune SOURCE --method M --amount A --out DIR`, or `hubprune prune SOURCE --plan PLAN.json --out DIR`."""

from __future__ import annotations

import argparse
from typing import Any

from hubprune.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prune",
        help="score, prune and export a model",
        description="Score the units of SOURCE with a method, remove the least important ones and write a "
        "model folder that stock transformers loads, with hubprune.json describing what was removed. "
        "With --plan, apply a plan saved earlier instead of scoring.",
        epilog="example: hubprune prune offline:smollm2-135m-instruct --method block-influence --amount 6 "
        "--calibration offline:lee-background --out out/smollm2-bi6",
    )
    options.add_source_options(parser)
    options.add_stream_options(parser)
    options.add_method_options(parser, amount_required=True, or_plan=True)
    parser.add_argument(
        "--plan",
        metavar="PLAN.json",
        default=None,
        help="apply a saved plan instead of scoring (the JSON of `hubprune inspect --json`, or a run's "
        "hubprune.json): whole-block plans are copied shard by shard without loading the model",
    )
    options.add_calibration_options(parser)
    group = parser.add_argument_group("output")
    group.add_argument("--out", required=True, help="output folder (the future Hub repo)")
    group.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default: 2GB)")
    group.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    group.add_argument(
        "--format",
        dest="export_format",
        default="plain",
        choices=["plain", "compact", "nemotron-nas", "hetero"],  # pipeline.EXPORT_FORMATS
        help="plain: native architecture, removed heads, channels and sublayers zero-filled (no savings); "
        "compact: really smaller, as nemotron-nas (vLLM serves it) when that schema can express the plan, "
        "else hubprune's heterogeneous format; both need trust_remote_code=True. nemotron-nas / hetero "
        "force one of the two (default: plain)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from hubprune.describe import summary

    manifest = _from_plan(args) if args.plan is not None else _scored(args)
    print(summary(manifest))
    calibration = manifest.plan.calibration
    if calibration is not None:
        print(f"calibrated on {calibration.source} ({calibration.samples} x {calibration.seq_len} tokens)")
    print(f"wrote {args.out} (manifest: {args.out}/hubprune.json)")


def _scored(args: argparse.Namespace) -> Any:
    from hubprune.errors import RecipeError
    from hubprune.pipeline import prune

    if args.method is None or args.amount is None:
        raise RecipeError("prune needs --method and --amount, or --plan with a saved plan")
    budget = options.budget(args)  # validate cheap options before loading anything
    options.method_params(args)
    return prune(
        options.source_options(args),
        args.method,
        budget,
        args.out,
        calibration=options.calibration_options(args),
        method_params=options.method_params(args),
        batch_size=args.batch_size,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        export_format=args.export_format,
    )


def _from_plan(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from hubprune.errors import RecipeError
    from hubprune.pipeline import prune_from_plan
    from hubprune.plan import read_plan_file

    given = [
        flag for flag, value in (("--method", args.method), ("--amount", args.amount)) if value is not None
    ]
    given += ["--method-arg"] if args.method_arg else []
    if given:
        raise RecipeError(
            f"--plan applies a saved plan; leave out {' and '.join(given)}, which make a new one"
        )
    plan, family = read_plan_file(args.plan)
    return prune_from_plan(
        options.source_options(args),
        plan,
        args.out,
        family=family,
        plan_from=Path(args.plan).name,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        export_format=args.export_format,
    )
