"""Parameter counting and KV-cache arithmetic shared by the methods and :mod:`hubprune.cost`.

Tied embeddings are counted once (`model.parameters()` yields a shared tensor once), so totals
match what is stored on disk. A model's full statistics (the manifest's `model_before` /
`model_after`, the evaluation's cost) come from :func:`hubprune.cost.model_cost` alone.
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
    from hubprune.shape import config_value as get

    return get(config, "head_dim") or get(config, "hidden_size") // get(config, "num_attention_heads")


def kv_cache_bytes_per_token(config: Any, attention_layers: int, bytes_per_value: int) -> int:
    """Keys and values stored per generated token: 2 x KV heads x head_dim x layers with attention.

    Sliding-window layers stop growing at the window size; this counts the full-context worst case.
    """
    from hubprune.shape import config_value as get

    kv_heads = get(config, "num_key_value_heads") or get(config, "num_attention_heads")
    return 2 * kv_heads * head_dim(config) * attention_layers * bytes_per_value
