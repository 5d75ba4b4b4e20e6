"""What a plan removed, in words: the one-line summary of the terminal, the card and the commit title.

Everything here reads the plan's :class:`~hubprune.shape.Shape` (whole blocks gone, sublayers
gone, narrower attention and MLP, a sliced residual stream), so a new unit kind needs no new sentence. A plan written by an
older hubprune records no widths; its whole-block and sublayer removals still have a shape
(:func:`plan_shape`), with each sublayer counted as one unit of width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubprune.plan import Manifest, Plan
from hubprune.shape import BlockShape, Dims, Shape

#: Unit kinds an older plan (without `dims`) can be drawn from: each is all or nothing.
_LEGACY_KINDS = ("block", "attn", "mlp")


def plan_shape(plan: Plan, num_blocks: int) -> Shape:
    """The plan's shape; for a plan without recorded widths (older hubprune), the shape of its block
    and sublayer removals over `num_blocks`, with one query head and one channel per block."""
    if plan.dims is not None or any(u.kind not in _LEGACY_KINDS for u in plan.removed):
        return plan.shape()  # without dims this raises the plan's own "re-run prune" error
    unknown = Dims(num_blocks, hidden_size=0, num_attention_heads=1, num_key_value_heads=1, head_dim=0,
                   intermediate_size=1)  # fmt: skip
    return Shape.from_units(plan.removed, unknown)


def _pct(fraction: float) -> str:
    """`0.2` -> `20%`, `0.125` -> `12.5%`."""
    return f"{100 * fraction:.1f}".removesuffix(".0") + "%"


def _span(values: list[int]) -> str:
    """`368-520`, or `432` when all are alike."""
    return f"{min(values)}-{max(values)}" if min(values) != max(values) else str(values[0])


def _narrowed(shape: Shape, block: BlockShape) -> bool:
    d = shape.dims
    return (
        0 < block.num_key_value_heads < d.num_key_value_heads
        or 0 < block.intermediate_size < d.intermediate_size
    )


def mean_slice(shape: Shape) -> float:
    """The share of the dense residual width a rotated shape slices away, averaged over the blocks."""
    widths = shape.hidden_sizes()
    return 1 - sum(widths) / (len(widths) * shape.dims.hidden_size)


def _sliced(shape: Shape, detail: bool) -> str:
    """What a rotated shape did to the residual stream, e.g. "sliced the residual stream to 432 of
    576 dims in every block (mean slice 25%; lm_head at 576)"; `detail` adds the head's width."""
    dense, widths = shape.dims.hidden_size, shape.hidden_sizes()
    head = f"; lm_head at {shape.final_hidden_size}" if detail else ""
    if set(widths) == {dense} and shape.final_hidden_size == dense:
        return f"rotated the residual stream without slicing it ({dense} dims)"
    where = (" in every block" if len(set(widths)) == 1 else " per block") if detail else ""
    return (
        f"sliced the residual stream to {_span(widths)} of {dense} dims{where} "
        f"(mean slice {_pct(mean_slice(shape))}{head})"
    )


def removal(shape: Shape, *, detail: bool = True) -> str:
    """What `shape` removed from the dense model, e.g. "removed 6 of 30 blocks (3, 4, ...)",
    "removed 12 attention and 3 MLP sublayers", "pruned 20% of heads and channels across 30 blocks
    (MLP widths 1024-1536)", "sliced the residual stream to 432 of 576 dims in every block (mean
    slice 25%; lm_head at 576)"; `detail` adds the block numbers, width ranges and head width."""
    if shape.rotated:  # a sliced stream is never combined with other removals (Shape refuses it)
        return _sliced(shape, detail)
    d, kept = shape.dims, shape.kept()
    parts = []
    gone = shape.removed_blocks()
    if gone:
        which = f" ({', '.join(map(str, gone))})" if detail and len(gone) <= 8 else ""
        parts.append(f"removed {len(gone)} of {d.num_blocks} blocks{which}")
    attn = sum(1 for _, b in kept if not b.attention)
    mlp = sum(1 for _, b in kept if not b.mlp)
    if attn or mlp:
        named = " and ".join(f"{n} {what}" for n, what in ((attn, "attention"), (mlp, "MLP")) if n)
        parts.append(f"removed {named} sublayer{'s' if attn + mlp > 1 else ''}")
    if shape.has_widths():
        heads = [b.num_attention_heads for _, b in kept if b.attention]
        channels = [b.intermediate_size for _, b in kept if b.mlp]
        cut_heads = 1 - sum(heads) / (len(heads) * d.num_attention_heads) if heads else 0.0
        cut_channels = 1 - sum(channels) / (len(channels) * d.intermediate_size) if channels else 0.0
        if cut_heads and _pct(cut_heads) == _pct(cut_channels):
            what = f"{_pct(cut_heads)} of heads and channels"
        else:
            named = [(cut_heads, "heads"), (cut_channels, "MLP channels")]
            what = " and ".join(f"{_pct(cut)} of {noun}" for cut, noun in named if cut)
        ranges = [
            f"heads {_span(heads)}" if cut_heads else "",
            f"MLP widths {_span(channels)}" if cut_channels else "",
        ]
        ranges_text = f" ({', '.join(r for r in ranges if r)})" if detail else ""
        narrowed = sum(1 for _, b in kept if _narrowed(shape, b))
        parts.append(f"pruned {what} across {narrowed} block{'s' if narrowed > 1 else ''}{ranges_text}")
    return "; ".join(parts) or "removed nothing"


