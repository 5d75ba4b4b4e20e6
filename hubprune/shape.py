"""The shape a plan leaves behind: per block, which KV groups and MLP channels remain.

Every plan, whatever its unit kind, describes one :class:`Shape`: removing block 3 makes block 3
``None``; removing the attention of block 5 leaves it no KV groups; removing KV group 1 of block
2 drops that group and its query heads; removing channels keeps the others. Cost, budgets,
surgery, exports, the card and the layer map read the shape instead of branching on unit kinds.

A KV group is one key/value head with the query heads that read it (grouped-query attention):
it is the smallest attention unit that can be removed without changing the number of query
heads per KV head, which every family's attention code assumes is the same in all blocks.
A block left with no KV group has its attention removed (and with no channel, its MLP): that
is the same model, and saying so lets every export drop the sublayer's norms too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hubprune.errors import BudgetError, RecipeError


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """`key` of a config object or config.json dict. On a heterogeneous config (transformers'
    `per_layer_config`, our compact format) a per-block field read globally raises; its global
    value is the dense model's, which is what unit indices refer to, so read that."""
    if isinstance(config, dict):
        return config.get(key, default)
    try:
        return getattr(config, key, default)
    except RuntimeError:  # AmbiguousGlobalPerLayerAttributeError
        return config._getattr_without_heterogeneous_validation(key, default)


_get = config_value


@dataclass(frozen=True)
class Dims:
    """The dense model's widths, from its config: what unit indices refer to."""

    num_blocks: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int

    @classmethod
    def from_config(cls, config: Any) -> Dims:
        """Dims of a transformers config object or a config.json dict."""
        from hubprune.size import head_dim

        heads = int(_get(config, "num_attention_heads"))
        hidden = int(_get(config, "hidden_size"))
        kv = int(_get(config, "num_key_value_heads") or heads)
        if heads % kv:
            raise RecipeError(f"{heads} query heads do not split into {kv} KV groups")
        return cls(
            num_blocks=int(_get(config, "num_hidden_layers")),
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=head_dim(config),
            intermediate_size=int(_get(config, "intermediate_size")),
        )

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_attention_heads // self.num_key_value_heads

    def to_dict(self) -> dict[str, int]:
        return {
            "num_blocks": self.num_blocks,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
        }


@dataclass(frozen=True)
class BlockShape:
    """What remains of one block: the kept KV groups and MLP channels (original indices, sorted).

    `hidden_size` is the width of the residual stream the block reads and writes between its
    sublayers when a method sliced it (:mod:`hubprune.rotation`; None: the model's hidden size).
    """

    kv_groups: tuple[int, ...]
    channels: tuple[int, ...]
    group_size: int
    hidden_size: int | None = None

    @property
    def attention(self) -> bool:
        return bool(self.kv_groups)

    @property
    def mlp(self) -> bool:
        return bool(self.channels)

    @property
    def num_key_value_heads(self) -> int:
        return len(self.kv_groups)

    @property
    def num_attention_heads(self) -> int:
        return len(self.kv_groups) * self.group_size

    @property
    def intermediate_size(self) -> int:
        return len(self.channels)

    def query_heads(self) -> list[int]:
        """Kept query heads (original indices): the heads of each kept KV group."""
        g = self.group_size
        return [group * g + j for group in self.kv_groups for j in range(g)]

    def layer_config(self) -> dict[str, Any]:
        """The per-block widths an export writes (one entry of a heterogeneous config)."""
        out: dict[str, Any] = {
            "attention": self.attention,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "mlp": self.mlp,
            "intermediate_size": self.intermediate_size,
        }
        if self.hidden_size is not None:
            out["hidden_size"] = self.hidden_size
        return out


