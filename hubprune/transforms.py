"""Width transforms over tensor spaces, and masking: one implementation for every family.

A :class:`~hubprune.shape.Shape` says which KV groups and MLP channels of each block remain.
Three operations read it, each written once against the adapter's description of which space
every projection reads and writes (:class:`hubprune.arch.adapter.Projection`):

- :func:`slice_state_dict` / :func:`pruned_shapes`: the tensors of the compact model (rows of
  every projection writing a cut space, columns of every projection reading one; Phi-3's fused
  ``qkv_proj`` is three spaces stacked). Removed sublayers lose their tensors and norms.
- :func:`zero_fill`: the plain export, in the native architecture: the input columns of the
  projections that read a removed head or channel are zeroed (``o_proj``, ``down_proj``), and a
  removed sublayer's output projection is zeroed. The removed unit then adds exactly nothing to
  the residual stream, so the outputs equal those of the compact model.
- :func:`masked` / :func:`gated`: the same zeroing at run time, without touching weights, for
  searches that try many masks (FinerCut's sublayer gates; per-unit masks, one per batch row).

Whole blocks are removed by :func:`hubprune.surgery.remove_blocks`, which also renumbers the
KV-cache slots; whole sublayers in memory by :mod:`hubprune.sublayers`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hubprune.arch import ArchAdapter
from hubprune.arch.adapter import CHANNELS, KV, QUERY, RESIDUAL, Projection
from hubprune.plan import Unit
from hubprune.shape import BlockShape, Dims, Shape

#: What :func:`_rule` returns for a tensor an export leaves out.
DROP = "drop"


def space_size(space: str, dims: Dims) -> int:
    """Width of `space` in the dense model."""
    return {
        RESIDUAL: dims.hidden_size,
        QUERY: dims.num_attention_heads * dims.head_dim,
        KV: dims.num_key_value_heads * dims.head_dim,
        CHANNELS: dims.intermediate_size,
    }[space]


def space_keep(space: str, block: BlockShape, dims: Dims) -> list[int] | None:
    """Kept positions of `space` in `block`, or None when all of it remains."""
    if space == RESIDUAL:
        return None
    if space == CHANNELS:
        kept = list(block.channels)
    else:
        heads = block.query_heads() if space == QUERY else list(block.kv_groups)
        kept = [h * dims.head_dim + k for h in heads for k in range(dims.head_dim)]
    return None if len(kept) == space_size(space, dims) else kept


def _stacked_keep(spaces: tuple[str, ...], block: BlockShape, dims: Dims) -> list[int] | None:
    """Kept rows of a projection writing `spaces` stacked in order (a fused projection)."""
    keeps = [space_keep(s, block, dims) for s in spaces]
    if all(k is None for k in keeps):
        return None
    rows, offset = [], 0
    for space, keep in zip(spaces, keeps, strict=True):
        size = space_size(space, dims)
        rows += [offset + i for i in (keep if keep is not None else range(size))]
        offset += size
    return rows


def _locate(name: str, adapter: ArchAdapter) -> tuple[int, str | None, Projection | None, str] | None:
    """(block, sublayer or None, projection or None, parameter) of a block tensor; None outside blocks."""
    prefix = adapter.layers + "."
    if not name.startswith(prefix):
        return None
    index, _, rest = name[len(prefix) :].partition(".")
    module, _, param = rest.rpartition(".")
    for sublayer, root, norms in (
        ("attn", adapter.attention, adapter.attention_norms),
        ("mlp", adapter.mlp, adapter.mlp_norms),
    ):
        if module in norms:
            return int(index), sublayer, None, param
        if module == root or module.startswith(root + "."):
            return int(index), sublayer, adapter.projection(sublayer, module[len(root) + 1 :]), param
    return int(index), None, None, param


def _rule(name: str, ndim: int, adapter: ArchAdapter, shape: Shape) -> Any:
    """DROP, or (kept rows, kept columns) of one tensor under `shape` (None: all)."""
    where = _locate(name, adapter)
    if where is None:
        return None, None
    block_index, sublayer, projection, _ = where
    block = shape.blocks[block_index]
    if block is None:
        return DROP
    if sublayer == "attn" and not block.attention or sublayer == "mlp" and not block.mlp:
        return DROP
    if projection is None:
        return None, None  # norms and per-head q/k norms keep their size
    rows = _stacked_keep(projection.writes, block, shape.dims)
    cols = space_keep(projection.reads, block, shape.dims) if ndim > 1 else None
    return rows, cols


def pruned_shapes(
    named_shapes: Mapping[str, tuple[int, ...]], adapter: ArchAdapter, shape: Shape
) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor that remains under `shape`, by name (removed blocks' tensors are
    left out, not renumbered): what the cost model counts, without touching any weight."""
    out = {}
    for name, dims in named_shapes.items():
        rule = _rule(name, len(dims), adapter, shape)
        if rule == DROP:
            continue
        rows, cols = rule
        new = list(dims)
        if rows is not None:
            new[0] = len(rows)
        if cols is not None:
            new[1] = len(cols)
        out[name] = tuple(new)
    return out


