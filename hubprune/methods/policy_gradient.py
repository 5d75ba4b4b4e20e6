"""Policy-gradient structural pruning (Gao et al. 2024, *Bypass Back-propagation*, arXiv 2406.10576).

Learns a Bernoulli keep probability for every prunable unit (KV groups with their query heads,
MLP channels, or whole blocks) by minimising the masked model's language-model loss on
calibration text, with forward passes only: no autograd graph is ever built through the LLM
(:mod:`hubprune.methods.policy` holds the estimator, the schedule and the budget projection).

- Masks act through the shared masking code (:func:`hubprune.transforms.masked` for heads and
  channels, :func:`hubprune.transforms.gated` for blocks), with one mask per batch row, so the K
  masks of a step run in one batched forward pass and no weight is copied.
- Initialisation: from a metric (Wanda-SP for heads and channels, block influence for blocks;
  per-block z-scores through a sigmoid, then shifted onto the budget) or uniform.
- The loss of a mask is the mean next-token NLL of the calibration batch of that step under
  it. The final mask keeps the units with the highest probabilities, under the budget, minimum
  widths and `multiple_of` of every width method (:func:`hubprune.methods.width.select_width`).
- With a checkpoint (`ctx.checkpoint`), the search state is saved every `checkpoint_every`
  steps and a re-run of the same command resumes from it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import torch

from hubprune.cost import block_savings
from hubprune.errors import BudgetError, RecipeError
from hubprune.evaluation.perplexity import row_nll
from hubprune.methods.block_influence import block_influence_scores
from hubprune.methods.blocks import block_plan
from hubprune.methods.policy import NORMALISATIONS, PolicySearch, Pool
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.methods.wanda_sp import wanda_sp_scores
from hubprune.methods.width import WidthParams, pool_fraction, select_width, standardised, width_plan
from hubprune.plan import Plan, Unit
from hubprune.rundir import fault_point
from hubprune.shape import Dims
from hubprune.transforms import gated, masked

GRANULARITIES = ("heads", "channels", "heads,channels", "blocks")
INITS = ("metric", "uniform")
#: Tokens whose logits are scored at once (whole rows, one at least). The [tokens, vocab] fp32
#: logits and the two copies cross-entropy makes of them dominate the peak memory (3 x 192 MiB at
#: 1024 tokens and a 49K vocabulary: more than the K x batch rows of the masked forward).
LOGIT_TOKENS = 256


@dataclass
class PolicyGradientParams:
    """`--method-arg` options. `granularity`: heads, channels, heads,channels (the paper's main
    setting) or blocks; `k`: masks drawn per step (K); `lr`: the base learning rate of every pool
    (`lr_heads`, `lr_channels`, `lr_blocks` override it per pool); `normalisation`: ``sqrt``
    (the released code) or ``reinforce``; `min_prob`: every keep probability stays in
    [min_prob, 1 - min_prob] so that no unit stops being tried; `checkpoint_every`: steps between saved states (0:
    never); the width options as every width method."""

    granularity: str = "heads,channels"
    steps: int = 200
    k: int = 2
    lr: float = 0.05
    lr_heads: float | None = None
    lr_channels: float | None = None
    lr_blocks: float | None = None
    momentum: float = 0.9
    normalisation: str = "sqrt"
    baseline_window: int = 10
    init: str = "metric"
    min_prob: float = 0.01
    masks_per_forward: int | None = None
    checkpoint_every: int = 25
    multiple_of: int = 1
    min_kv_groups: int = 1
    min_channels: int | None = None

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise RecipeError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got '{self.granularity}'"
            )
        if not _whole(self.k) or self.k < 2:
            raise RecipeError(f"k (masks per step) must be a whole number >= 2, got {self.k!r}")
        if not _whole(self.steps) or self.steps < 1:
            raise RecipeError(f"steps must be a whole number >= 1, got {self.steps!r}")
        for name in ("lr", "lr_heads", "lr_channels", "lr_blocks"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or not value > 0):
                raise RecipeError(f"{name} must be a learning rate above 0, got {value!r}")
        if not isinstance(self.momentum, int | float) or not 0 <= self.momentum < 1:
            raise RecipeError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.normalisation not in NORMALISATIONS:
            raise RecipeError(
                f"normalisation must be one of {', '.join(NORMALISATIONS)}, got '{self.normalisation}'"
            )
        if not isinstance(self.min_prob, int | float) or not 0 <= self.min_prob < 0.5:
            raise RecipeError(f"min_prob must be in [0, 0.5), got {self.min_prob!r}")
        if self.init not in INITS:
            raise RecipeError(f"init must be one of {', '.join(INITS)}, got '{self.init}'")
        if not _whole(self.baseline_window) or self.baseline_window < 1:
            raise RecipeError(f"baseline_window must be a whole number >= 1, got {self.baseline_window!r}")
        if self.masks_per_forward is not None and (
            not _whole(self.masks_per_forward) or self.masks_per_forward < 1
        ):
            raise RecipeError(
                f"masks_per_forward must be a whole number >= 1, got {self.masks_per_forward!r}"
            )
        if not _whole(self.checkpoint_every) or self.checkpoint_every < 0:
            raise RecipeError(f"checkpoint_every must be a whole number >= 0, got {self.checkpoint_every!r}")
        if not self.blocks:
            self.width()  # the width options' own checks

    @property
    def blocks(self) -> bool:
        return self.granularity == "blocks"

    def width(self) -> WidthParams:
        """The width options, for the final selection (global: the probabilities compare across blocks)."""
        return WidthParams(
            scope="global",
            units=self.granularity,
            multiple_of=self.multiple_of,
            min_kv_groups=self.min_kv_groups,
            min_channels=self.min_channels,
        )

    def check(self, dims: Dims) -> None:
        """Refuse width options the model's widths cannot honour (before any weight is loaded)."""
        if not self.blocks:
            self.width().check(dims)

    def pool_lr(self, pool: str) -> float:
        override = {"heads": self.lr_heads, "channels": self.lr_channels, "blocks": self.lr_blocks}[pool]
        return float(override if override is not None else self.lr)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pool_sizes(ctx: MethodContext) -> dict[str, tuple[int, int]]:
    """Per pool: (blocks, units per block)."""
    dims = Dims.from_config(ctx.model.config)
    return {
        "heads": (dims.num_blocks, dims.num_key_value_heads),
        "channels": (dims.num_blocks, dims.intermediate_size),
        "blocks": (1, dims.num_blocks),
    }