@dataclass(frozen=True)
class Shape:
    """Per original block, its :class:`BlockShape`, or None when the whole block is removed.

    `final_hidden_size` is set when the residual stream is rotated and sliced (`width` units):
    the width the final norm and ``lm_head`` read. Such a model also carries a shortcut matrix
    on every residual connection and an ``lm_head`` of its own (:mod:`hubprune.rotation`).
    """

    dims: Dims
    blocks: tuple[BlockShape | None, ...]
    final_hidden_size: int | None = None

    @property
    def rotated(self) -> bool:
        """Whether the residual stream is rotated (and maybe sliced): SliceGPT's shape."""
        return self.final_hidden_size is not None

    def hidden_sizes(self) -> list[int]:
        """The residual width each kept block reads (the dense width where not sliced)."""
        return [b.hidden_size or self.dims.hidden_size for _, b in self.kept()]

    @classmethod
    def dense(cls, dims: Dims) -> Shape:
        full = BlockShape(
            tuple(range(dims.num_key_value_heads)), tuple(range(dims.intermediate_size)), dims.group_size
        )
        return cls(dims, tuple(full for _ in range(dims.num_blocks)))

    @classmethod
    def from_units(cls, units: Iterable[Any], dims: Dims) -> Shape:
        """The shape left by removing `units` (:class:`hubprune.plan.Unit`) from the dense model.

        `heads` units name KV groups (each with its query heads), `channels` units name MLP
        channels. Indices out of range are a :class:`BudgetError`.
        """
        units = list(units)
        if any(u.kind == "width" for u in units):
            return cls._sliced(units, dims)
        kv_gone: list[set[int]] = [set() for _ in range(dims.num_blocks)]
        ch_gone: list[set[int]] = [set() for _ in range(dims.num_blocks)]
        block_gone: set[int] = set()
        for unit in units:
            b = unit.block
            if not 0 <= b < dims.num_blocks:
                raise BudgetError(
                    f"{unit.name} does not exist (the model has blocks 0..{dims.num_blocks - 1})"
                )
            if unit.kind == "block":
                block_gone.add(b)
            elif unit.kind == "attn":
                kv_gone[b].update(range(dims.num_key_value_heads))
            elif unit.kind == "mlp":
                ch_gone[b].update(range(dims.intermediate_size))
            elif unit.kind in ("heads", "channels"):
                limit = dims.num_key_value_heads if unit.kind == "heads" else dims.intermediate_size
                bad = [i for i in unit.indices or () if not 0 <= i < limit]
                if bad:
                    what = "KV group" if unit.kind == "heads" else "MLP channel"
                    raise BudgetError(f"{what} {bad[0]} of block {b} does not exist (it has {limit})")
                (kv_gone if unit.kind == "heads" else ch_gone)[b].update(unit.indices or ())
            else:
                raise RecipeError(f"this hubprune cannot apply {unit.kind} units yet")
        blocks: list[BlockShape | None] = []
        for b in range(dims.num_blocks):
            if b in block_gone:
                blocks.append(None)
                continue
            kv = tuple(i for i in range(dims.num_key_value_heads) if i not in kv_gone[b])
            ch = tuple(i for i in range(dims.intermediate_size) if i not in ch_gone[b])
            blocks.append(BlockShape(kv, ch, dims.group_size))
        shape = cls(dims, tuple(blocks))
        shape.check()
        return shape

    @classmethod
    def _sliced(cls, units: list[Any], dims: Dims) -> Shape:
        """The shape of `width` units: every block kept whole, its residual width sliced;
        `width L` (one past the last block) is the final norm's width."""
        others = sorted({u.kind for u in units if u.kind != "width"})
        if others:
            raise RecipeError(
                f"a sliced residual stream cannot be combined with removed {', '.join(others)} units"
            )
        widths: dict[int, int] = {}
        for unit in units:
            if not 0 <= unit.block <= dims.num_blocks:
                raise BudgetError(
                    f"{unit.name} does not exist (widths are given for blocks 0..{dims.num_blocks - 1} "
                    f"and {dims.num_blocks}, the final norm)"
                )
            if unit.width is None or not 1 <= unit.width <= dims.hidden_size:
                raise BudgetError(f"{unit.name}: a residual width is between 1 and {dims.hidden_size}")
            widths[unit.block] = unit.width
        full = tuple(range(dims.num_key_value_heads)), tuple(range(dims.intermediate_size))
        blocks = tuple(
            BlockShape(*full, dims.group_size, hidden_size=widths.get(b, dims.hidden_size))
            for b in range(dims.num_blocks)
        )
        return cls(dims, blocks, final_hidden_size=widths.get(dims.num_blocks, dims.hidden_size))

    def check(self) -> None:
        """Refuse a shape with nothing left to compute."""
        kept = self.kept()
        if not kept:
            raise BudgetError(f"cannot remove all {self.dims.num_blocks} blocks; at least one must remain")
        if not any(b.attention or b.mlp for _, b in kept):
            raise BudgetError("cannot remove every attention and MLP sublayer; at least one must remain")

    def kept(self) -> list[tuple[int, BlockShape]]:
        """(original index, shape) of every block that remains."""
        return [(i, b) for i, b in enumerate(self.blocks) if b is not None]

    def removed_blocks(self) -> list[int]:
        return [i for i, b in enumerate(self.blocks) if b is None]

    def compacted(self) -> Shape:
        """The same shape over the kept blocks only (indices of the model after block removal)."""
        kept = tuple(b for _, b in self.kept())
        return Shape(Dims(**{**self.dims.to_dict(), "num_blocks": len(kept)}), kept, self.final_hidden_size)

    def has_widths(self) -> bool:
        """Whether some kept block has a partial attention or MLP (not all-or-nothing)."""
        d = self.dims
        return any(
            0 < b.num_key_value_heads < d.num_key_value_heads or 0 < b.intermediate_size < d.intermediate_size
            for _, b in self.kept()
        )

    def has_sublayer_removals(self) -> bool:
        return any(not b.attention or not b.mlp for _, b in self.kept())

    def to_dict(self) -> dict[str, Any]:
        """A readable summary for the manifest: per block, what remains (counts, and the kept KV
        groups when some are gone). Channel indices stay in the plan's units."""
        d = self.dims
        blocks = []
        for i, b in enumerate(self.blocks):
            if b is None:
                blocks.append({"block": i, "removed": True})
                continue
            entry: dict[str, Any] = {
                "block": i,
                "removed": False,
                "attention": b.attention,
                "heads": b.num_attention_heads,
                "kv_heads": b.num_key_value_heads,
                "mlp": b.mlp,
                "channels": b.intermediate_size,
            }
            if 0 < b.num_key_value_heads < d.num_key_value_heads:
                entry["kv_groups"] = list(b.kv_groups)
            if self.rotated:
                entry["hidden_size"] = b.hidden_size or d.hidden_size
            blocks.append(entry)
        out: dict[str, Any] = {"dims": d.to_dict(), "blocks": blocks}
        if self.rotated:
            out["final_hidden_size"] = self.final_hidden_size
        return out
