"""Choosing which KV groups and MLP channels go, from per-unit scores, under any budget.

Shared by every width method (``wanda-sp`` today, policy gradient next): a method scores each
KV group and each channel of each block (higher = more important) and this module turns the
scores into removals.

- Pools: heads and channels are separate pools (their scores are not comparable). Each pool
  gives up the same fraction of what it can give (of its units, or of its parameters, FLOPs or
  KV cache), so that together they meet the budget: ``--budget-by kv`` therefore needs heads.
- ``scope=uniform`` removes that fraction from every block; ``scope=global`` removes the
  lowest-scored units across all blocks, so blocks end up with different widths. Raw scores
  grow with depth (activation norms do), so across blocks they are compared after
  standardising within each block (z-scores, as FLAP does, arXiv 2312.11983): a unit goes when
  it is unusually unimportant for its block. Measured on SmolLM2-135M at 20% of the parameters,
  raw scores left early blocks with 5% of their channels and 10x the perplexity.
- Every block keeps at least ``min_kv_groups`` KV groups and ``min_channels`` channels, and
  MLP widths are rounded to ``multiple_of`` (64 or 256 suit GPU kernels and vLLM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hubprune.cost import removal_savings
from hubprune.errors import BudgetError, RecipeError
from hubprune.methods.budget import BUDGET_WHAT
from hubprune.methods.registry import MethodContext
from hubprune.plan import Plan, Unit
from hubprune.shape import Dims, Shape

SCOPES = ("global", "uniform")
POOLS = ("heads", "channels")


@dataclass
class WidthParams:
    """Options every width method accepts (``--method-arg KEY=VALUE``)."""

    scope: str = "global"
    units: str = "heads,channels"
    multiple_of: int = 1
    min_kv_groups: int = 1
    min_channels: int | None = None

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise RecipeError(f"scope must be one of {', '.join(SCOPES)}, got '{self.scope}'")
        pools = self.pools()
        if not pools or set(pools) - set(POOLS):
            raise RecipeError(f"units must be heads, channels or heads,channels, got '{self.units}'")
        for name in ("multiple_of", "min_kv_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RecipeError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.min_channels is not None and (
            not isinstance(self.min_channels, int) or self.min_channels < 1
        ):
            raise RecipeError(f"min_channels must be a whole number >= 1, got {self.min_channels!r}")

    def pools(self) -> list[str]:
        return [p.strip() for p in str(self.units).split(",") if p.strip()]

    def check(self, dims: Dims) -> None:
        """Refuse settings the model's widths cannot honour."""
        if self.multiple_of > dims.intermediate_size:
            raise BudgetError(
                f"multiple_of={self.multiple_of} is larger than the MLP width ({dims.intermediate_size})"
            )
        if self.min_kv_groups > dims.num_key_value_heads:
            raise BudgetError(
                f"min_kv_groups={self.min_kv_groups} is more than the {dims.num_key_value_heads} KV groups per block"
            )
        if self.min_channels is not None and self.min_channels > dims.intermediate_size:
            raise BudgetError(
                f"min_channels={self.min_channels} is more than the MLP width ({dims.intermediate_size})"
            )


def _pool_sizes(dims: Dims) -> dict[str, int]:
    return {"heads": dims.num_key_value_heads, "channels": dims.intermediate_size}


def _unit_savings(ctx: MethodContext, pool: str, by: str) -> tuple[list[float], float]:
    """Per block, what one unit of `pool` saves in kind `by`; and the model's dense total."""
    dims = Dims.from_config(ctx.model.config)
    shapes = [Shape.from_units([Unit(pool, b, (0,))], dims) for b in range(dims.num_blocks)]
    return removal_savings(ctx.model, ctx.adapter, shapes, by)


def _round_kept(kept: int, full: int, low: int, multiple: int) -> int:
    """Kept width rounded to the nearest multiple of `multiple` within [low, full]."""
    if multiple > 1:
        kept = int(round(kept / multiple)) * multiple
    return max(low, min(full, kept))


def pool_fraction(ctx: MethodContext, params: WidthParams) -> tuple[dict[str, list[float]], float]:
    """The pools that can serve `ctx.budget`, each with what one of its units saves per block in
    the budget's kind, and the fraction of each pool's units that goes (every pool gives up the
    same fraction of what it can save; see the module docstring)."""
    assert ctx.budget is not None
    budget = ctx.budget
    dims = Dims.from_config(ctx.model.config)
    params.check(dims)
    asked = params.pools()
    sizes = _pool_sizes(dims)
    minimum = _minimum_widths(params)
    if budget.by == "units" and not isinstance(budget.amount, float):
        raise BudgetError(
            f"a width budget by units is a fraction below 1 of the {' and '.join(asked)}, e.g. 0.2"
        )
    savings = {pool: _unit_savings(ctx, pool, budget.by) for pool in asked}
    # A pool that saves nothing in the budget's kind (channels for the KV cache) is left alone.
    pools = [pool for pool in asked if sum(savings[pool][0]) > 0]
    if not pools:
        raise BudgetError(
            f"pruning {' and '.join(asked)} cannot reduce {BUDGET_WHAT[budget.by]}; "
            + ("prune heads too (units=heads,channels)" if budget.by == "kv" else "choose another budget")
        )
    if budget.by == "units":
        fraction = float(budget.amount)
    else:
        dense_total = savings[pools[0]][1]
        prunable = sum(sum(savings[pool][0]) * sizes[pool] for pool in pools)
        fraction = budget.amount * dense_total / prunable
    removable = min((sizes[p] - minimum[p]) / sizes[p] for p in pools)
    if fraction > removable + 1e-9:
        floors = {
            "heads": f"min_kv_groups={minimum['heads']}",
            "channels": f"min_channels={minimum['channels']}",
        }
        raise BudgetError(
            f"removing {budget.amount:.0%} of {BUDGET_WHAT[budget.by]} would leave blocks narrower than the "
            f"minimum widths ({', '.join(floors[p] for p in pools)})"
        )
    return {pool: savings[pool][0] for pool in pools}, fraction