def _keep_targets(ctx: MethodContext, params: PolicyGradientParams) -> dict[str, float]:
    """Expected units kept per pool: what the budget leaves (the projection holds it)."""
    if ctx.budget is None:
        raise BudgetError("policy gradient optimises masks under a budget: pass --amount")
    sizes = _pool_sizes(ctx)
    if params.blocks:
        savings, dense = block_savings(ctx.model, ctx.adapter, ctx.budget.by)
        removed = ctx.budget.count_for_uniform(savings, dense)
        return {"blocks": float(sizes["blocks"][1] - removed)}
    pools, fraction = pool_fraction(ctx, params.width())
    return {pool: (1 - fraction) * sizes[pool][0] * sizes[pool][1] for pool in pools}


def _metric_scores(ctx: MethodContext, pools: list[str]) -> dict[str, torch.Tensor]:
    """Per pool, the initialising metric as z-scores ([blocks, units]): within each block for
    heads and channels (raw Wanda-SP scores grow with depth), across blocks for blocks."""
    if pools == ["blocks"]:
        return {"blocks": standardised(torch.tensor(block_influence_scores(ctx))).unsqueeze(0)}
    scores = wanda_sp_scores(ctx)
    return {pool: torch.stack([standardised(s) for s in scores[pool]]) for pool in pools}