def slice_state_dict(
    state_dict: Mapping[str, torch.Tensor], adapter: ArchAdapter, shape: Shape
) -> dict[str, torch.Tensor]:
    """The compact model's tensors: kept rows and columns of every projection, removed sublayers'
    tensors left out. `shape` must index the model's current blocks (see :meth:`Shape.compacted`)."""
    out = {}
    for name, tensor in state_dict.items():
        rule = _rule(name, tensor.dim(), adapter, shape)
        if rule == DROP:
            continue
        rows, cols = rule
        if rows is not None:
            tensor = tensor.index_select(0, torch.tensor(rows, device=tensor.device))
        if cols is not None:
            tensor = tensor.index_select(1, torch.tensor(cols, device=tensor.device))
        out[name] = tensor.contiguous()
    return out


def _projection_module(block: nn.Module, adapter: ArchAdapter, p: Projection) -> nn.Module:
    root = adapter.attention if p.sublayer == "attn" else adapter.mlp
    return block.get_submodule(f"{root}.{p.name}")


def _silences_sublayer(block: BlockShape, p: Projection) -> bool:
    """Whether `p` is the output projection of a sublayer removed from `block`: zeroing all of it
    (weight and bias) makes the sublayer add nothing to the residual stream."""
    kept = block.attention if p.sublayer == "attn" else block.mlp
    return not kept and RESIDUAL in p.writes


def zeroed_whole(name: str, adapter: ArchAdapter, shape: Shape) -> bool:
    """Whether :func:`zero_fill` zeroes all of tensor `name` (a removed sublayer's output
    projection), by name alone: the streamed export (:mod:`hubprune.shard_export`) writes such
    tensors as zeros without reading them. `shape` indexes the blocks `name` is numbered by."""
    where = _locate(name, adapter)
    if where is None or where[2] is None:
        return False
    block = shape.blocks[where[0]]
    return block is not None and _silences_sublayer(block, where[2])


def zero_fill(model: nn.Module, adapter: ArchAdapter, shape: Shape) -> list[str]:
    """Zero, in place, what makes removed units contribute nothing (the plain export): input
    columns of readers of removed heads / channels, and the weight and bias of a removed
    sublayer's output projection. `shape` indexes the model's current blocks. Returns the
    names of the zeroed tensors."""
    zeroed = []
    for index, block_shape in shape.kept():
        block = adapter.blocks(model)[index]
        base = f"{adapter.layers}.{index}"
        for p in adapter.projections:
            kept = block_shape.attention if p.sublayer == "attn" else block_shape.mlp
            module = _projection_module(block, adapter, p)
            root = adapter.attention if p.sublayer == "attn" else adapter.mlp
            with torch.no_grad():
                if _silences_sublayer(block_shape, p):
                    for pname, param in module.named_parameters(recurse=False):
                        param.zero_()
                        zeroed.append(f"{base}.{root}.{p.name}.{pname}")
                elif kept and p.reads != RESIDUAL:
                    keep = space_keep(p.reads, block_shape, shape.dims)
                    if keep is None:
                        continue
                    gone = sorted(set(range(module.weight.shape[1])) - set(keep))
                    module.weight[:, gone] = 0
                    zeroed.append(f"{base}.{root}.{p.name}.weight")
    return zeroed


