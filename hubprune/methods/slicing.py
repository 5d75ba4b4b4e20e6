"""SliceGPT and dynamic slicing: a narrower residual stream, per block, from its principal directions.

SliceGPT (Ashkboos et al. 2024, arXiv 2401.15024) walks the blocks in order. At every point of
the residual stream (a block's input, between its attention and MLP) it takes the second-moment
matrix of the stream on calibration tokens (float64, summed batch by batch), keeps its leading
eigenvectors, and projects the stream onto them before running on, so each basis sees the error
of the slicing before it. The result is a set of bases (:class:`hubprune.rotation.Bases`); the
export turns them into a model whose norms are folded, whose weights are rotated and sliced, and
whose residual connections carry shortcut matrices.

The search runs the dense blocks on projected activations, in the original basis: an RMSNorm
sees the same length either way, so this is exactly what the sliced model computes, and no
weight is copied or changed. One block's activations (the batches' residual streams) and one
D x D matrix are held at a time.

Dynamic slicing (Dumitru et al. 2024, arXiv 2411.03513) gives each block its own fraction: the
layer redundancy LR_i is block i's mean cosine similarity between input and output (1 - block
influence), min-max normalised to n_i in [0, 1], and s_i = SB + (SP - SB) n_i / mean(n), so the
mean is the target SP and redundant blocks are sliced more. Their code neither rounds nor clips;
here widths are multiples of `multiple_of`, at least `min_width`, and what a clipped block cannot
give is spread over the others so the mean stays at SP (to within one `multiple_of` step).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from hubprune.errors import BudgetError, RecipeError
from hubprune.methods.block_influence import block_influence_scores
from hubprune.methods.capture import block_inputs, resident
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.plan import Plan, Unit
from hubprune.rotation import Bases, check_rotatable, principal_basis
from hubprune.shape import Dims

SLICEGPT_CITATION = (
    "@inproceedings{ashkboos2024slicegpt, title={SliceGPT: Compress Large Language Models by Deleting "
    "Rows and Columns}, author={Ashkboos, Saleh and Croci, Maximilian L. and do Nascimento, Marcelo Gennari "
    "and Hoefler, Torsten and Hensman, James}, booktitle={ICLR}, year={2024}}"
)
DYNAMIC_CITATION = (
    "@inproceedings{dumitru2024change, title={Change Is the Only Constant: Dynamic LLM Slicing based on "
    "Layer Redundancy}, author={Dumitru, Razvan-Gabriel and Clotan, Paul-Ioan and Yadav, Vikas and "
    "Peteleaza, Darius and Surdeanu, Mihai}, booktitle={Findings of EMNLP}, year={2024}}"
)


@dataclass
class SliceGPTParams:
    """`multiple_of`: widths are multiples of it (8, as SliceGPT rounds); `min_width`: no block
    narrower (default: `multiple_of`); `slice_head`: slice the final norm's input too (SliceGPT
    keeps ``lm_head`` at full width by default)."""

    multiple_of: int = 8
    min_width: int | None = None
    slice_head: bool = False

    def __post_init__(self) -> None:
        for name in ("multiple_of", "min_width"):
            value = getattr(self, name)
            if value is None and name == "min_width":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RecipeError(f"{name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.slice_head, bool):
            raise RecipeError(f"slice_head must be true or false, got {self.slice_head!r}")

    @property
    def floor(self) -> int:
        return self.min_width if self.min_width is not None else self.multiple_of

    def check(self, dims: Dims) -> None:
        """Refuse widths the model cannot have."""
        if self.multiple_of > dims.hidden_size:
            raise BudgetError(
                f"multiple_of={self.multiple_of} is larger than the hidden size ({dims.hidden_size})"
            )
        if self.floor > dims.hidden_size:
            raise BudgetError(f"min_width={self.floor} is larger than the hidden size ({dims.hidden_size})")

    def text_sources(self) -> list[str]:
        """Text sources besides the calibration text (loaded early so a bad one fails fast)."""
        return []


@dataclass
class DynamicSlicingParams(SliceGPTParams):
    """Plus `base` (SB: the slice fraction of the least redundant block's share) and `lr_source`
    (text to measure layer redundancy on; default: the calibration text; the paper uses PG19)."""

    base: float = 0.1
    lr_source: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.base, bool) or not isinstance(self.base, int | float) or not 0 <= self.base < 1:
            raise RecipeError(f"base (SB) must be a slice fraction in [0, 1), got {self.base!r}")

    def text_sources(self) -> list[str]:
        return [self.lr_source] if self.lr_source else []


def slice_fraction(ctx: MethodContext) -> float:
    """The budget as the mean fraction of the hidden width to slice (0 without a budget: the
    rotation alone, which changes no output)."""
    if ctx.budget is None:
        return 0.0
    amount = ctx.budget.amount
    if ctx.budget.by != "units" or not isinstance(amount, float) or not 0 < amount < 1:
        raise BudgetError(
            f"slicing takes --amount as the fraction of the hidden width to slice, between 0 and 1 "
            f"(e.g. 0.25), got {amount}"
        )
    return float(amount)


def dynamic_fractions(redundancy: list[float], target: float, base: float) -> tuple[list[float], list[float]]:
    """The paper's per-block slice fractions s_i = SB + (SP - SB) n_i / mean(n), with n_i the
    min-max normalised redundancy (higher: more redundant); also returns n."""
    if base > target:
        raise BudgetError(
            f"base={base} (SB) is more than the mean slice {target} (SP); SB must be at most SP"
        )
    low, high = min(redundancy), max(redundancy)
    if high - low <= 0:
        return [target] * len(redundancy), [1.0] * len(redundancy)
    norm = [(r - low) / (high - low) for r in redundancy]
    mean = sum(norm) / len(norm)
    return [base + (target - base) * n / mean for n in norm], norm


def widths_for(fractions: list[float], dense: int, multiple_of: int, floor: int, target: float) -> list[int]:
    """Whole widths (multiples of `multiple_of`, in [`floor`, `dense`]) close to
    ``dense * (1 - s_i)`` whose mean keeps the mean slice at `target`: a block clipped at a
    bound passes what it cannot take to the others in proportion, then widths are rounded by
    largest remainder."""
    step = multiple_of
    low = math.ceil(floor / step) * step
    high = dense - dense % step
    count = len(fractions)
    total = round(count * dense * (1 - target) / step)  # in steps
    if total * step < count * low:
        raise BudgetError(
            f"slicing {target:.0%} of the hidden width leaves {dense * (1 - target):.0f} of {dense} dimensions "
            f"per block, below min_width={low}"
        )
    wanted = [dense * (1 - s) for s in fractions]
    free = set(range(count))
    widths = [0.0] * count
    while free:  # water-filling: fix the blocks that hit a bound, share the rest by the wanted widths
        left = total * step - sum(widths[i] for i in range(count) if i not in free)
        scale = left / sum(wanted[i] for i in free) if sum(wanted[i] for i in free) > 0 else 0
        clipped = False
        for i in sorted(free):
            w = wanted[i] * scale if scale else left / len(free)
            if w < low or w > high:
                widths[i] = float(low if w < low else high)
                free.discard(i)
                clipped = True
        if not clipped:
            for i in free:
                widths[i] = wanted[i] * scale if scale else left / len(free)
            break
    steps = [int(w // step) for w in widths]
    for i in sorted(range(count), key=lambda i: (-(widths[i] / step - steps[i]), i))[: total - sum(steps)]:
        steps[i] += 1
    return [min(max(s * step, low), high) for s in steps]


def _second_moment(states: list[torch.Tensor]) -> torch.Tensor:
    """Σ xᵀx over every token of every batch, in float64 (windows are full: no padding)."""
    dim = states[0].shape[-1]
    total = torch.zeros(dim, dim, dtype=torch.float64, device=states[0].device)
    for x in states:
        flat = x.reshape(-1, dim).double()
        total += flat.T @ flat
    return total


def _project(states: list[torch.Tensor], basis: torch.Tensor) -> None:
    """Replace every state by its projection onto the span of `basis`'s columns, in place."""
    for i, x in enumerate(states):
        q = basis.to(device=x.device, dtype=x.dtype)
        states[i] = (x @ q) @ q.T


def _basis(states: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The leading `width` principal directions of `states` (D x width, float64), and the share of
    the second moment they keep."""
    values, vectors = principal_basis(_second_moment(states))
    kept = float(values[:width].clamp(min=0).sum() / values.clamp(min=0).sum())
    return vectors[:, :width].cpu(), torch.tensor(kept)


def _aligned(basis: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """`basis` turned within its own span to be as close as possible to `previous` (orthogonal
    Procrustes). The sliced model depends only on the spans, so this changes no output; it makes
    each shortcut matrix (``basis.T @ previous``) nearly the identity instead of a dense mixing,
    so a residual stream with very large coordinates (SmolLM2's reach 22,000) is not smeared over
    every coordinate and rounded there. At full width it makes every basis equal."""
    overlap = basis.T.double() @ previous.double()  # d_new x d_prev
    square = torch.zeros(basis.shape[1], basis.shape[1], dtype=torch.float64)
    cols = min(basis.shape[1], previous.shape[1])
    square[:, :cols] = overlap[:, :cols]
    u, _, vh = torch.linalg.svd(square)
    return basis.double() @ (u @ vh)


@torch.no_grad()
def rotate_and_slice(
    ctx: MethodContext, widths: list[int], final_width: int
) -> tuple[Bases, list[dict[str, float]]]:
    """SliceGPT's sequential pass: per block, the basis of its input, run its attention on the
    projected stream, the basis between attention and MLP, run its MLP; returns the bases and,
    per block, the share of the stream's second moment each kept basis holds."""
    adapter, model = ctx.adapter, ctx.model
    blocks = adapter.blocks(model)
    with resident(ctx, model.get_submodule(adapter.embed)):
        recorded = block_inputs(model, adapter, ctx.calibration, ctx.batch_size)
    states, block_kwargs = recorded.states, recorded.kwargs
    inputs, mids, kept = [], [], []
    q_in, share_in = _basis(states, widths[0])
    for b, block in enumerate(tqdm(blocks, desc="Rotating and slicing", unit="block", leave=False)):
        with resident(ctx, block):  # read from the checkpoint when the model is streamed
            _project(states, q_in)
            attn_norm, mlp_norm = (
                getattr(block, names[0]) for names in (adapter.attention_norms, adapter.mlp_norms)
            )
            attention, mlp = getattr(block, adapter.attention), getattr(block, adapter.mlp)
            for k, x in enumerate(states):
                kw = block_kwargs[k][b]
                out = attention(
                    hidden_states=attn_norm(x),
                    attention_mask=kw.get("attention_mask"),
                    position_embeddings=kw.get("position_embeddings"),
                    position_ids=kw.get("position_ids"),
                )
                states[k] = x + (out[0] if isinstance(out, tuple) else out)
            q_mid, share_mid = _basis(states, widths[b])
            q_mid = _aligned(q_mid, q_in)
            _project(states, q_mid)
            for k, x in enumerate(states):
                states[k] = x + mlp(mlp_norm(x))
            inputs.append(q_in.float())  # what the plan stores; the export restores orthonormality
            mids.append(q_mid.float())
            kept.append({"input": float(share_in), "mid": float(share_mid)})
            q_in, share_in = _basis(states, widths[b + 1] if b + 1 < len(blocks) else final_width)
            q_in = _aligned(q_in, q_mid)
    inputs.append(q_in.float())
    kept.append({"input": float(share_in)})
    return Bases(inputs, mids), kept


def layer_redundancy(
    ctx: MethodContext, params: DynamicSlicingParams
) -> tuple[list[float], dict[str, Any] | None]:
    """LR_i = mean cos(block input, block output) over the LR text (1 - block influence), and
    that text's provenance when it is not the calibration text."""
    lr_ctx, provenance = ctx, None
    if params.lr_source:
        if ctx.calibrate_on is None:
            raise RecipeError("lr_source needs a pipeline that can load text (run through hubprune prune)")
        batch = ctx.calibrate_on(params.lr_source)
        lr_ctx = replace(ctx, calibration=batch, checkpoint=None)
        provenance = asdict(batch.info)
    return [1.0 - bi for bi in block_influence_scores(lr_ctx)], provenance


def _plan(ctx: MethodContext, params: SliceGPTParams, method: str, dynamic: bool) -> Plan:
    check_rotatable(ctx.adapter)
    start = time.perf_counter()
    dims = Dims.from_config(ctx.model.config)
    params.check(dims)
    target = slice_fraction(ctx)
    dense = dims.hidden_size
    redundancy, norm, lr_provenance = None, None, None
    if target == 0:
        fractions, widths = [0.0] * dims.num_blocks, [dense] * dims.num_blocks
    else:
        if dynamic:
            assert isinstance(params, DynamicSlicingParams)
            if params.base > target:  # before any forward pass
                dynamic_fractions([0.0], target, params.base)
            redundancy, lr_provenance = layer_redundancy(ctx, params)
            fractions, norm = dynamic_fractions(redundancy, target, params.base)
        else:
            fractions = [target] * dims.num_blocks
        widths = widths_for(fractions, dense, params.multiple_of, params.floor, target)
    final = (
        widths_for([target], dense, params.multiple_of, params.floor, target)[0]
        if params.slice_head and target
        else dense
    )
    bases, kept = rotate_and_slice(ctx, widths, final)
    scores = []
    for b in range(dims.num_blocks):
        entry: dict[str, Any] = {
            "unit": Unit("width", b, width=widths[b]),
            "score": fractions[b],
            "slice": 1 - widths[b] / dense,
            "kept_second_moment": kept[b],
        }
        if redundancy is not None and norm is not None:
            entry.update(layer_redundancy=redundancy[b], redundancy_normalised=norm[b])
        scores.append(entry)
    scores.append(
        {
            "unit": Unit("width", dims.num_blocks, width=final),
            "score": 1 - final / dense,
            "slice": 1 - final / dense,
            "kept_second_moment": kept[-1],
        }
    )
    meaning = (
        "slice fraction asked per block, s_i = SB + (SP - SB) n_i / mean(n) from layer redundancy "
        "(mean cos of block input and output, min-max normalised); the width is what rounding and clipping gave"
        if dynamic
        else "slice fraction asked per block (the same everywhere); the width is the kept residual width"
    )
    record = asdict(params)
    if lr_provenance is not None:
        record["lr_calibration"] = lr_provenance
    plan = Plan(
        method=method,
        unit_kind="width",
        removed=[s["unit"] for s in scores],
        scores=scores,
        score_meaning=meaning,
        params=record,
        budget={
            "requested": ctx.budget.to_dict() if ctx.budget else None,
            "reached": {
                "mean_slice": 1 - sum(widths) / (len(widths) * dense),
                "widths": widths,
                "final_width": final,
            },
        },
        calibration=ctx.calibration.info if ctx.calibration is not None else None,
        seed=ctx.seed,
        search_cost={
            # one pass to record block 0's inputs, one block by block; layer redundancy adds one
            "calibration_passes": 2,
            "redundancy_passes": 1 if redundancy is not None else 0,
            "tokens_seen": int(ctx.calibration.input_ids.numel()) if ctx.calibration is not None else 0,
            "wall_s": round(time.perf_counter() - start, 2),
        },
    )
    plan.tensors = bases.to_tensors()
    return plan


def plan_slicegpt(ctx: MethodContext, params: SliceGPTParams) -> Plan:
    """Constant slicing: every block keeps the same width."""
    return _plan(ctx, params, "slicegpt", dynamic=False)


def plan_dynamic_slicing(ctx: MethodContext, params: DynamicSlicingParams) -> Plan:
    """Per-block widths from layer redundancy, the same mean slice as SliceGPT's."""
    return _plan(ctx, params, "dynamic-slicing", dynamic=True)


SLICEGPT = register_method(
    MethodSpec(
        name="slicegpt",
        title="SliceGPT (rotate and slice the residual stream)",
        reference_url="https://arxiv.org/abs/2401.15024",
        params_cls=SliceGPTParams,
        plan_fn=plan_slicegpt,
        needs_calibration=True,
        unit_kind="width",
        citation=SLICEGPT_CITATION,
        budget_kinds=("units",),
        slices_residual=True,
        streams=True,
    )
)
DYNAMIC_SLICING = register_method(
    MethodSpec(
        name="dynamic-slicing",
        title="Dynamic slicing (SliceGPT with per-block widths from layer redundancy)",
        reference_url="https://arxiv.org/abs/2411.03513",
        params_cls=DynamicSlicingParams,
        plan_fn=plan_dynamic_slicing,
        needs_calibration=True,
        unit_kind="width",
        citation=DYNAMIC_CITATION,
        budget_kinds=("units",),
        slices_residual=True,
        streams=True,
    )
)
