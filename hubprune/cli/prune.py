"""`hubprune prune SOURCE --method M --amount A --out DIR`."""

from __future__ import annotations

import argparse

from hubprune.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prune",
        help="score, prune and export a model",
        description="Score the units of SOURCE with a method, remove the least important ones and write a "
        "model folder that stock transformers loads, with hubprune.json describing what was removed.",
        epilog="example: hubprune prune offline:smollm2-135m-instruct --method block-influence --amount 6 "
        "--calibration offline:lee-background --out out/smollm2-bi6",
    )
    options.add_source_options(parser)
    options.add_stream_options(parser)
    options.add_method_options(parser, amount_required=True)
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
    from hubprune.pipeline import prune

    budget = options.budget(args)  # validate cheap options before loading anything
    options.method_params(args)
    manifest = prune(
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
    print(summary(manifest))
    calibration = manifest.plan.calibration
    if calibration is not None:
        print(f"calibrated on {calibration.source} ({calibration.samples} x {calibration.seq_len} tokens)")
    print(f"wrote {args.out} (manifest: {args.out}/hubprune.json)")
