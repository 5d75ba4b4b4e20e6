"""Block influence (ShortGPT, arXiv 2403.03853): remove the blocks that change the stream least.

BI_i = 1 - mean over tokens of cos(h_i, h_{i+1}); the n lowest are removed. One forward pass per
calibration batch yields every block's score. Cost: N*T tokens through the model once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hubprune.methods.blocks import block_plan
from hubprune.methods.capture import run_blocks
from hubprune.methods.metrics import block_influence, masked_mean
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.plan import Plan


@dataclass
class BlockInfluenceParams:
    """No parameters beyond the calibration settings."""


def block_influence_scores(ctx: MethodContext) -> list[float]:
    """Mean BI of every block over all non-padding calibration tokens."""
    state = {"sums": [0.0] * ctx.adapter.num_blocks(ctx.model)}

    def on_block(i: int, _b: int, h_in: torch.Tensor, h_out: torch.Tensor, mask: torch.Tensor) -> None:
        state["sums"][i] += masked_mean(block_influence(h_in, h_out), mask)[0]

    count = sum(int(mask.sum()) for mask in run_blocks(ctx, on_block, state=state, tag="block-influence"))
    return [s / count for s in state["sums"]]


def plan_block_influence(ctx: MethodContext, params: BlockInfluenceParams) -> Plan:
    scores = block_influence_scores(ctx)
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return block_plan(
        ctx,
        "block-influence",
        params,
        scores,
        order,
        "BI = 1 - mean cos(h_in, h_out); the lowest is removed first",
    )


SPEC = register_method(
    MethodSpec(
        name="block-influence",
        title="Block influence (ShortGPT)",
        reference_url="https://arxiv.org/abs/2403.03853",
        params_cls=BlockInfluenceParams,
        plan_fn=plan_block_influence,
        needs_calibration=True,
        streams=True,
        citation="@article{men2024shortgpt, title={ShortGPT: Layers in Large Language Models are More Redundant "
        "Than You Expect}, author={Men, Xin and others}, journal={arXiv preprint arXiv:2403.03853}, year={2024}}",
    )
)
