"""Applying a plan to a model, in place.

Removing blocks must leave a model that is indistinguishable from one built from the pruned
config: the block list shortened, `num_hidden_layers` and every per-layer config list sliced
(transformers 5 indexes `config.layer_types[i]` in the forward pass and rejects a config whose
list length differs from `num_hidden_layers`), and each attention module's `layer_idx`
renumbered, because the KV cache addresses its slots by that index: a stale index makes
`generate()` read another layer's keys, or run past the end of the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from hubprune.arch import ArchAdapter
from hubprune.errors import BudgetError, RecipeError
from hubprune.plan import Plan


def _check_indices(indices: Iterable[int], num_blocks: int) -> list[int]:
    chosen = sorted(set(int(i) for i in indices))
    bad = [i for i in chosen if not 0 <= i < num_blocks]
    if bad:
        raise BudgetError(f"block index {bad[0]} does not exist (the model has blocks 0..{num_blocks - 1})")
    if len(chosen) >= num_blocks:
        raise BudgetError(f"cannot remove all {num_blocks} blocks; at least one must remain")
    return chosen


def _sliced_config_values(
    config: Any, adapter: ArchAdapter, keep: list[int], num_blocks: int
) -> dict[str, Any]:
    """New values of the config fields that depend on which blocks exist."""
    values: dict[str, Any] = {"num_hidden_layers": len(keep)}
    for name in adapter.per_layer_config:
        current = getattr(config, name, None)
        if current is None:
            continue
        if len(current) != num_blocks:
            raise ValueError(f"config.{name} has {len(current)} entries for {num_blocks} blocks")
        values[name] = [current[i] for i in keep]
    for name in adapter.window_prefix_config:
        current = getattr(config, name, None)
        if current is not None:
            values[name] = sum(1 for i in keep if i < current)
    return values


def remove_blocks(model: nn.Module, adapter: ArchAdapter, indices: Iterable[int]) -> list[int]:
    """Delete decoder blocks `indices` from `model` in place; returns the kept original indices."""
    blocks = adapter.blocks(model)
    num_blocks = len(blocks)
    removed = _check_indices(indices, num_blocks)
    keep = [i for i in range(num_blocks) if i not in removed]
    for name, value in _sliced_config_values(model.config, adapter, keep, num_blocks).items():
        setattr(model.config, name, value)
    kept_blocks = [blocks[i] for i in keep]
    for new_index, block in enumerate(kept_blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    parent_name, _, attr = adapter.layers.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, nn.ModuleList(kept_blocks))
    return keep


@contextmanager
def blocks_skipped(model: nn.Module, adapter: ArchAdapter, indices: Iterable[int]) -> Iterator[None]:
    """Run the model as if `indices` were removed, then restore it. Only for forward passes
    without a KV cache (`use_cache=False`): `layer_idx` is left as it is."""
    blocks = adapter.blocks(model)
    num_blocks = len(blocks)
    removed = _check_indices(indices, num_blocks)
    keep = [i for i in range(num_blocks) if i not in removed]
    new_values = _sliced_config_values(model.config, adapter, keep, num_blocks)
    old_values = {name: getattr(model.config, name) for name in new_values}
    parent_name, _, attr = adapter.layers.rpartition(".")
    parent = model.get_submodule(parent_name)
    try:
        for name, value in new_values.items():
            setattr(model.config, name, value)
        setattr(parent, attr, nn.ModuleList([blocks[i] for i in keep]))
        yield
    finally:
        setattr(parent, attr, blocks)
        for name, value in old_values.items():
            setattr(model.config, name, value)


def apply_plan(model: nn.Module, adapter: ArchAdapter, plan: Plan, *, sublayers: str = "remove") -> nn.Module:
    """Apply every removal in `plan` to `model` (in place) and return it.

    Attention/MLP sublayer units (original block indices) are handled first, by
    :mod:`hubprune.sublayers`: `sublayers="remove"` swaps them for parameter-free stand-ins (the
    in-memory pruned model, and the compact export), `"zero"` zero-fills their output projections
    (the plain export: native architecture, no savings). Whole blocks are removed afterwards.
    """
    kinds = {unit.kind for unit in plan.removed}
    unsupported = kinds - {"block", "attn", "mlp"}
    if unsupported:
        raise RecipeError(
            f"this hubprune cannot remove {', '.join(sorted(unsupported))} units; it removes blocks, attn and mlp"
        )
    sub_units = [u for u in plan.removed if u.kind in ("attn", "mlp")]
    if sub_units:
        from hubprune import sublayers as sublayers_mod

        if sublayers == "remove":
            sublayers_mod.remove_sublayers(model, adapter, sub_units)
        elif sublayers == "zero":
            sublayers_mod.zero_fill(model, adapter, sub_units)
        else:
            raise RecipeError(f"sublayers must be 'remove' or 'zero', got '{sublayers}'")
    if plan.removed_blocks():
        remove_blocks(model, adapter, plan.removed_blocks())
    return model
