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
from hubprune.plan import Plan, Unit


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

    The plan's :class:`~hubprune.shape.Shape` decides everything, whatever the unit kinds.
    Partial widths (KV groups, channels) are zero-filled (:func:`hubprune.transforms.zero_fill`):
    the outputs are those of the narrower model, and the compact export slices them away.
    Removed attention/MLP sublayers: `sublayers="remove"` swaps them for parameter-free
    stand-ins (:mod:`hubprune.sublayers`: less memory, no KV cache), `"zero"` zero-fills their
    output projections (the plain export: native architecture, no savings). Whole blocks are
    removed last.
    """
    if sublayers not in ("remove", "zero"):
        raise RecipeError(f"sublayers must be 'remove' or 'zero', got '{sublayers}'")
    from hubprune import sublayers as sublayers_mod
    from hubprune import transforms
    from hubprune.shape import Dims, Shape

    shape = Shape.from_units(plan.removed, Dims.from_config(model.config))
    if sublayers == "zero":
        transforms.zero_fill(model, adapter, shape)
    else:
        widths_only = Shape(
            shape.dims,
            tuple(
                None if b is None else (b if b.attention and b.mlp else _full_sublayers(b, shape))
                for b in shape.blocks
            ),
        )
        transforms.zero_fill(model, adapter, widths_only)
        gone = [
            Unit(kind, i)
            for i, b in shape.kept()
            for kind, kept in (("attn", b.attention), ("mlp", b.mlp))
            if not kept
        ]
        if gone:
            sublayers_mod.remove_sublayers(model, adapter, gone)
    if shape.removed_blocks():
        remove_blocks(model, adapter, shape.removed_blocks())
    return model


def _full_sublayers(block: Any, shape: Any) -> Any:
    """`block` with a removed sublayer put back at full width (it is removed by swapping instead)."""
    from dataclasses import replace

    d = shape.dims
    return replace(
        block,
        kv_groups=block.kv_groups or tuple(range(d.num_key_value_heads)),
        channels=block.channels or tuple(range(d.intermediate_size)),
    )
