"""Reverse-order block removal: drop the last n blocks, no data needed.

*Reassessing Layer Pruning in LLMs* (arXiv 2411.15558) found this, followed by partial
fine-tuning of the last blocks and `lm_head`, beats scoring metrics at 25% removal.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubprune.methods.blocks import block_plan
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.plan import Plan


@dataclass
class ReverseOrderParams:
    """No parameters: the order is fixed."""


def plan_reverse_order(ctx: MethodContext, params: ReverseOrderParams) -> Plan:
    n = ctx.adapter.num_blocks(ctx.model)
    scores = [float(i) for i in range(n)]  # position as score: deeper = removed first
    order = list(range(n - 1, -1, -1))
    return block_plan(
        ctx, "reverse-order", params, scores, order, "block position; the highest is removed first"
    )


SPEC = register_method(
    MethodSpec(
        name="reverse-order",
        title="Reverse-order block removal",
        reference_url="https://arxiv.org/abs/2411.15558",
        params_cls=ReverseOrderParams,
        plan_fn=plan_reverse_order,
        needs_calibration=False,
        streams=True,  # needs no weights at all
        citation="@article{lu2024reassessing, title={Reassessing Layer Pruning in LLMs: New Insights and Methods}, "
        "author={Lu, Yao and others}, journal={arXiv preprint arXiv:2411.15558}, year={2024}}",
    )
)
