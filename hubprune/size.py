"""Parameter counts and KV-cache size of a model, computed from the model itself.

Tied embeddings are counted once (`model.parameters()` yields a shared tensor once), so the
total matches what is stored on disk. "Non-embedding" excludes the input embedding and an untied
`lm_head`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hubprune.arch import ArchAdapter


def unique_params(modules: list[nn.Module]) -> int:
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def block_params(model: nn.Module, adapter: ArchAdapter) -> list[int]:
    """Parameters of each decoder block, in order."""
    return [unique_params([b]) for b in adapter.blocks(model)]


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_cache_bytes_per_token(config: Any, attention_layers: int, bytes_per_value: int) -> int:
    """Keys and values stored per generated token: 2 x KV heads x head_dim x layers with attention.

    Sliding-window layers stop growing at the window size; this counts the full-context worst case.
    """
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * kv_heads * head_dim(config) * attention_layers * bytes_per_value


def model_stats(
    model: nn.Module, adapter: ArchAdapter, *, attention_layers: int | None = None
) -> dict[str, Any]:
    """Block count, parameters (total / non-embedding) and KV-cache bytes per token."""
    total = unique_params([model])
    embed = adapter_embedding_params(model, adapter)
    dtype = next(model.parameters()).dtype
    blocks = adapter.num_blocks(model)
    return {
        "num_blocks": blocks,
        "params_total": total,
        "params_non_embedding": total - embed,
        "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "dtype": str(dtype).removeprefix("torch."),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(
            model.config, blocks if attention_layers is None else attention_layers, dtype.itemsize
        ),
    }


def adapter_embedding_params(model: nn.Module, adapter: ArchAdapter) -> int:
    modules = [model.get_submodule(adapter.embed), model.get_submodule(adapter.lm_head)]
    return unique_params(modules)
