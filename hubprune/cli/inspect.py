"""`hubprune inspect SOURCE --method M`: score every unit without pruning; for width methods, also
what each block would keep."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

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
    options.add_stream_options(parser)
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
    lines = [f"{'unit':<12} {'score':>12} {order:>5}  removed"]
    for entry in plan.scores:
        unit, score = entry["unit"], entry.get("score")
        position = entry["rank"] if ranked else entry.get("removed_at_step")
        gone = entry.get("removed", unit.name in removed)  # width methods mark their own
        if score is None and entry.get("lower_bound") is not None:  # FinerCut stopped scoring it early
            shown = ">=" + format(entry["lower_bound"], ".4g")  # one word: the table splits on spaces
        else:
            shown = "-" if score is None else format(score, ".6g")
        lines.append(
            f"{unit.name:<12} {shown:>12} {'' if position is None else position:>5}  {'x' if gone else ''}"
        )
    lines.append(f"score: {plan.score_meaning}")
    lines.extend(_width_lines(plan))
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


def _width_lines(plan: Plan) -> list[str]:
    """For a plan that narrows blocks, what it would leave of each (kept/base): query heads, KV
    heads and MLP channels; nothing for plans of whole blocks or sublayers."""
    from hubprune.describe import block_widths, removal

    if plan.dims is None or not plan.removed:
        return []
    shape = plan.shape()
    if not shape.has_widths():
        return []
    lines = [
        "",
        f"would keep ({removal(shape)}):",
        f"{'block':>5}  {'heads':>7} {'kv heads':>8} {'channels':>11}",
    ]
    for row in block_widths(shape):
        if row["removed"]:
            lines.append(f"{row['block']:>5}  removed")
        else:
            lines.append(f"{row['block']:>5}  {row['heads']:>7} {row['kv_heads']:>8} {row['channels']:>11}")
    return lines


def json_record(plan: Plan, family: str | None = None) -> dict[str, Any]:
    """The plan as `--json` prints it: its manifest form (with the per-block `shape` when the plan
    records the model's widths), the one-line `summary` of what it would remove, and the model
    `family`, so `hubprune prune --plan` can refuse the plan for another model."""
    from hubprune.describe import removal

    record = plan.to_dict()
    if family is not None:
        record["family"] = family
    if plan.dims is not None:
        record["summary"] = removal(plan.shape())
    return record


def run(args: argparse.Namespace) -> None:
    from hubprune.pipeline import load, score

    budget = options.budget(args)
    method_params = options.method_params(args)  # bad --method-arg values fail before loading
    loaded = load(options.source_options(args), method=args.method)
    plan = score(
        loaded,
        args.method,
        budget,
        calibration=options.calibration_options(args),
        method_params=method_params,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(json_record(plan, loaded.adapter.family), indent=2, sort_keys=True))
    else:
        print(format_table(plan))