def initial_pools(
    ctx: MethodContext, params: PolicyGradientParams, keep: dict[str, float]
) -> tuple[dict[str, Pool], dict[str, torch.Tensor] | None]:
    """The starting policy: sigmoid of the metric's z-scores shifted onto the budget, or uniform;
    also the metric's z-scores (None when uniform)."""
    sizes = _pool_sizes(ctx)
    if params.init == "uniform":
        metric = None
        start = {p: torch.full(sizes[p], keep[p] / (sizes[p][0] * sizes[p][1])) for p in keep}
    else:
        metric = _metric_scores(ctx, list(keep))
        start = {p: torch.sigmoid(metric[p]) for p in keep}
    pools = {p: Pool(start[p].flatten(), keep[p], params.pool_lr(p), params.min_prob) for p in keep}
    return pools, metric


def _row_masks(
    masks: dict[str, torch.Tensor],
    sizes: dict[str, tuple[int, int]],
    rows: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, torch.Tensor]]:
    """Masks of a chunk of mask sets [M, N], one per batch row ([M * rows, ...]): per-block unit
    masks for :func:`masked` and per-block gates for :func:`gated`."""
    unit: dict[int, dict[str, torch.Tensor]] = {}
    gates: dict[int, torch.Tensor] = {}
    for pool, m in masks.items():
        per_row = m.to(device=device, dtype=dtype).repeat_interleave(rows, dim=0)
        if pool == "blocks":
            for b in range(per_row.shape[1]):
                gates[b] = per_row[:, b].view(-1, 1, 1)
        else:
            blocks, width = sizes[pool]
            per_block = per_row.view(-1, blocks, width)
            for b in range(blocks):
                unit.setdefault(b, {})[pool] = per_block[:, b]
    return unit, gates


