"""Random block removal: the seeded baseline every metric should beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hubprune.methods.blocks import block_plan
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.plan import Plan


@dataclass
class RandomParams:
    """No parameters; the run's `--seed` fixes the choice."""


def plan_random(ctx: MethodContext, params: RandomParams) -> Plan:
    n = ctx.adapter.num_blocks(ctx.model)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed)).tolist()
    scores = [float(order.index(i)) for i in range(n)]
    return block_plan(
        ctx, "random", params, scores, order, "random rank from the seed; the lowest is removed first"
    )


SPEC = register_method(
    MethodSpec(
        name="random",
        title="Random block removal (seeded baseline)",
        reference_url="",
        params_cls=RandomParams,
        plan_fn=plan_random,
        needs_calibration=False,
        streams=True,  # needs no weights at all
    )
)
