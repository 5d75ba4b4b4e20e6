"""Wanda-SP: structured Wanda scores for KV groups and MLP channels (FLAP-style width pruning).

Wanda (Sun et al. 2023, arXiv 2306.11695) scores a weight by ``|W_ij| * ||X_j||``: its magnitude
times the norm of the input feature it multiplies over calibration tokens. The structured
variant (Wanda-SP, the baseline of An et al. 2024 FLAP, arXiv 2312.11983, and of the
policy-gradient paper, arXiv 2406.10576) scores a whole input column of the projections that
read a prunable space, summing over its rows: channel c of block i scores
``sum_r |W_down[r, c]| * ||X_down[:, c]||``; a KV group sums the columns of ``o_proj`` that
belong to its query heads. One forward pass per calibration batch collects every block's input
norms (forward pre-hooks accumulate ``sum x^2`` per column; nothing else is kept).

Removal per block (``scope=uniform``) or across blocks (``scope=global``), under any budget
(:mod:`hubprune.methods.width`). Scores of every KV group are in the plan; the per-channel
scores go beside the manifest as tensors (``hubprune-plan.safetensors``), not into JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from hubprune.arch.adapter import CHANNELS, QUERY
from hubprune.methods.capture import run_blocks
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.methods.width import WidthParams, select_width, width_plan
from hubprune.plan import Plan
from hubprune.shape import Dims


@dataclass
class WandaSPParams(WidthParams):
    """The width options (scope, units, multiple_of, min_kv_groups, min_channels)."""


def column_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """Wanda-SP score of every input column: ``sum_rows |W| * ||X_col||`` (one value per column)."""
    return (weight.detach().abs().double() * input_sq_sum.to(weight.device).double().sqrt()).sum(dim=0)


@torch.no_grad()
def wanda_sp_scores(ctx: MethodContext) -> dict[str, list[torch.Tensor]]:
    """{"heads": per block, one score per KV group; "channels": per block, one per channel}.

    Forward pre-hooks on each block's reader projections accumulate the squared input of every
    column over calibration tokens (padding excluded); once all batches went through a block, its
    columns are scored against its weights (while they are resident, for a streamed model)."""
    assert ctx.calibration is not None
    adapter, model = ctx.adapter, ctx.model
    dims = Dims.from_config(model.config)
    group_cols = dims.group_size * dims.head_dim
    readers: dict[tuple[int, str], nn.Module] = {}
    # input square sums per "block.space", then the scores: what a streamed run saves to resume
    state: dict[str, dict] = {"sq": {}, "heads": {}, "channels": {}}
    current: list[torch.Tensor] = []
    hooks = []

    def add(key: str, x: torch.Tensor) -> None:
        x = x.double() * current[0].unsqueeze(-1)
        sq = x.pow(2).sum(dim=(0, 1)).cpu()
        state["sq"][key] = state["sq"][key] + sq if key in state["sq"] else sq

    for b, block in enumerate(adapter.blocks(model)):
        for space in (QUERY, CHANNELS):
            for p in adapter.readers_of(space):
                root = adapter.attention if p.sublayer == "attn" else adapter.mlp
                module = block.get_submodule(f"{root}.{p.name}")
                readers[(b, space)] = module
                hooks.append(
                    module.register_forward_pre_hook(lambda _m, args, k=f"{b}.{space}": add(k, args[0]))
                )

    def after_block(b: int, _block: nn.Module) -> None:
        per_column = column_scores(readers[(b, QUERY)].weight, state["sq"].pop(f"{b}.{QUERY}"))
        state["heads"][b] = per_column.view(dims.num_key_value_heads, group_cols).sum(dim=1).cpu()
        state["channels"][b] = column_scores(
            readers[(b, CHANNELS)].weight, state["sq"].pop(f"{b}.{CHANNELS}")
        ).cpu()

    try:
        run_blocks(
            ctx, lambda *_: None, after_block=after_block, state=state, tag="wanda-sp", current=current
        )
    finally:
        for h in hooks:
            h.remove()
    return {key: [state[key][b] for b in range(dims.num_blocks)] for key in ("heads", "channels")}


def plan_wanda_sp(ctx: MethodContext, params: WandaSPParams) -> Plan:
    """Score every KV group and channel, then remove under the budget (nothing without one)."""
    scores = wanda_sp_scores(ctx)
    removed = select_width(ctx, scores, params) if ctx.budget is not None else []
    plan = width_plan(
        ctx,
        "wanda-sp",
        asdict(params),
        removed,
        scores["heads"],
        "sum over a KV group's o_proj columns of |W| x ||X||; the lowest are removed first "
        "(per-channel scores: plan tensors wanda_sp.channels.<block>)",
    )
    plan.tensors = {f"wanda_sp.channels.{b}": s.float() for b, s in enumerate(scores["channels"])}
    return plan


SPEC = register_method(
    MethodSpec(
        name="wanda-sp",
        title="Wanda-SP (structured Wanda: KV groups and MLP channels)",
        reference_url="https://arxiv.org/abs/2312.11983",
        params_cls=WandaSPParams,
        plan_fn=plan_wanda_sp,
        needs_calibration=True,
        unit_kind="width",
        streams=True,
        citation="@inproceedings{an2024flap, title={Fluctuation-based Adaptive Structured Pruning for Large "
        "Language Models}, author={An, Yongqi and Zhao, Xu and Yu, Tao and Tang, Ming and Wang, Jinqiao}, "
        "booktitle={AAAI}, year={2024}}",
    )
)
