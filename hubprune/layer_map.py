"""Pictures for the model card: the layer stack with removed units, a search trace plot, a loss curve.

All are small hand-written SVG files (no plotting library, so the output is byte-for-byte
deterministic and a card snapshot test can compare it). They are written into the run folder,
which is the future Hub repo, and the card links them by relative path so the Hub renders them.

* :func:`layer_map_svg` draws one column per decoder block from the plan's shape. A plan that
  removes only whole blocks gets one row ("block"); any other gets two rows ("attention" and
  "MLP"). Removed blocks and sublayers are red and crossed; a narrowed sublayer (heads, channels)
  is an orange bar as tall as the share it keeps, labelled "kept/base" (e.g. 6/9, 1152/1536).
  A sliced residual stream (SliceGPT, dynamic slicing) gets one "residual" row of the same bars,
  the residual width each block reads out of the dense width D, and a last "head" cell for the
  width the final norm and ``lm_head`` read.
* :func:`trace_svg` plots the search objective (e.g. FinerCut's divergence) against the number
  of units removed so far, for plans that carry a trace; when the steps list their candidates,
  also the closest other candidate of each step (a hollow marker where that is a lower bound:
  the search stopped scoring the candidates early once they could not be the minimum).
* :func:`curve_svg` plots an optimisation's loss per step and its moving-average baseline, for
  plans that carry a curve (policy gradient). Both plots share one drawing helper (`_line_plot`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from hubprune.plan import Plan, Unit
from hubprune.rundir import atomic_write_text
from hubprune.shape import BlockShape, Shape

LAYER_MAP_NAME = "layer_map.svg"
TRACE_PLOT_NAME = "search_trace.svg"
LOSS_CURVE_NAME = "loss_curve.svg"
#: Every picture a card may link, in the order `hubprune card` lists them.
PICTURE_NAMES = (LAYER_MAP_NAME, TRACE_PLOT_NAME, LOSS_CURVE_NAME)

_KEPT = "#9ecae1"
_REMOVED = "#e34a33"
_OTHER = "#636363"
_PARTIAL = "#fdbb84"
_EMPTY = "#f2f2f2"
_TEXT = "#222222"
_FONT = 'font-family="Helvetica, Arial, sans-serif"'

# Keys a trace step may use for its objective value, in order of preference.
TRACE_VALUE_KEYS = ("objective", "divergence", "value", "score", "loss")


@dataclass(frozen=True)
class _Row:
    """One row of the layer map: what it draws of each block and out of how much."""

    label: str
    noun: str  # what the numbers count
    total: int
    kept: Callable[[BlockShape], int]
    full: str = "kept"  # the title of a cell that keeps everything


def _rows(shape: Shape) -> list[_Row]:
    """One "block" row when only whole blocks went; one "residual" row (its widths) for a sliced
    stream; else attention and MLP rows (their widths)."""
    d = shape.dims
    if shape.rotated:
        full = f"full width ({d.hidden_size} dims)"
        return [
            _Row("residual", "residual dims", d.hidden_size, lambda b: b.hidden_size or d.hidden_size, full)
        ]
    if not (shape.has_widths() or shape.has_sublayer_removals()):
        return [_Row("block", "blocks", 1, lambda b: 1)]
    return [
        _Row("attention", "query heads", d.num_attention_heads, lambda b: b.num_attention_heads),
        _Row("MLP", "channels", d.intermediate_size, lambda b: b.intermediate_size),
    ]


def _fmt(value: float, digits: int = 3) -> str:
    """A short number for a label: `digits` significant digits, no exponent for ordinary values."""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _cell_state(row: _Row, block: BlockShape | None) -> tuple[int, str]:
    """(kept count, "kept" / "narrowed" / "removed") of one cell."""
    kept = row.kept(block) if block is not None else 0
    return kept, ("removed" if kept == 0 else "kept" if kept == row.total else "narrowed")


def _columns(shape: Shape, row: _Row) -> list[tuple[str, str, BlockShape | None]]:
    """(axis label, cell name, block shape) of each cell of `row`: one per block, and for a sliced
    stream a last "head" cell, the width the final norm and lm_head read."""
    if not shape.rotated:
        return [(str(b), f"{row.label} {b}", block) for b, block in enumerate(shape.blocks)]
    head = BlockShape((), (), 1, hidden_size=shape.final_hidden_size)
    return [(str(b), f"block {b}", block) for b, block in enumerate(shape.blocks)] + [
        ("head", "head (final norm and lm_head)", head)
    ]


def _cell_title(row: _Row, name: str, block: BlockShape | None, kept: int, state: str) -> str:
    if block is None and row.label != "block":
        return f"{name}: removed (with its whole block)"
    if state != "narrowed":
        return f"{name}: {row.full if state == 'kept' else state}"
    text = f"{name}: {kept} of {row.total} {row.noun} kept"
    if row.label == "attention":
        text += f" ({block.num_key_value_heads} KV head{'s' if block.num_key_value_heads != 1 else ''})"
    return text


def _legend(shape: Shape) -> list[tuple[str, str, int]]:
    """(colour, text, horizontal advance) of each legend entry."""
    d = shape.dims
    if shape.rotated:
        entries = [
            (_KEPT, f"full width (D = {d.hidden_size} dims)"),
            (_PARTIAL, "residual width kept (of D): bar height and label = d/D"),
        ]
        return [(colour, text, 30 + 6 * len(text)) for colour, text in entries]
    if not shape.has_widths():
        return [(_KEPT, "kept", 80), (_REMOVED, "removed", 80)]
    entries = [
        (_KEPT, f"full width ({d.num_attention_heads} query heads, {d.intermediate_size} channels)"),
        (_PARTIAL, "narrowed: bar height and label = kept/base"),
        (_REMOVED, "removed"),
    ]
    return [(colour, text, 30 + 6 * len(text)) for colour, text in entries]


def layer_map_svg(plan: Plan, num_blocks: int) -> str:
    """An SVG of the `num_blocks` blocks of the base model and what the plan leaves of each.

    Removed blocks and sublayers are red and crossed. When the plan narrows some blocks (heads,
    channels, the residual stream), each cell is a bar whose height is the share kept, orange and
    labelled "kept/total" where it is narrower than the base model.
    """
    from hubprune.describe import plan_shape, removal

    shape = plan_shape(plan, num_blocks)
    rows = _rows(shape)
    widths = shape.has_widths() or shape.rotated
    cell_w, cell_h, gap, left, top = (24, 64, 2, 84, 34) if widths else (22, 22, 2, 84, 34)
    head_gap = 8 if shape.rotated else 0  # the head cell stands apart from the blocks

    def cell_x(column: int) -> int:
        return left + column * (cell_w + gap) + (head_gap if column >= num_blocks else 0)

    title = f"{plan.method}: {removal(shape, detail=False)} (input at the left)"
    legend = _legend(shape)
    columns = num_blocks + (1 if shape.rotated else 0)
    # ~7 px per character at 13 px: wide enough for the title and the legend even with few blocks.
    width = max(cell_x(columns) + 16, 16 + 7 * len(title), left + sum(a for *_, a in legend) + 8)
    height = top + len(rows) * (cell_h + gap) + 58
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">',
        f"<title>Layer map: {escape(removal(shape))} by {escape(plan.method)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="18" font-size="13" {_FONT} fill="{_TEXT}">{escape(title)}</text>',
    ]
    for r, row in enumerate(rows):
        y = top + r * (cell_h + gap)
        out.append(
            f'<text x="{left - 6}" y="{y + cell_h / 2 + 4:.1f}" font-size="12" text-anchor="end" '
            f'{_FONT} fill="{_TEXT}">{row.label}</text>'
        )
        for c, (_, name, block) in enumerate(_columns(shape, row)):
            x = cell_x(c)
            kept, state = _cell_state(row, block)
            tip = f"<title>{_cell_title(row, name, block, kept, state)}</title>"
            if state != "narrowed":
                fill = _REMOVED if state == "removed" else _KEPT
                out.append(
                    f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="{fill}" '
                    f'stroke="#555555">{tip}</rect>'
                )
            else:  # the base width as an outline, the kept share as a bar from the bottom
                bar = max(1, round(cell_h * kept / row.total))
                out.append(
                    f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="{_EMPTY}" '
                    f'stroke="#555555">{tip}</rect>'
                )
                out.append(
                    f'<rect x="{x}" y="{y + cell_h - bar}" width="{cell_w}" height="{bar}" fill="{_PARTIAL}" '
                    f'stroke="#555555"/>'
                )
                cx, cy = x + cell_w / 2 + 3.5, y + cell_h / 2
                out.append(
                    f'<text x="{cx:.1f}" y="{cy:.1f}" font-size="9" text-anchor="middle" {_FONT} '
                    f'fill="{_TEXT}" transform="rotate(-90 {cx:.1f} {cy:.1f})">{kept}/{row.total}</text>'
                )
            if state == "removed":
                out.append(
                    f'<path d="M{x + 4} {y + 4}L{x + cell_w - 4} {y + cell_h - 4}M{x + cell_w - 4} {y + 4}'
                    f'L{x + 4} {y + cell_h - 4}" stroke="#ffffff" stroke-width="2"/>'
                )
    axis_y = top + len(rows) * (cell_h + gap) + 12
    step = 1 if num_blocks <= 16 else 5
    for c, (label, _, _) in enumerate(_columns(shape, rows[0])):
        if c % step and c < num_blocks:
            continue
        out.append(
            f'<text x="{cell_x(c) + cell_w / 2:.1f}" y="{axis_y}" font-size="10" text-anchor="middle" {_FONT} '
            f'fill="{_TEXT}">{label}</text>'
        )
    legend_y = axis_y + 20
    x = left
    for colour, text, advance in legend:
        out.append(
            f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}" stroke="#555555"/>'
        )
        out.append(f'<text x="{x + 16}" y="{legend_y}" font-size="11" {_FONT} fill="{_TEXT}">{text}</text>')
        x += advance
    out.append("</svg>")
    return "\n".join(out) + "\n"


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


def runner_up_points(plan: Plan) -> list[tuple[int, float, str, bool]]:
    """(step, value, unit, is a lower bound) of the lowest candidate that a greedy step did not
    remove, for trace steps that list their candidates (FinerCut's `candidates`). A candidate the
    search dropped early has a null score and a `lower_bound`; when the lowest value among the
    others is such a bound, the closest other candidate scores at least that much."""
    points = []
    for i, step in enumerate(plan.trace):
        removed = trace_unit(step)
        others = []
        for c in step.get("candidates") or []:
            if removed is not None and c.get("unit") == removed.name:
                continue
            exact = isinstance(c.get("score"), int | float)
            value = c["score"] if exact else c.get("lower_bound")
            if isinstance(value, int | float) and math.isfinite(value):
                others.append((float(value), not exact, str(c.get("unit", ""))))
        if others:
            value, low, label = min(others, key=lambda o: (o[0], o[1]))
            points.append((i + 1, value, label, low))
    return points


@dataclass(frozen=True)
class _Series:
    """One line of a plot: its points (x, y, tooltip), colour, legend text ("" for none), and
    whether it is dashed and has a marker at each point (the marker carries the tooltip)."""

    points: list[tuple[int, float, str]]
    colour: str
    legend: str = ""
    dashed: bool = False
    markers: bool = True
    hollow: frozenset[int] = frozenset()  # indices of points drawn as open circles


def _line_plot(
    series: list[_Series], *, title: str, x_label: str, y_label: str, from_zero: bool, digits: int = 3
) -> str:
    """An SVG line plot of `series` over whole-number x from 0: three y ticks (`digits`
    significant digits), at most ~10 x ticks, the y axis from 0 when `from_zero` (else from the
    lowest value), a legend row on top for series that have legend text. Shared by the trace
    plot and the loss curve."""
    w, h, left, right, top, bottom = 520, 300, 70, 20, 30, 50
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    x_lo, x_hi = 0, max(xs)
    y_lo, y_hi = (min(0.0, min(ys)) if from_zero else min(ys)), max(ys)
    if y_hi == y_lo:
        y_hi = y_lo + 1.0

    def px(x: float) -> float:
        return left + (x - x_lo) / max(x_hi - x_lo, 1) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="{_TEXT}"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="{_TEXT}"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        value = y_lo + frac * (y_hi - y_lo)
        out.append(
            f'<text x="{left - 6}" y="{py(value) + 4:.1f}" font-size="10" text-anchor="end" {_FONT} '
            f'fill="{_TEXT}">{_fmt(value, digits)}</text>'
        )
    tick = max(1, math.ceil(x_hi / 10))
    for x in range(0, x_hi + 1, tick):
        out.append(
            f'<text x="{px(x):.1f}" y="{h - bottom + 16}" font-size="10" text-anchor="middle" {_FONT} '
            f'fill="{_TEXT}">{x}</text>'
        )
    for s in series:
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in s.points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        out.append(f'<polyline points="{line}" fill="none" stroke="{s.colour}" stroke-width="2"{dash}/>')
        if s.markers:
            for i, (x, y, tip) in enumerate(s.points):
                fill = (
                    f'fill="#ffffff" stroke="{s.colour}" stroke-width="1.5"'
                    if i in s.hollow
                    else f'fill="{s.colour}"'
                )
                out.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" {fill}>'
                    f"<title>{escape(tip)}</title></circle>"
                )
    out.append(
        f'<text x="{(left + w - right) / 2:.1f}" y="{h - 12}" font-size="12" text-anchor="middle" {_FONT} '
        f'fill="{_TEXT}">{escape(x_label)}</text>'
    )
    out.append(
        f'<text x="16" y="{(top + h - bottom) / 2:.1f}" font-size="12" text-anchor="middle" {_FONT} '
        f'fill="{_TEXT}" transform="rotate(-90 16 {(top + h - bottom) / 2:.1f})">{escape(y_label)}</text>'
    )
    x = left
    for s in (s for s in series if s.legend):
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        out.append(
            f'<line x1="{x}" y1="14" x2="{x + 20}" y2="14" stroke="{s.colour}" stroke-width="2"{dash}/>'
        )
        out.append(
            f'<text x="{x + 26}" y="18" font-size="11" {_FONT} fill="{_TEXT}">{escape(s.legend)}</text>'
        )
        x += 40 + 6 * len(s.legend)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def trace_svg(plan: Plan, *, value_name: str = "objective") -> str | None:
    """A line plot of the search objective against the number of removed units, or None."""
    sublayers = any(u.kind in ("attn", "mlp") for u in plan.removed)  # a trace counts units, not widths
    points = trace_points(plan)
    if not points:
        return None
    line = [(x, y, f"step {x}: {label} ({_fmt(y)})") for x, y, label in points]
    closest = runner_up_points(plan)
    series = [_Series(line, _REMOVED, "removed" if closest else "")]
    if closest:
        tips = [
            (x, y, f"step {x}: closest other, {u} ({'>= ' if low else ''}{_fmt(y)})")
            for x, y, u, low in closest
        ]
        hollow = frozenset(i for i, point in enumerate(closest) if point[3])
        series.append(
            _Series(tips, _OTHER, "closest other candidate (open: at least)", dashed=True, hollow=hollow)
        )
    return _line_plot(
        series,
        title=f"{value_name} vs. units removed ({plan.method})",
        x_label=f"{'sublayers' if sublayers else 'units'} removed",
        y_label=value_name,
        from_zero=True,
    )


def curve_svg(plan: Plan) -> str | None:
    """A line plot of an optimisation's loss per step (the mean loss of the step's sampled masks)
    and its moving-average baseline, for plans with a `curve` (policy gradient); else None."""
    points = [
        (int(p["step"]), float(p["loss"]), float(p["baseline"]))
        for p in plan.curve
        if all(
            isinstance(p.get(k), int | float) and math.isfinite(p[k]) for k in ("step", "loss", "baseline")
        )
    ]
    if not points:
        return None
    # Losses move in the third digit late in a search: 4 significant digits tell the ticks apart.
    loss = [(step, value, f"step {step}: loss {_fmt(value, 4)}") for step, value, _ in points]
    baseline = [(step, value, "") for step, _, value in points]
    return _line_plot(
        [
            _Series(loss, _REMOVED, "mean loss of the step's masks", markers=len(points) <= 50),
            _Series(baseline, "#3182bd", "moving-average baseline", dashed=True, markers=False),
        ],
        title=f"loss per optimisation step ({plan.method})",
        x_label="optimisation step",
        y_label="loss (mean next-token NLL)",
        from_zero=False,
        digits=4,
    )


def pictures(plan: Plan, num_blocks: int, *, value_name: str = "objective") -> dict[str, str | None]:
    """File name -> SVG text of the card's pictures: the layer map, the trace plot and the loss
    curve (each of the last two None when the plan has no trace / curve: "remove a stale one")."""
    return {
        LAYER_MAP_NAME: layer_map_svg(plan, num_blocks),
        TRACE_PLOT_NAME: trace_svg(plan, value_name=value_name),
        LOSS_CURVE_NAME: curve_svg(plan),
    }


def write_pictures(
    plan: Plan, num_blocks: int, run_dir: str | Path, *, value_name: str = "objective"
) -> dict[str, str | None]:
    """Write the layer map and, when the plan has them, the trace plot and the loss curve into
    `run_dir`; returns the pictures as :func:`pictures` does."""
    folder = Path(run_dir)
    drawn = pictures(plan, num_blocks, value_name=value_name)
    for name, svg in drawn.items():
        if svg is None:
            (folder / name).unlink(missing_ok=True)  # a stale plot from an earlier plan
        else:
            atomic_write_text(folder / name, svg)
    return drawn