class MaskedLoss:
    """The loss of each of K mask sets on one calibration batch: mean next-token NLL of the masked
    model, with forward passes only (the objective of :meth:`PolicySearch.run`)."""

    def __init__(self, ctx: MethodContext, params: PolicyGradientParams) -> None:
        assert ctx.calibration is not None
        self.params = params
        self.model, self.adapter = ctx.model, ctx.adapter
        self.batches = list(ctx.calibration.batches(ctx.batch_size))
        self.sizes = _pool_sizes(ctx)
        # Under `--device auto` the blocks may sit on several GPUs: inputs go where the embeddings
        # are, logits are made where the head is.
        embed = self.model.get_submodule(self.adapter.embed).weight
        self.device, self.dtype = embed.device, embed.dtype
        self.backbone = self.adapter.decoder_model(self.model)
        self.head = self.model.get_submodule(self.adapter.lm_head)
        self.head_device = self.head.weight.device

    def __call__(self, masks: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        input_ids, attention_mask = self.batches[step % len(self.batches)]
        count = next(iter(masks.values())).shape[0]
        per_forward = self.params.masks_per_forward or count
        losses = []
        for start in range(0, count, per_forward):
            chunk = {pool: m[start : start + per_forward] for pool, m in masks.items()}
            losses.append(self._losses(chunk, input_ids, attention_mask))
        return torch.cat(losses)

    def tokens_seen(self, steps: int) -> int:
        """Calibration tokens the policy was trained on over `steps` steps (each step one batch)."""
        per_batch = [int(mask.sum()) for _, mask in self.batches]
        full, rest = divmod(steps, len(per_batch))
        return full * sum(per_batch) + sum(per_batch[:rest])

    @torch.inference_mode()
    def _losses(
        self, masks: dict[str, torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        sets, rows = next(iter(masks.values())).shape[0], input_ids.shape[0]
        ids = input_ids.repeat(sets, 1).to(self.device)
        mask = attention_mask.repeat(sets, 1).to(self.device)
        unit, gates = _row_masks(masks, self.sizes, rows, self.dtype, self.device)
        with ExitStack() as stack:
            stack.enter_context(masked(self.model, self.adapter, unit))
            stack.enter_context(
                gated(
                    self.model,
                    self.adapter,
                    {Unit(kind, b): g for b, g in gates.items() for kind in ("attn", "mlp")},
                )
            )
            hidden = self.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        nll = torch.empty(ids.shape[0], dtype=torch.float64)
        count = torch.empty(ids.shape[0], dtype=torch.float64)
        for lo, hi in _chunks(ids.shape[0], max(1, LOGIT_TOKENS // ids.shape[1])):
            logits = self.adapter.final_logits(
                self.model.config, self.head(hidden[lo:hi].to(self.head_device))
            )
            row, n = row_nll(logits, ids[lo:hi].to(self.head_device), mask[lo:hi].to(self.head_device))
            nll[lo:hi], count[lo:hi] = row.cpu(), n.cpu()
        return nll.view(sets, rows).sum(1) / count.view(sets, rows).sum(1).clamp_min(1)


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, total, size):
        yield lo, min(total, lo + size)


def plan_policy_gradient(ctx: MethodContext, params: PolicyGradientParams) -> Plan:
    """Optimise keep probabilities by policy gradient, then keep the most probable units."""
    start = time.perf_counter()
    keep = _keep_targets(ctx, params)
    pools, metric = initial_pools(ctx, params, keep)
    initial = {name: pool.probs.clone() for name, pool in pools.items()}
    search = PolicySearch(
        pools,
        steps=params.steps,
        samples=params.k,
        normalisation=params.normalisation,
        momentum=params.momentum,
        baseline_window=params.baseline_window,
        seed=ctx.seed,
    )
    objective = MaskedLoss(ctx, params)
    search.run(
        objective,
        checkpoint=ctx.checkpoint,
        checkpoint_every=params.checkpoint_every,
        desc=f"Policy gradient ({params.granularity})",
        after_checkpoint=lambda step: fault_point(f"policy-checkpoint-{step}"),
    )
    sizes = _pool_sizes(ctx)
    probs = {name: pool.probs.view(sizes[name]) for name, pool in search.pools.items()}
    cost = {
        "steps": params.steps,
        "masks_per_step": params.k,
        # One masked forward pass of a calibration batch per mask, plus the metric's passes.
        "forward_passes": params.steps * params.k,
        "init_forward_passes": 0 if metric is None else len(objective.batches),
        "tokens_seen": objective.tokens_seen(params.steps),
        "normalisation": params.normalisation,
        "resumed_from_step": search.resumed_from,
        "wall_s": round(time.perf_counter() - start, 2),
    }
    if params.blocks:
        scores = probs["blocks"][0].tolist()
        order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
        plan = block_plan(
            ctx,
            "policy-gradient",
            params,
            scores,
            order,
            "learned keep probability of the block; the least probable are removed",
        )
    else:
        removed = select_width(ctx, {p: list(probs[p]) for p in probs}, params.width(), standardise=False)
        plan = width_plan(
            ctx,
            "policy-gradient",
            asdict(params),
            removed,
            list(probs["heads"]) if "heads" in probs else None,
            "learned keep probability; the least probable units are removed (every unit's "
            "probability: plan tensors policy_gradient.<heads|channels>, [block, unit])",
        )
    plan.curve = search.curve
    plan.search_cost = cost
    plan.tensors.update({f"policy_gradient.{p}": t.float() for p, t in probs.items()})
    plan.tensors.update(
        {f"policy_gradient.initial.{p}": t.view(sizes[p]).float() for p, t in initial.items()}
    )
    if metric is not None:
        plan.tensors.update({f"policy_gradient.metric.{p}": t.float() for p, t in metric.items()})
    return plan


SPEC = register_method(
    MethodSpec(
        name="policy-gradient",
        title="Policy-gradient structural pruning (Bernoulli masks, forward passes only)",
        reference_url="https://arxiv.org/abs/2406.10576",
        params_cls=PolicyGradientParams,
        plan_fn=plan_policy_gradient,
        needs_calibration=True,
        unit_kind="width",
        citation="@article{gao2024bypass, title={Bypass Back-propagation: Optimization-based Structural Pruning "
        "for Large Language Models via Policy Gradient}, author={Gao, Yuan and Liu, Zujing and Zhang, Weizhong "
        "and Du, Bo and Xia, Gui-Song}, journal={arXiv preprint arXiv:2406.10576}, year={2024}}",
    )
)
