"""Size and cost of a model as it will be served: parameters, bytes, FLOPs and KV cache per token.

Everything is computed from the model object (and its folder for bytes on disk), so the numbers
describe what a user downloads and runs, not what the plan hoped for. The plan matters in one
case: a plain export of removed attention or MLP sublayers (or heads / channels) *zero-fills*
their output projections. The outputs equal those of the pruned model, but every weight is still
stored, multiplied and (for attention) cached, so such an export saves nothing; the report says
so (``zero_filled``) and gives, separately, the ``nominal`` cost a compact export would reach.

FLOPs per token follow Kaplan et al. 2020 (*Scaling Laws for Neural Language Models*,
arXiv 2001.08361, Table 1) with the attention term of Hoffmann et al. 2022 (Chinchilla,
arXiv 2203.15556, App. F): a multiply-add counts 2, so each linear layer costs
``2 * in * out`` per token (the output projection too, even when tied to the embeddings, whereas
the embedding lookup is free), and each attention layer adds ``4 * heads * head_dim * n``
for the scores and the weighted sum over the ``n`` positions it attends to (``n`` = the stated
context, or the sliding window when that is shorter). Norms, activations and softmax are ignored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from hubprune.size import head_dim, unique_params

#: Unit kinds whose removal a plain export writes as zero-filled weights (no savings).
ZERO_FILLED_KINDS = ("attn", "mlp", "heads", "channels")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt")
DEFAULT_CONTEXT = 2048


def bytes_on_disk(folder: str | Path | None) -> int | None:
    """Total size of the weight files in `folder` (safetensors / pickled shards); None without one."""
    if folder is None or not Path(folder).is_dir():
        return None
    from hubprune.plan import PLAN_TENSORS_NAME

    files = {
        p
        for pattern in WEIGHT_PATTERNS
        for p in Path(folder).glob(pattern)
        if p.is_file() and p.name != PLAN_TENSORS_NAME
    }
    return sum(p.stat().st_size for p in files) if files else None


def linear_params(module: nn.Module) -> int:
    """Weights of every ``nn.Linear`` under `module` (a tied output projection counts: it multiplies)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def _layer_windows(config: Any, num_blocks: int) -> list[int | None]:
    """Per block, the sliding window (None = full attention), from `layer_types` when present."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or not layer_types or len(layer_types) != num_blocks:
        return [None] * num_blocks
    return [window if t == "sliding_attention" else None for t in layer_types]


def _blocks(model: nn.Module, adapter: Any) -> list[nn.Module] | None:
    if adapter is None:
        return None
    try:
        return list(adapter.blocks(model))
    except (AttributeError, AssertionError):
        return None


def _query_and_kv_heads(
    blocks: list[nn.Module] | None, adapter: Any, config: Any, num_blocks: int
) -> list[tuple[int, int]]:
    """Per block, (query heads, KV heads) as the weights hold them: (0, 0) where the attention
    sublayer was removed, the config's numbers when the layout cannot be read. Width-pruned and
    heterogeneous models differ per block, so the config alone cannot say."""
    from hubprune.arch.adapter import KV, QUERY
    from hubprune.shape import config_value
    from hubprune.sublayers import SkippedAttention

    dims_heads = int(config_value(config, "num_attention_heads"))
    kv = int(config_value(config, "num_key_value_heads") or dims_heads)
    default = (dims_heads, kv)
    if blocks is None:
        return [default] * num_blocks
    group, hd = dims_heads // kv, head_dim(config)
    out = []
    for block in blocks:
        attention = getattr(block, adapter.attention, None)
        if attention is None or isinstance(attention, SkippedAttention):
            out.append((0, 0))
            continue
        writer = next((p for p in adapter.projections if KV in p.writes), None)
        module = getattr(attention, writer.name, None) if writer is not None else None
        if module is None:
            out.append(default)
            continue
        per_group = sum(group * hd if s == QUERY else hd for s in writer.writes)
        groups = module.weight.shape[0] // per_group
        out.append((groups * group, groups))
    return out


def attention_flops_per_token(
    config: Any, query_heads: list[int], windows: list[int | None], context: int
) -> int:
    """Scores and weighted sum: 4 x heads x head_dim x attended positions, per block."""
    hd = head_dim(config)
    return sum(4 * q * hd * min(context, w or context) for q, w in zip(query_heads, windows, strict=True))


def plan_cost(
    model: nn.Module, adapter: Any, shape: Any, *, context: int = DEFAULT_CONTEXT
) -> dict[str, Any]:
    """Parameters, FLOPs per token and KV-cache bytes per token of `model` (dense, any device,
    meta included) once `shape` (:class:`hubprune.shape.Shape`) is applied and every removed
    unit is really gone: the cost a compact export has, computed without building it.

    Tensor sizes come from :func:`hubprune.transforms.pruned_shapes`, the rule the compact
    export slices by, so the two agree by construction (and a test checks the written files).
    """
    from hubprune.transforms import pruned_shapes

    config = model.config
    params = dict({id(p): (n, p) for n, p in model.named_parameters()}.values())
    named_shapes = {n: tuple(p.shape) for n, p in params.items()}
    embedding_names = {n for n, p in params.items() if p is model.get_submodule(adapter.embed).weight}
    head = model.get_submodule(adapter.lm_head)
    embedding_names |= {n for n, p in params.items() if p is head.weight}
    if shape.rotated:  # SliceGPT: shortcut matrices, and an lm_head of its own
        from hubprune.rotation import sliced_shapes

        sizes = sliced_shapes(named_shapes, adapter, shape)
        numel = {n: math.prod(dims) for n, dims in sizes.items()}
        embedding_names.add(f"{adapter.lm_head}.weight")
        embed_weight = f"{adapter.embed}.weight"
        linear = sum(n for name, n in numel.items() if len(sizes[name]) == 2 and name != embed_weight)
    else:
        sizes = pruned_shapes(named_shapes, adapter, shape)
        numel = {n: math.prod(dims) for n, dims in sizes.items()}
        linear = 0
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                weight = f"{name}.weight"
                if weight in sizes:
                    linear += numel[weight]
                elif module is head:  # tied: stored once as the embedding, still multiplied
                    linear += module.weight.numel()
    total = sum(numel.values())
    kept = shape.blocks
    windows = _layer_windows(config, len(kept))
    query = [b.num_attention_heads if b is not None else 0 for b in kept]
    kv_heads = sum(b.num_key_value_heads for b in kept if b is not None)
    itemsize = next(iter(params.values())).element_size()
    attention = attention_flops_per_token(config, query, windows, context)
    return {
        "num_blocks": sum(1 for b in kept if b is not None),
        "params_total": total,
        "params_non_embedding": total - sum(numel.get(n, 0) for n in embedding_names),
        "weight_bytes": total * itemsize,
        "flops_per_token": 2 * linear + attention,
        "attention_layers": sum(1 for q in query if q),
        "kv_cache_bytes_per_token": 2 * head_dim(config) * kv_heads * itemsize,
    }


#: The plan_cost field each budget kind is measured in.
BUDGET_FIELDS = {"params": "params_total", "flops": "flops_per_token", "kv": "kv_cache_bytes_per_token"}


def removal_savings(
    model: nn.Module, adapter: Any, shapes: list[Any], by: str, *, context: int = DEFAULT_CONTEXT
) -> tuple[list[float], float]:
    """What each shape in `shapes` saves against the dense model, in budget kind `by` ("units"
    counts 1 each), and the dense total: the costs budgets select units by."""
    from hubprune.shape import Dims, Shape

    if by == "units":
        return [1.0] * len(shapes), float(len(shapes))
    key = BUDGET_FIELDS[by]
    dense = plan_cost(model, adapter, Shape.dense(Dims.from_config(model.config)), context=context)[key]
    return [dense - plan_cost(model, adapter, s, context=context)[key] for s in shapes], dense


def block_savings(model: nn.Module, adapter: Any, by: str) -> tuple[list[float], float]:
    """What removing each whole block saves in budget kind `by`, and the dense total."""
    from hubprune.plan import Unit
    from hubprune.shape import Dims, Shape

    dims = Dims.from_config(model.config)
    shapes = [Shape.from_units([Unit("block", i)], dims) for i in range(dims.num_blocks)]
    return removal_savings(model, adapter, shapes, by)


def budget_reached(
    model: nn.Module, adapter: Any, shape: Any, *, context: int = DEFAULT_CONTEXT
) -> dict[str, Any]:
    """Before, after and the fraction removed of parameters, FLOPs per token and KV-cache bytes
    per token under `shape` (compact-export numbers): the `reached` half of every plan's budget."""
    from hubprune.shape import Shape

    before = plan_cost(model, adapter, Shape.dense(shape.dims), context=context)
    after = plan_cost(model, adapter, shape, context=context)
    out: dict[str, Any] = {"context": context}
    for key in ("params_total", "flops_per_token", "kv_cache_bytes_per_token"):
        out[key] = {
            "before": before[key],
            "after": after[key],
            "removed_fraction": 1 - after[key] / before[key] if before[key] else 0.0,
        }
    return out


