"""Per-block perplexity: remove each block alone, measure calibration perplexity, remove the n
whose absence hurts least. Cost: L full forward passes over the calibration set."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from hubprune.evaluation.perplexity import perplexity
from hubprune.methods.blocks import block_plan
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.plan import Plan
from hubprune.surgery import blocks_skipped


@dataclass
class PerplexityParams:
    """No parameters beyond the calibration settings."""


def plan_perplexity(ctx: MethodContext, params: PerplexityParams) -> Plan:
    assert ctx.calibration is not None
    n = ctx.adapter.num_blocks(ctx.model)
    batches = ctx.calibration.batches(ctx.batch_size)
    scores = []
    for i in tqdm(range(n), desc="Perplexity without each block", leave=False):
        with blocks_skipped(ctx.model, ctx.adapter, [i]):
            scores.append(perplexity(ctx.model, batches))
    order = sorted(range(n), key=lambda i: (scores[i], i))
    return block_plan(
        ctx,
        "perplexity",
        params,
        scores,
        order,
        "calibration perplexity with the block removed; the lowest is removed first",
    )


SPEC = register_method(
    MethodSpec(
        name="perplexity",
        title="Per-block perplexity",
        reference_url="",
        params_cls=PerplexityParams,
        plan_fn=plan_perplexity,
        needs_calibration=True,
    )
)
