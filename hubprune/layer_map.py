"""Pictures for the model card: the layer stack with removed units, and a search trace plot.

Both are small hand-written SVG files (no plotting library, so the output is byte-for-byte
deterministic and a card snapshot test can compare it). They are written into the run folder,
which is the future Hub repo, and the card links them by relative path so the Hub renders them.

* :func:`layer_map_svg` draws one column per decoder block. A plan that removes whole blocks
  gets one row ("block"); a plan with attention / MLP sublayer units gets two rows ("attention"
  and "MLP") so a reader sees which half of each block went. Removed units are red and crossed.
* :func:`trace_svg` plots the search objective (e.g. FinerCut's divergence) against the number
  of units removed so far, for plans that carry a trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from hubprune.plan import Plan, Unit
from hubprune.rundir import atomic_write_text

LAYER_MAP_NAME = "layer_map.svg"
TRACE_PLOT_NAME = "search_trace.svg"

_KEPT = "#9ecae1"
_REMOVED = "#e34a33"
_PARTIAL = "#fdbb84"
_TEXT = "#222222"
_FONT = 'font-family="Helvetica, Arial, sans-serif"'

# Keys a trace step may use for its objective value, in order of preference.
TRACE_VALUE_KEYS = ("objective", "divergence", "value", "score", "loss")


def _rows_for(plan: Plan) -> list[tuple[str, str]]:
    """(row label, unit kind) for each row of the picture."""
    kinds = {u.kind for u in plan.removed} | {plan.unit_kind}
    if kinds & {"attn", "mlp"}:
        return [("attention", "attn"), ("MLP", "mlp")]
    return [("block", "block")]


def _fmt(value: float) -> str:
    """A short number for a label: 3 significant digits, no exponent for ordinary values."""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3g}"


def layer_map_svg(plan: Plan, num_blocks: int) -> str:
    """An SVG of the `num_blocks` blocks of the base model with the plan's removed units marked.

    Units with partial removals (heads, channels, width) are drawn orange: the block stays but
    is narrower.
    """
    rows = _rows_for(plan)
    removed_blocks = {u.block for u in plan.removed if u.kind == "block"}
    removed_sub = {(u.kind, u.block) for u in plan.removed if u.kind in ("attn", "mlp")}
    partial = {u.block for u in plan.removed if u.kind in ("heads", "channels", "width")}

    cell, gap, left, top = 22, 2, 84, 34
    what = "sublayers" if len(rows) == 2 else ("blocks" if not partial else "units")
    title = (
        f"{plan.method}: {len(plan.removed)} of {_unit_total(plan, num_blocks, rows)} {what} removed "
        "(input at the left)"
    )
    # ~7 px per character at 13 px: wide enough for the title even with few blocks.
    width = max(left + num_blocks * (cell + gap) + 16, 16 + 7 * len(title))
    height = top + len(rows) * (cell + gap) + 58
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">',
        f"<title>Layer map: {len(plan.removed)} unit(s) removed by {escape(plan.method)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="18" font-size="13" {_FONT} fill="{_TEXT}">{escape(title)}</text>',
    ]
    for r, (label, kind) in enumerate(rows):
        y = top + r * (cell + gap)
        out.append(
            f'<text x="{left - 6}" y="{y + cell * 0.7:.1f}" font-size="12" text-anchor="end" '
            f'{_FONT} fill="{_TEXT}">{label}</text>'
        )
        for b in range(num_blocks):
            x = left + b * (cell + gap)
            gone = b in removed_blocks or (kind, b) in removed_sub
            fill = _REMOVED if gone else (_PARTIAL if b in partial else _KEPT)
            name = f"{'block' if kind == 'block' else label} {b}"
            state = "removed" if gone else ("narrowed" if b in partial else "kept")
            out.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#555555">'
                f"<title>{name}: {state}</title></rect>"
            )
            if gone:
                out.append(
                    f'<path d="M{x + 4} {y + 4}L{x + cell - 4} {y + cell - 4}M{x + cell - 4} {y + 4}'
                    f'L{x + 4} {y + cell - 4}" stroke="#ffffff" stroke-width="2"/>'
                )
    axis_y = top + len(rows) * (cell + gap) + 12
    step = 1 if num_blocks <= 16 else 5
    for b in range(0, num_blocks, step):
        x = left + b * (cell + gap) + cell / 2
        out.append(
            f'<text x="{x:.1f}" y="{axis_y}" font-size="10" text-anchor="middle" {_FONT} '
            f'fill="{_TEXT}">{b}</text>'
        )
    legend_y = axis_y + 20
    legend = [(_KEPT, "kept"), (_REMOVED, "removed")] + ([(_PARTIAL, "narrowed")] if partial else [])
    x = left
    for colour, text in legend:
        out.append(
            f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}" stroke="#555555"/>'
        )
        out.append(f'<text x="{x + 16}" y="{legend_y}" font-size="11" {_FONT} fill="{_TEXT}">{text}</text>')
        x += 80
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _unit_total(plan: Plan, num_blocks: int, rows: Sequence[tuple[str, str]]) -> int:
    """Candidates in the picture: blocks, or two sublayers per block."""
    return num_blocks * len(rows)


def trace_unit(step: dict[str, Any]) -> Unit | None:
    """The unit a trace step removed (FinerCut records it as `removed`, others as `unit`)."""
    unit = step.get("removed", step.get("unit"))
    if isinstance(unit, dict):
        return Unit.from_dict(unit)
    return unit if isinstance(unit, Unit) else None


def trace_points(plan: Plan) -> list[tuple[int, float, str]]:
    """(units removed after this step, objective value, unit label) for every trace step that
    has a numeric objective; empty when the plan has no usable trace. Steps are taken in the
    order recorded, one unit each, as in a greedy search."""
    points = []
    for i, step in enumerate(plan.trace):
        value = next((step[k] for k in TRACE_VALUE_KEYS if isinstance(step.get(k), int | float)), None)
        if value is None or not math.isfinite(float(value)):
            continue
        unit = trace_unit(step)
        label = unit.name if unit is not None else str(step.get("name", ""))
        points.append((i + 1, float(value), label))
    return points


def trace_svg(plan: Plan, *, value_name: str = "objective") -> str | None:
    """A line plot of the search objective against the number of removed units, or None."""
    x_label = f"{'sublayers' if _rows_for(plan)[0][1] == 'attn' else 'units'} removed"
    points = trace_points(plan)
    if not points:
        return None
    w, h, left, right, top, bottom = 520, 300, 70, 20, 30, 50
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x_lo, x_hi = 0, max(xs)
    y_lo, y_hi = min(0.0, min(ys)), max(ys)
    if y_hi == y_lo:
        y_hi = y_lo + 1.0

    def px(x: float) -> float:
        return left + (x - x_lo) / max(x_hi - x_lo, 1) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
        f"<title>{escape(value_name)} vs. units removed ({escape(plan.method)})</title>",
        f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="{_TEXT}"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="{_TEXT}"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        value = y_lo + frac * (y_hi - y_lo)
        out.append(
            f'<text x="{left - 6}" y="{py(value) + 4:.1f}" font-size="10" text-anchor="end" {_FONT} '
            f'fill="{_TEXT}">{_fmt(value)}</text>'
        )
    tick = max(1, math.ceil(x_hi / 10))
    for x in range(0, x_hi + 1, tick):
        out.append(
            f'<text x="{px(x):.1f}" y="{h - bottom + 16}" font-size="10" text-anchor="middle" {_FONT} '
            f'fill="{_TEXT}">{x}</text>'
        )
    line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in points)
    out.append(f'<polyline points="{line}" fill="none" stroke="{_REMOVED}" stroke-width="2"/>')
    for x, y, label in points:
        out.append(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{_REMOVED}">'
            f"<title>step {x}: {escape(label)} ({_fmt(y)})</title></circle>"
        )
    out.append(
        f'<text x="{(left + w - right) / 2:.1f}" y="{h - 12}" font-size="12" text-anchor="middle" {_FONT} '
        f'fill="{_TEXT}">{x_label}</text>'
    )
    out.append(
        f'<text x="16" y="{(top + h - bottom) / 2:.1f}" font-size="12" text-anchor="middle" {_FONT} '
        f'fill="{_TEXT}" transform="rotate(-90 16 {(top + h - bottom) / 2:.1f})">{escape(value_name)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def pictures(plan: Plan, num_blocks: int, *, value_name: str = "objective") -> dict[str, str | None]:
    """File name -> SVG text of the card's pictures: the layer map, and the trace plot (None
    when the plan has no trace, meaning "remove a stale one")."""
    return {
        LAYER_MAP_NAME: layer_map_svg(plan, num_blocks),
        TRACE_PLOT_NAME: trace_svg(plan, value_name=value_name),
    }


def write_pictures(
    plan: Plan, num_blocks: int, run_dir: str | Path, *, value_name: str = "objective"
) -> dict[str, str | None]:
    """Write the layer map and, when the plan has a trace, the trace plot into `run_dir`;
    returns the pictures as :func:`pictures` does."""
    folder = Path(run_dir)
    drawn = pictures(plan, num_blocks, value_name=value_name)
    for name, svg in drawn.items():
        if svg is None:
            (folder / name).unlink(missing_ok=True)  # a stale plot from an earlier plan
        else:
            atomic_write_text(folder / name, svg)
    return drawn
