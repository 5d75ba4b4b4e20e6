"""Per-block perplexity: remove each block alone, measure calibration perplexity, remove the n
whose absence hurts least. Cost: L full forward passes over the calibration set.

Streamed (`ctx.weights`), the L passes run layer-wise together: block j is read once and runs on
the dense stream and on the stream of every candidate i < j (candidate i's stream is the dense
one at block i, which it skips); the final norm and head then score every stream. One read of
each block instead of L, at the price of L+1 streams of activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hubprune.evaluation.perplexity import TOKENS_PER_FORWARD, perplexity, token_nll
from hubprune.methods.blocks import block_plan
from hubprune.methods.capture import block_inputs, first_tensor, resident
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.plan import Plan
from hubprune.surgery import blocks_skipped


@dataclass
class PerplexityParams:
    """No parameters beyond the calibration settings."""


def skip_perplexities(ctx: MethodContext) -> list[float]:
    """Calibration perplexity of the model without block i, for every i (in memory)."""
    assert ctx.calibration is not None
    batches = ctx.calibration.batches(ctx.batch_size)
    scores = []
    for i in tqdm(
        range(ctx.adapter.num_blocks(ctx.model)), desc="Perplexity without each block", leave=False
    ):
        with blocks_skipped(ctx.model, ctx.adapter, [i]):
            scores.append(perplexity(ctx.model, batches))
    return scores


@torch.no_grad()
def streamed_skip_perplexities(ctx: MethodContext) -> list[float]:
    """:func:`skip_perplexities` for a streamed model: all L candidates advance block by block."""
    weights, adapter, model = ctx.weights, ctx.adapter, ctx.model
    assert weights is not None and ctx.calibration is not None
    n = adapter.num_blocks(model)
    with resident(ctx, model.get_submodule(adapter.embed)):
        inputs = block_inputs(model, adapter, ctx.calibration, ctx.batch_size)
    dense = inputs.states
    streams: list[list[torch.Tensor]] = [[] for _ in range(n)]  # candidate -> per-batch states
    for j in tqdm(
        range(n),
        desc=f"Perplexity without each of {n} blocks, one block at a time",
        unit="block",
        leave=False,
    ):
        streams[j] = [h.clone() for h in dense]  # candidate j skips block j
        with weights.resident(weights.block(j)):
            block = weights.block(j)
            for b, kwargs in enumerate(inputs.kwargs):
                for i in range(j):
                    streams[i][b] = first_tensor(block(streams[i][b], **kwargs[j]))
                dense[b] = first_tensor(block(dense[b], **kwargs[j]))
    head = [model.get_submodule(adapter.final_norm), model.get_submodule(adapter.lm_head)]
    input_ids = [ids for ids, _ in ctx.calibration.batches(ctx.batch_size)]
    scores = []
    with weights.resident(*head):
        for states in streams:
            total, count = 0.0, 0
            for b, h in enumerate(states):
                rows = max(1, TOKENS_PER_FORWARD // h.shape[1])
                for start in range(0, h.shape[0], rows):
                    logits = adapter.final_logits(model.config, head[1](head[0](h[start : start + rows])))
                    nll, k = token_nll(
                        logits,
                        input_ids[b][start : start + rows].to(h.device),
                        inputs.masks[b][start : start + rows],
                    )
                    total, count = total + nll, count + k
            scores.append(math.exp(total / count))
    return scores


def plan_perplexity(ctx: MethodContext, params: PerplexityParams) -> Plan:
    scores = skip_perplexities(ctx) if ctx.weights is None else streamed_skip_perplexities(ctx)
    n = len(scores)
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
        streams=True,
    )
)