def zero_filled_units(plan: Any, export_format: str | None) -> list[Any]:
    """Removed units that a plain export zero-fills instead of deleting."""
    if plan is None or (export_format or "plain") != "plain":
        return []
    return [u for u in plan.removed if u.kind in ZERO_FILLED_KINDS]


def model_cost(
    model: nn.Module,
    *,
    adapter: Any = None,
    folder: str | Path | None = None,
    plan: Any = None,
    export_format: str | None = None,
    context: int = DEFAULT_CONTEXT,
) -> dict[str, Any]:
    """Parameters (total / non-embedding), bytes (weights in memory, files on disk), FLOPs per
    token at `context` and KV-cache bytes per token of `model` as it is.

    With `plan` and a plain `export_format`, removed attention/MLP sublayers are zero-filled: the
    actual numbers equal the unpruned ones, ``zero_filled`` lists the units and ``nominal`` gives
    what a compact export would cost. `adapter` (from :func:`hubprune.arch.adapter_for`) locates
    blocks and embeddings; without one the counts fall back to the config.
    """
    config = model.config
    params = list({id(p): p for p in model.parameters()}.values())
    total = sum(p.numel() for p in params)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    embedding = 0
    if adapter is not None:
        embedding = unique_params([model.get_submodule(adapter.embed), model.get_submodule(adapter.lm_head)])
    else:
        embedding = unique_params(
            [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m]
        )
    dtype = params[0].dtype
    blocks = _blocks(model, adapter)
    num_blocks = len(blocks) if blocks is not None else int(config.num_hidden_layers)
    windows = _layer_windows(config, num_blocks)
    heads = _query_and_kv_heads(blocks, adapter, config, num_blocks)
    attention_flops = attention_flops_per_token(config, [q for q, _ in heads], windows, context)
    weights_flops = 2 * linear_params(model)
    attention_layers = sum(1 for q, _ in heads if q)
    kv = 2 * head_dim(config) * sum(k for _, k in heads) * dtype.itemsize
    out: dict[str, Any] = {
        "num_blocks": num_blocks,
        "params_total": total,
        "params_non_embedding": total - embedding,
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "dtype": str(dtype).removeprefix("torch."),
        "weight_bytes": weight_bytes,
        "bytes_on_disk": bytes_on_disk(folder),
        "flops_per_token": weights_flops + attention_flops,
        "flops_per_token_detail": {
            "context": context,
            "linear": weights_flops,
            "attention": attention_flops,
            "formula": "2 x linear weights + 4 x heads x head_dim x min(context, window) per attention layer",
        },
        "attention_layers": attention_layers,
        "kv_cache_bytes_per_token": kv,
        "zero_filled": None,
        "nominal": None,
    }
    zeroed = zero_filled_units(plan, export_format)
    if zeroed:
        out["zero_filled"] = {
            "units": [u.name for u in zeroed],
            "savings_realised": False,
            "note": f"the plain export keeps {len(zeroed)} removed sublayer(s) as zero-filled weights: outputs "
            "match the pruned model, but size, FLOPs, KV cache and speed are those of the unpruned layers; "
            "a compact export would realise the nominal numbers",
        }
        out["nominal"] = _nominal(model, adapter, plan, context)
    return out


def _nominal(model: nn.Module, adapter: Any, plan: Any, context: int) -> dict[str, Any] | None:
    """What the zero-filled units would cost once really gone (the compact export's numbers);
    None without an adapter or a plan that records the model's widths."""
    if adapter is None or plan.dims is None:
        return None
    shape = plan.shape().compacted()  # the zero-filled model has its removed blocks gone already
    return plan_cost(model, adapter, shape, context=context)


def cost_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Relative change (after / before - 1) of each actual cost field; None where either is missing."""
    out: dict[str, Any] = {}
    for key in ("params_total", "params_non_embedding", "weight_bytes", "bytes_on_disk", "flops_per_token"):
        a, b = before.get(key), after.get(key)
        out[key] = None if not a or b is None else b / a - 1
    a, b = before.get("kv_cache_bytes_per_token"), after.get("kv_cache_bytes_per_token")
    out["kv_cache_bytes_per_token"] = None if not a or b is None else b / a - 1
    return out