def _minimum_widths(params: WidthParams) -> dict[str, int]:
    return {"heads": params.min_kv_groups, "channels": params.min_channels or params.multiple_of}


def select_width(
    ctx: MethodContext,
    scores: dict[str, list[torch.Tensor]],
    params: WidthParams,
    *,
    standardise: bool = True,
) -> list[Unit]:
    """Removals meeting `ctx.budget` from per-block unit `scores` ({"heads": [tensor per block of
    KV-group scores], "channels": [...]}), highest kept; see the module docstring. Scores already
    comparable across blocks (policy gradient's keep probabilities) pass `standardise=False`."""
    per_unit_savings, fraction = pool_fraction(ctx, params)
    dims = Dims.from_config(ctx.model.config)
    sizes, minimum = _pool_sizes(dims), _minimum_widths(params)
    units: list[Unit] = []
    for pool, per_unit in per_unit_savings.items():
        kept = _kept_counts(
            scores[pool], per_unit, fraction, sizes[pool], minimum[pool], params, pool, standardise
        )
        for b, count in enumerate(kept):
            order = torch.argsort(scores[pool][b].double(), stable=True)  # least important first
            gone = sorted(int(i) for i in order[: sizes[pool] - count])
            if gone:
                units.append(Unit(pool, b, tuple(gone)))
    if not units:
        raise BudgetError(
            f"amount {ctx.budget.amount} removes nothing once widths are rounded to multiple_of"
        )
    return sorted(units, key=lambda u: (u.block, u.kind))


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """Scores of one block's units as z-scores (a single unit, or equal scores, give zeros)."""
    scores = scores.double()
    spread = scores.std() if scores.numel() > 1 else scores.new_tensor(0.0)
    return (scores - scores.mean()) / spread if spread > 0 else torch.zeros_like(scores)


def _kept_counts(
    scores: list[torch.Tensor],
    per_unit: list[float],
    fraction: float,
    full: int,
    low: int,
    params: WidthParams,
    pool: str,
    standardise: bool = True,
) -> list[int]:
    """Units each block keeps so that the pool gives up `fraction` of its savings."""
    multiple = params.multiple_of if pool == "channels" else 1
    if params.scope == "uniform":  # at least the fraction, as block budgets remove at least theirs
        return [_round_kept(full - math.ceil(fraction * full - 1e-9), full, low, multiple) for _ in scores]
    # Global: remove the lowest standardised scores across blocks (respecting each block's
    # minimum) until the pool's savings reach its share; then round each block's width.
    target = fraction * sum(per_unit) * full
    candidates = sorted(
        (
            (float(s), b, i)
            for b, block in enumerate(scores)
            for i, s in enumerate((standardised(block) if standardise else block.double()).tolist())
        ),
        key=lambda t: (t[0], t[1], t[2]),
    )
    kept = [full] * len(scores)
    saved = 0.0
    for _, b, _ in candidates:
        if saved >= target - 1e-9:
            break
        if kept[b] <= low:
            continue
        kept[b] -= 1
        saved += per_unit[b]
    return [_round_kept(k, full, low, multiple) for k in kept]


def width_plan(
    ctx: MethodContext,
    method: str,
    params: dict,
    removed: list[Unit],
    head_scores: list[torch.Tensor] | None,
    score_meaning: str,
) -> Plan:
    """The plan of a width method: its removals, one score per KV group (`head_scores`, per
    block; per-channel scores go into the plan's tensors) and the units removed per pool."""
    gone = {(u.kind, u.block): set(u.indices or ()) for u in removed}
    scores = [
        {"unit": Unit("heads", b, (g,)), "score": float(s), "removed": g in gone.get(("heads", b), set())}
        for b, block in enumerate(head_scores or [])
        for g, s in enumerate(block.tolist())
    ]
    return Plan(
        method=method,
        unit_kind="width",
        removed=removed,
        scores=scores,
        score_meaning=score_meaning,
        params=params,
        budget={
            "requested": ctx.budget.to_dict() if ctx.budget else None,
            "reached": {
                "units_removed": {
                    k: sum(len(u.indices or ()) for u in removed if u.kind == k) for k in POOLS
                },
            },
        },
        calibration=ctx.calibration.info if ctx.calibration is not None else None,
        seed=ctx.seed,
    )
