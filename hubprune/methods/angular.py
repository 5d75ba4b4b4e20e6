"""Contiguous angular distance (Gromov et al., arXiv 2403.17887).

d(i, n) = arccos(cos(h_i, h_{i+n})) / pi on the last non-padded token of each sample, averaged;
the contiguous run [i*, i*+n) with the smallest d is removed. One forward pass per batch gives
every (i, n). A block's reported score is d(i, n) of the run starting at it (inf where no run of
length n starts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hubprune.cost import block_savings
from hubprune.methods.blocks import block_plan
from hubprune.methods.capture import run_blocks
from hubprune.methods.metrics import angular_distance
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.plan import Plan


@dataclass
class AngularParams:
    """No parameters; the run length n comes from the budget."""


def angular_run_distances(ctx: MethodContext, n: int) -> list[float]:
    """Mean angular distance d(i, n) for every start i in 0..L-n."""
    blocks = ctx.adapter.num_blocks(ctx.model)
    # "last_states": batch -> boundary index -> [B, D] state at the last real token (L+1 small
    # vectors per row); in a dict the streamed engine saves and restores when it resumes
    state: dict[str, dict[int, dict[int, torch.Tensor]]] = {"last_states": {}}

    def last_token(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last = mask.long().sum(dim=1) - 1  # right padding: the last real token
        return h[torch.arange(h.shape[0], device=h.device), last].cpu()

    def on_block(i: int, b: int, h_in: torch.Tensor, h_out: torch.Tensor, mask: torch.Tensor) -> None:
        states = state["last_states"].setdefault(b, {})
        states[i] = last_token(h_in, mask)
        if i == blocks - 1:
            states[blocks] = last_token(h_out, mask)

    masks = run_blocks(ctx, on_block, state=state, tag="angular")
    last_states = state["last_states"]
    sums = [0.0] * (blocks - n + 1)
    for b in range(len(masks)):
        for i in range(blocks - n + 1):
            sums[i] += float(angular_distance(last_states[b][i], last_states[b][i + n]).sum())
    count = sum(mask.shape[0] for mask in masks)
    return [s / count for s in sums]


def plan_angular(ctx: MethodContext, params: AngularParams) -> Plan:
    # Without a budget (scoring only) the run length is one block.
    n = (
        ctx.budget.count_for_uniform(*block_savings(ctx.model, ctx.adapter, ctx.budget.by))
        if ctx.budget
        else 1
    )
    distances = angular_run_distances(ctx, n)
    start = min(range(len(distances)), key=lambda i: (distances[i], i))
    scores = distances + [math.inf] * (ctx.adapter.num_blocks(ctx.model) - len(distances))
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return block_plan(
        ctx,
        "angular",
        params,
        scores,
        order,
        f"angular distance between h_i and h_(i+{n}) on the last token; the run starting at the lowest is removed",
        chosen=list(range(start, start + n)) if ctx.budget else [],
    )


SPEC = register_method(
    MethodSpec(
        name="angular",
        title="Contiguous angular distance",
        reference_url="https://arxiv.org/abs/2403.17887",
        params_cls=AngularParams,
        plan_fn=plan_angular,
        needs_calibration=True,
        streams=True,
        citation="@article{gromov2024unreasonable, title={The Unreasonable Ineffectiveness of the Deeper Layers}, "
        "author={Gromov, Andrey and others}, journal={arXiv preprint arXiv:2403.17887}, year={2024}}",
    )
)
