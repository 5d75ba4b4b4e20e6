"""`hubprune inspect SOURCE --method M`: score every block without pruning."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from hubprune.cli import options

if TYPE_CHECKING:
    from hubprune.plan import Plan


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


def format_table(plan: Plan) -> str:
    """A fixed-width table of every unit's score, then the search steps of an iterative method.

    Block methods rank every unit (`rank`: 0 is removed first); FinerCut records at which greedy
    step a sublayer was removed (`step`) and the divergence reached after each step.
    """
    removed = {u.name for u in plan.removed}
    ranked = all("rank" in entry for entry in plan.scores)
    order = "rank" if ranked else "step"
    lines = [f"{'unit':<10} {'score':>12} {order:>5}  removed"]
    for entry in plan.scores:
        unit, score = entry["unit"], entry.get("score")
        position = entry["rank"] if ranked else entry.get("removed_at_step")
        lines.append(
            f"{unit.name:<10} {'-' if score is None else format(score, '.6g'):>12} "
            f"{'' if position is None else position:>5}  {'x' if unit.name in removed else ''}"
        )
    lines.append(f"score: {plan.score_meaning}")
    if plan.trace and all("divergence" in step for step in plan.trace):
        lines.append("")
        lines.append(f"{'step':>4}  {'removed':<10} {'divergence':>12} {'params removed':>15}")
        for step in plan.trace:
            share = step.get("params_fraction")
            lines.append(
                f"{step['step']:>4}  {step['name']:<10} {step['divergence']:>12.6g} "
                f"{'' if share is None else format(share, '.1%'):>15}"
            )
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
