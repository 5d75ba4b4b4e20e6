"""Removing attention and MLP sublayers of decoder blocks, for every supported family.

FinerCut (arXiv 2405.18218) removes a sublayer by making its residual contribution zero:
``h <- h + 0``. That also makes its input norm (and Gemma's post-norm) dead, so removal here
swaps, inside the block, the attention (or MLP) module for a parameter-free stand-in returning
zeros, and its norms for ``nn.Identity``. The block's own ``forward`` is untouched: it still
computes ``residual + 0``, which is exactly ``residual``, so outputs equal those of a model whose
output projections are zero-filled (the plain export, :func:`hubprune.transforms.zero_fill`).

The KV cache. transformers 5 caches hold one slot per block, created from the config (its
``layer_types``) before the first forward. A removed attention never writes its slot, and an
empty slot at index 0 would make ``cache.get_seq_length()`` report 0 after the prompt, breaking
position ids in ``generate()``. The stand-in therefore replaces its own slot with a
skipped slot (a transformers ``DummyLayer``, :func:`skipped_cache_layer_cls`) on first use: the cache's helpers
skip dummy layers when they look for "the first attention layer", and the slot stores nothing,
which is the KV-cache saving the compact export promises.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hubprune.arch import ArchAdapter
from hubprune.arch.adapter import get_submodule
from hubprune.errors import BudgetError, RecipeError
from hubprune.plan import Unit

SUBLAYER_KINDS = ("attn", "mlp")


@functools.cache
def skipped_cache_layer_cls() -> type:
    """:class:`SkippedCacheLayer`, built on first use so importing this module stays cheap."""
    from transformers.cache_utils import CacheLayerMixin, DummyLayer

    class SkippedCacheLayer(DummyLayer):
        """A cache slot for a block whose attention was removed: stores nothing.

        Mask helpers may still ask it for sizes (transformers falls back to slot 0 when no layer
        of a kind is found); it answers with those of the first real attention slot, so the
        answer is valid, and unused since no block of that kind reads the mask.
        """

        def __init__(self, cache: Any) -> None:
            super().__init__()
            self._cache = cache
            self.is_sliding = False

        def _delegate(self) -> Any:
            return next((la for la in self._cache.layers if isinstance(la, CacheLayerMixin)), None)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            layer = self._delegate()
            return layer.get_mask_sizes(query_length) if layer is not None else (query_length, 0)

        def get_seq_length(self) -> int:
            layer = self._delegate()
            return layer.get_seq_length() if layer is not None else 0

    return SkippedCacheLayer


def release_cache_slot(cache: Any, layer_idx: int) -> None:
    """Make slot `layer_idx` of a transformers cache a skipped (dummy) slot; idempotent."""
    cache = getattr(cache, "self_attention_cache", cache)
    layers = getattr(cache, "layers", None)
    if layers is None:
        return
    factory = getattr(cache, "layer_class_to_replicate", None)
    while len(layers) <= layer_idx and factory is not None:
        layers.append(factory())
    skipped = skipped_cache_layer_cls()
    if layer_idx < len(layers) and not isinstance(layers[layer_idx], skipped):
        layers[layer_idx] = skipped(cache)


class SkippedAttention(nn.Module):
    """Stands in for a removed attention sublayer: contributes zero and caches nothing.

    Keeps `layer_idx` so block surgery renumbers it like a real attention module.
    """

    def __init__(self, layer_idx: int | None) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # renamed during transformers 5.x
        if cache is not None and self.layer_idx is not None:
            release_cache_slot(cache, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class SkippedMLP(nn.Module):
    """Stands in for a removed MLP sublayer: contributes zero."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


def _parts(adapter: ArchAdapter, kind: str) -> tuple[str, tuple[str, ...]]:
    if kind == "attn":
        return adapter.attention, adapter.attention_norms
    if kind == "mlp":
        return adapter.mlp, adapter.mlp_norms
    raise RecipeError(f"not a sublayer kind: '{kind}'; expected one of: {', '.join(SUBLAYER_KINDS)}")


def is_removed(block: nn.Module, adapter: ArchAdapter, kind: str) -> bool:
    """Whether the `kind` sublayer of `block` is gone: replaced by its stand-in, or absent (a
    block of a loaded compact model)."""
    _parts(adapter, kind)  # an unknown kind is refused
    module = adapter.attention_of(block) if kind == "attn" else adapter.mlp_of(block)
    return module is None or isinstance(module, (SkippedAttention, SkippedMLP))


def removed_sublayers(model: nn.Module, adapter: ArchAdapter) -> list[Unit]:
    """The sublayers currently removed in `model`, as units in block order (current indices)."""
    out = []
    for i, block in enumerate(adapter.blocks(model)):
        out += [Unit(kind, i) for kind in SUBLAYER_KINDS if is_removed(block, adapter, kind)]
    return out


def check_units(units: Iterable[Unit], num_blocks: int) -> list[Unit]:
    """Validate sublayer units: known kind, existing block, not every sublayer; sorted, deduplicated."""
    chosen = sorted(set(units), key=lambda u: (u.block, u.kind))
    for unit in chosen:
        if unit.kind not in SUBLAYER_KINDS:
            raise RecipeError(f"{unit.name} is not a sublayer unit; expected attn or mlp units")
        if not 0 <= unit.block < num_blocks:
            raise BudgetError(f"{unit.name} does not exist (the model has blocks 0..{num_blocks - 1})")
    if len(chosen) >= 2 * num_blocks:
        raise BudgetError(f"cannot remove all {2 * num_blocks} sublayers; at least one must remain")
    return chosen


def _swap(model: nn.Module, adapter: ArchAdapter, unit: Unit) -> list[tuple[str, nn.Module]]:
    """Replace one sublayer (and its norms) by stand-ins; return (name, original) pairs."""
    block_name = f"{adapter.layers}.{unit.block}"
    block = model.get_submodule(block_name)
    name, norms = _parts(adapter, unit.kind)
    original = get_submodule(block, name)
    if isinstance(original, (SkippedAttention, SkippedMLP)):
        return []
    if unit.kind == "attn":
        stand_in: nn.Module = SkippedAttention(getattr(original, "layer_idx", unit.block))
    else:
        stand_in = SkippedMLP()
    saved = [(f"{block_name}.{name}", original)]
    _set(model, saved[0][0], stand_in)
    for norm in norms:
        full = f"{block_name}.{norm}"
        saved.append((full, model.get_submodule(full)))
        _set(model, full, nn.Identity())
    return saved


def remove_sublayers(model: nn.Module, adapter: ArchAdapter, units: Iterable[Unit]) -> list[Unit]:
    """Remove attention/MLP sublayers in place (their parameters are freed); returns the units.

    Block indices are the model's current ones. The config is not changed: the model keeps its
    native class, and a plain export of it would not load (use :func:`hubprune.transforms.zero_fill`
    for that, or the compact export).
    """
    chosen = check_units(units, adapter.num_blocks(model))
    for unit in chosen:
        _swap(model, adapter, unit)
    return chosen


@contextmanager
def sublayers_skipped(model: nn.Module, adapter: ArchAdapter, units: Iterable[Unit]) -> Iterator[None]:
    """Run `model` as if `units` were removed, then put the original modules back.

    Swapping modules costs a few attribute assignments, so a search can try thousands of
    removal sets without copying weights.
    """
    units = list(units)
    saved: list[tuple[str, nn.Module]] = []
    try:
        for unit in units:
            saved += _swap(model, adapter, unit)
        yield
    finally:
        for name, module in reversed(saved):
            _set(model, name, module)
