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

from pathlib import Path
from typing import Any

from torch import nn

from hubprune.size import head_dim, kv_cache_bytes_per_token, unique_params

#: Unit kinds whose removal a plain export writes as zero-filled weights (no savings).
ZERO_FILLED_KINDS = ("attn", "mlp", "heads", "channels")
#: Unit kinds whose nominal savings :func:`model_cost` can compute from the model.
NOMINAL_KINDS = ("attn", "mlp")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt")
DEFAULT_CONTEXT = 2048


def bytes_on_disk(folder: str | Path | None) -> int | None:
    """Total size of the weight files in `folder` (safetensors / pickled shards); None without one."""
    if folder is None or not Path(folder).is_dir():
        return None
    files = {p for pattern in WEIGHT_PATTERNS for p in Path(folder).glob(pattern) if p.is_file()}
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


def _with_attention(blocks: list[nn.Module] | None, adapter: Any, num_blocks: int) -> list[bool]:
    """Per block, whether it still attends: False where the attention sublayer was removed (a
    compact prune in memory) or is absent (a loaded compact model), True when that cannot be told."""
    from hubprune.sublayers import is_removed

    if blocks is None:
        return [True] * num_blocks
    return [not is_removed(block, adapter, "attn") for block in blocks]


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
    attends = _with_attention(blocks, adapter, num_blocks)
    heads = int(config.num_attention_heads)
    per_position = 4 * heads * head_dim(config)
    attention_flops = sum(
        per_position * min(context, w or context) for w, on in zip(windows, attends, strict=True) if on
    )
    weights_flops = 2 * linear_params(model)
    attention_layers = sum(attends)
    kv = kv_cache_bytes_per_token(config, attention_layers, dtype.itemsize)
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
        out["nominal"] = _nominal(out, zeroed, blocks, adapter, config, windows, context, dtype.itemsize)
    return out


def _nominal(
    actual: dict[str, Any],
    zeroed: list[Any],
    blocks: list[nn.Module] | None,
    adapter: Any,
    config: Any,
    windows: list[int | None],
    context: int,
    itemsize: int,
) -> dict[str, Any] | None:
    """The cost once zero-filled attention/MLP sublayers are really gone; None when the plan holds
    units whose savings cannot be read off the model (heads, channels) or blocks are unknown."""
    if blocks is None or any(u.kind not in NOMINAL_KINDS for u in zeroed):
        return None
    params = flops = 0
    attn_removed = 0
    for unit in zeroed:
        block = blocks[unit.block]
        sub = adapter.sublayer_params(block)[unit.kind]
        module = adapter.attention_of(block) if unit.kind == "attn" else adapter.mlp_of(block)
        params += sub
        flops += 2 * linear_params(module)
        if unit.kind == "attn":
            attn_removed += 1
            flops += (
                4
                * int(config.num_attention_heads)
                * head_dim(config)
                * min(context, windows[unit.block] or context)
            )
    attention_layers = actual["attention_layers"] - attn_removed
    return {
        "params_total": actual["params_total"] - params,
        "params_non_embedding": actual["params_non_embedding"] - params,
        "weight_bytes": actual["weight_bytes"] - params * itemsize,
        "flops_per_token": actual["flops_per_token"] - flops,
        "attention_layers": attention_layers,
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config, attention_layers, itemsize),
    }


def cost_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Relative change (after / before - 1) of each actual cost field; None where either is missing."""
    out: dict[str, Any] = {}
    for key in ("params_total", "params_non_embedding", "weight_bytes", "bytes_on_disk", "flops_per_token"):
        a, b = before.get(key), after.get(key)
        out[key] = None if not a or b is None else b / a - 1
    a, b = before.get("kv_cache_bytes_per_token"), after.get("kv_cache_bytes_per_token")
    out["kv_cache_bytes_per_token"] = None if not a or b is None else b / a - 1
    return out