@dataclass(frozen=True)
class ParamsChange:
    """Parameters before and after the plan (the nominal count when an export zero-fills)."""

    before: float
    after: float
    fraction: float

    @property
    def signed_pct(self) -> str:
        """The change as a signed percentage: `-15.8%`, or `+4.2%` when the model grew (a sliced
        small model's shortcuts and untied head can outweigh what slicing saves)."""
        return f"+{-self.fraction:.1%}" if self.fraction < 0 else f"-{self.fraction:.1%}"


def params_change(manifest: Manifest) -> ParamsChange | None:
    """From the plan's `budget.reached` (what the shape really removes), else the manifest's
    before/after statistics; None when neither says."""
    reached = (manifest.plan.budget or {}).get("reached") or {}
    total = reached.get("params_total")
    if isinstance(total, dict) and all(
        _is_num(total.get(k)) for k in ("before", "after", "removed_fraction")
    ):
        return ParamsChange(total["before"], total["after"], total["removed_fraction"])
    before, after = manifest.model_before.get("params_total"), manifest.model_after.get("params_total")
    if not _is_num(before) or not before:
        return None
    if _is_num(reached.get("params_fraction")):  # an older plan's own count: right for zero-filled exports
        fraction = float(reached["params_fraction"])
        return ParamsChange(before, round(before * (1 - fraction)), fraction)
    return ParamsChange(before, after, 1 - after / before) if _is_num(after) else None


def zero_filled(manifest: Manifest, shape: Shape) -> bool:
    """Whether the export keeps removed weights as zeros (a plain export of sublayers or widths):
    the export record says so, else the shape and the format do."""
    export = manifest.export or {}
    if "zero_filled" in export:
        return bool(export["zero_filled"])
    return export.get("format", "plain") == "plain" and (shape.has_widths() or shape.has_sublayer_removals())


def summary(manifest: Manifest, *, short: bool = False) -> str:
    """One line saying what the plan removed and the parameter change: for the terminal and the
    card; `short` (the publish commit title) leaves out block numbers, counts and the zero-fill note."""
    from hubprune.card import fmt_params

    plan = manifest.plan
    shape = plan_shape(plan, int(manifest.model_before["num_blocks"]))
    line = f"{removal(shape, detail=not short)} with {plan.method}"
    change = params_change(manifest)
    if short:
        return line + (f" ({change.signed_pct} parameters)" if change else "")
    if change:
        line += f": {fmt_params(change.before)} → {fmt_params(change.after)} parameters ({change.signed_pct})"
    if zero_filled(manifest, shape):
        line += "; this plain export zero-fills them, so nothing is saved (--format compact saves them)"
    return line


def block_widths(shape: Shape) -> list[dict[str, Any]]:
    """Per original block, what is kept of it as "kept/total" texts (query heads, KV heads, MLP
    channels), or `removed`: the width table of the card and `hubprune inspect`."""
    d = shape.dims
    rows = []
    for i, b in enumerate(shape.blocks):
        if b is None:
            rows.append({"block": i, "removed": True, "heads": None, "kv_heads": None, "channels": None})
            continue
        rows.append(
            {
                "block": i,
                "removed": False,
                "heads": f"{b.num_attention_heads}/{d.num_attention_heads}",
                "kv_heads": f"{b.num_key_value_heads}/{d.num_key_value_heads}",
                "channels": f"{b.intermediate_size}/{d.intermediate_size}",
            }
        )
    return rows


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
