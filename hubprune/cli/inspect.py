"""`hubprune inspect SOURCE --method M`: score every block without pruning."""

from __future__ import annotations

import argparse
import json

from hubprune.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect",
        help="score every unit without pruning",
        description="Score every block of SOURCE with a method and print a table (or JSON with --json). "
        "With --amount, the units that prune would remove are marked.",
    )
    options.add_source_options(parser)
    options.add_method_options(parser, amount_required=False)
    options.add_calibration_options(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    parser.set_defaults(run=run)


def format_table(plan: object) -> str:
    """A fixed-width table: unit, score, rank (0 = removed first), removed mark."""
    removed = {u.name for u in plan.removed}  # type: ignore[attr-defined]
    lines = [f"{'unit':<10} {'score':>12} {'rank':>5}  removed"]
    for entry in plan.scores:  # type: ignore[attr-defined]
        unit = entry["unit"]
        lines.append(
            f"{unit.name:<10} {entry['score']:>12.6g} {entry['rank']:>5}  {'x' if unit.name in removed else ''}"
        )
    lines.append(f"score: {plan.score_meaning}")  # type: ignore[attr-defined]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    from hubprune.pipeline import load, score

    budget = options.budget(args)
    method_params = options.method_params(args)  # bad --method-arg values fail before loading
    loaded = load(options.source_options(args))
    plan = score(
        loaded,
        args.method,
        budget,
        calibration=options.calibration_options(args),
        method_params=method_params,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_table(plan))
