"""Shared finishing step of whole-block methods: scores -> chosen blocks -> Plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from hubprune.cost import block_savings
from hubprune.methods.registry import MethodContext
from hubprune.plan import Plan, Unit
from hubprune.size import block_params, unique_params


def block_plan(
    ctx: MethodContext,
    method: str,
    params: Any,
    scores: Sequence[float],
    order: Sequence[int],
    score_meaning: str,
    *,
    chosen: Sequence[int] | None = None,
) -> Plan:
    """A Plan removing blocks in `order` until the budget holds (or exactly `chosen`)."""
    per_block = block_params(ctx.model, ctx.adapter)
    total = unique_params([ctx.model])
    if chosen is None:
        # No budget: scoring only (`hubprune inspect`), nothing is removed.
        if ctx.budget is None:
            chosen = []
        else:
            savings, dense = block_savings(ctx.model, ctx.adapter, ctx.budget.by)
            chosen = ctx.budget.select(order, savings, dense)
    removed_params = sum(per_block[i] for i in chosen)
    budget = {
        "requested": ctx.budget.to_dict() if ctx.budget else None,
        "reached": {
            "units_removed": len(chosen),
            "units_total": len(per_block),
            "params_removed": removed_params,
            "params_total": total,
            "params_fraction": removed_params / total,
        },
    }
    return Plan(
        method=method,
        unit_kind="block",
        removed=[Unit("block", i) for i in sorted(chosen)],
        scores=[
            {"unit": Unit("block", i), "score": float(s), "rank": order.index(i)}
            for i, s in enumerate(scores)
        ],
        score_meaning=score_meaning,
        params=asdict(params) if is_dataclass(params) else dict(params or {}),
        budget=budget,
        calibration=ctx.calibration.info if ctx.calibration is not None else None,
        seed=ctx.seed,
    )