def unit_masks(shape: Shape) -> dict[int, dict[str, torch.Tensor]]:
    """Per kept block with partial widths, 0/1 masks over its KV groups (`heads`) and channels."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    d = shape.dims
    for index, block in shape.kept():
        masks = {}
        if 0 < block.num_key_value_heads < d.num_key_value_heads:
            masks["heads"] = torch.zeros(d.num_key_value_heads)
            masks["heads"][list(block.kv_groups)] = 1
        if 0 < block.intermediate_size < d.intermediate_size:
            masks["channels"] = torch.zeros(d.intermediate_size)
            masks["channels"][list(block.channels)] = 1
        if masks:
            out[index] = masks
    return out


def _expand(mask: torch.Tensor, repeat: int, like: torch.Tensor) -> torch.Tensor:
    """A unit mask (units,) or (batch, units) as a multiplier of an input (batch, seq, units·repeat)."""
    mask = mask.to(device=like.device, dtype=like.dtype)
    if repeat > 1:
        mask = mask.repeat_interleave(repeat, dim=-1)
    return mask if mask.dim() == 1 else mask.unsqueeze(-2)


@contextmanager
def masked(
    model: nn.Module, adapter: ArchAdapter, masks: Mapping[int, Mapping[str, torch.Tensor]]
) -> Iterator[None]:
    """Run `model` with KV groups (`heads`, one value per group) and MLP channels (`channels`)
    multiplied by masks, per block: 0 removes a unit exactly as :func:`zero_fill` does, and a
    mask with a batch dimension gives every batch row its own mask (many candidate masks in one
    forward pass). Weights are untouched; hooks are removed afterwards."""
    dims = Dims.from_config(model.config)
    repeat = {"heads": dims.group_size * dims.head_dim, "channels": 1}
    space = {"heads": QUERY, "channels": CHANNELS}
    handles = []
    blocks = adapter.blocks(model)
    try:
        for index, block_masks in masks.items():
            for kind, mask in block_masks.items():
                for p in adapter.readers_of(space[kind]):

                    def hook(
                        _m: nn.Module, args: tuple, mask: torch.Tensor = mask, r: int = repeat[kind]
                    ) -> tuple:
                        return (args[0] * _expand(mask, r, args[0]), *args[1:])

                    module = _projection_module(blocks[index], adapter, p)
                    handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Gate(nn.Module):
    """Wraps a sublayer and multiplies its output by `gate` (a scalar, or one value per batch row)."""

    def __init__(self, inner: nn.Module, gate: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.gate = gate

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        gated = first * self.gate.to(first.device)  # a no-op unless accelerate put the block elsewhere
        return (gated, *out[1:]) if isinstance(out, tuple) else gated


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, attr = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def sublayer_path(adapter: ArchAdapter, unit: Unit) -> str:
    """Dotted path of the attention or MLP module of `unit` (an `attn` or `mlp` unit)."""
    return f"{adapter.layers}.{unit.block}.{adapter.attention if unit.kind == 'attn' else adapter.mlp}"


@contextmanager
def gated(model: nn.Module, adapter: ArchAdapter, gates: Mapping[Unit, torch.Tensor]) -> Iterator[None]:
    """Run `model` with the output of each `attn` / `mlp` unit multiplied by its gate (0 removes
    it; a gate of shape (batch, 1, 1) gates per row); the original modules are put back after."""
    swapped = []
    try:
        for unit, gate in gates.items():
            name = sublayer_path(adapter, unit)
            original = model.get_submodule(name)
            _set(model, name, _Gate(original, gate))
            swapped.append((name, original))
        yield
    finally:
        for name, original in reversed(swapped):
            _set(model, name, original)
