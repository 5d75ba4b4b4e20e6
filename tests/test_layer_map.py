"""What a plan removed, read from its shape: the layer map, the one-line summary, `hubprune inspect`.

Plans are made by hand over the tiny Llama of tests/tiny.py (4 blocks, 4 query heads in 2 KV
groups, 96 MLP channels) and finished as every method's plan is (`finish_plan`: dims and the
budget reached), so the numbers are the cost model's.
"""

from __future__ import annotations

import re

import pytest

from hubprune.plan import Manifest, Plan, Unit


def finished(removed: list[Unit], unit_kind: str = "width", method: str = "wanda-sp") -> Plan:
    """A plan removing `removed` from the tiny Llama, with dims and `budget.reached` recorded."""
    from hubprune.arch import adapter_for
    from hubprune.pipeline import finish_plan
    from tests.tiny import tiny_model

    model = tiny_model("llama")
    plan = Plan(
        method=method,
        unit_kind=unit_kind,
        removed=removed,
        budget={"requested": {"amount": 0.2, "by": "units"}},
    )
    return finish_plan(plan, model, adapter_for(model))


def width_plan() -> Plan:
    """Block 1 keeps KV group 0 (2 of 4 query heads) and 72 of 96 channels; block 2 keeps 48
    channels; block 3 is removed whole."""
    return finished(
        [
            Unit("heads", 1, indices=(1,)),
            Unit("channels", 1, indices=tuple(range(24))),
            Unit("channels", 2, indices=tuple(range(0, 96, 2))),
            Unit("block", 3),
        ]
    )


def manifest_of(plan: Plan, export: dict | None = None) -> Manifest:
    before = {"num_blocks": 4, "params_total": 1000}
    return Manifest(
        source={"base_model": "test-org/tiny"},
        family="llama",
        plan=plan,
        model_before=before,
        model_after=dict(before),
        export=export if export is not None else {"format": "compact"},
    )


@pytest.fixture(scope="module")
def widths() -> Plan:
    return width_plan()


def test_layer_map_draws_each_block_width(widths):
    """Catches a width plan drawn as all-or-nothing: narrowed cells are bars as tall as the share
    kept, labelled kept/base; the removed block is crossed in both rows; the output is stable."""
    from hubprune.layer_map import layer_map_svg

    svg = layer_map_svg(widths, 4)
    assert svg == layer_map_svg(width_plan(), 4)  # deterministic
    assert ">attention</text>" in svg and ">MLP</text>" in svg
    labels = re.findall(r">(\d+/\d+)</text>", svg)
    assert labels == ["2/4", "72/96", "48/96"]  # only narrowed cells carry numbers, row by row
    assert "<title>attention 1: 2 of 4 query heads kept (1 KV head)</title>" in svg
    assert "<title>MLP 2: 48 of 96 channels kept</title>" in svg
    # Bars rise from the bottom of a 64 px cell: 2/4 -> 32 px, 72/96 -> 48 px, 48/96 -> 32 px.
    bars = re.findall(r'<rect x="\d+" y="\d+" width="24" height="(\d+)" fill="#fdbb84"', svg)
    assert bars == ["32", "48", "32"]
    assert svg.count("<title>attention 3: removed (with its whole block)</title>") == 1
    assert svg.count("<path d=") == 2  # block 3, crossed in the attention and the MLP row
    assert svg.count(": kept</title>") == 3  # full width: attention 0 and 2, MLP 0
    assert "full width (4 query heads, 96 channels)" in svg and "narrowed: bar height" in svg


def test_layer_map_of_whole_blocks_is_one_row():
    """Catches a block plan (with dims) drawn with attention/MLP rows or width labels."""
    from hubprune.layer_map import layer_map_svg

    svg = layer_map_svg(finished([Unit("block", 1)], "block", "block-influence"), 4)
    assert ">block</text>" in svg and ">attention</text>" not in svg
    assert "<title>block 1: removed</title>" in svg and not re.search(r">\d+/\d+</text>", svg)


@pytest.mark.parametrize(
    ("removed", "expected"),
    [
        ([Unit("block", 1), Unit("block", 3)], "removed 2 of 4 blocks (1, 3)"),
        ([Unit("attn", 0), Unit("attn", 2), Unit("mlp", 2)], "removed 2 attention and 1 MLP sublayers"),
        ([Unit("mlp", 2)], "removed 1 MLP sublayer"),
        (
            [Unit("heads", b, indices=(1,)) for b in range(4)]
            + [Unit("channels", b, indices=tuple(range(24))) for b in range(4)],
            "pruned 50% of heads and 25% of MLP channels across 4 blocks (heads 2, MLP widths 72)",
        ),
        (  # a removed attention is a sublayer, not 4 pruned heads in the share
            [Unit("attn", 0), Unit("heads", 1, indices=(0,))],
            "removed 1 attention sublayer; pruned 16.7% of heads across 1 block (heads 2-4)",
        ),
        (
            [Unit("channels", 0, indices=tuple(range(48))), Unit("heads", 1, indices=(0,))],
            "pruned 12.5% of heads and channels across 2 blocks (heads 2-4, MLP widths 48-96)",
        ),
    ],
)
def test_removal_phrase_reads_the_shape(removed, expected):
    """Catches a summary that counts units instead of reading the shape (heads units of 4 blocks
    are not "4 units"), or percentages and ranges taken over the wrong blocks."""
    from hubprune.describe import removal

    assert removal(finished(removed).shape()) == expected


def test_summary_of_a_width_plan_with_blocks_removed(widths):
    """Catches the parameter change taken from the stored (zero-filled) model instead of the plan's
    reached budget, a missing zero-fill note on a plain export, and a long commit title."""
    from hubprune.card import fmt_params
    from hubprune.describe import summary
    from hubprune.publish import default_commit_message

    reached = widths.budget["reached"]["params_total"]
    assert 0 < reached["removed_fraction"] < 1
    manifest = manifest_of(widths)
    line = summary(manifest)
    assert line == (
        "removed 1 of 4 blocks (3); pruned 16.7% of heads and 25% of MLP channels across 2 blocks "
        "(heads 2-4, MLP widths 48-96) with wanda-sp: "
        f"{fmt_params(reached['before'])} → {fmt_params(reached['after'])} parameters "
        f"(-{reached['removed_fraction']:.1%})"
    )
    plain = summary(manifest_of(widths, {"format": "plain"}))
    assert plain.startswith(line) and "zero-fills them, so nothing is saved" in plain
    title = default_commit_message(manifest_of(widths, {"format": "plain"}))
    assert title == (
        "Prune test-org/tiny: removed 1 of 4 blocks; pruned 16.7% of heads and 25% of MLP channels "
        f"across 2 blocks with wanda-sp (-{reached['removed_fraction']:.1%} parameters)"
    )


def test_old_plan_without_dims_still_summarised():
    """Catches manifests of an older hubprune (no `dims`) failing to summarise or draw."""
    from hubprune.describe import summary
    from hubprune.layer_map import layer_map_svg

    plan = Plan(method="finercut", unit_kind="sublayer", removed=[Unit("attn", 3), Unit("mlp", 5)])
    stats = {"num_blocks": 6, "params_total": 1000}
    manifest = Manifest(source={}, family="llama", plan=plan, model_before=stats, model_after=stats)
    manifest.export = {"format": "plain"}
    assert summary(manifest).startswith("removed 1 attention and 1 MLP sublayers with finercut")
    assert "nothing is saved" in summary(manifest)
    assert layer_map_svg(plan, 6).count(": removed</title>") == 2


def test_inspect_shows_what_each_block_would_keep(widths):
    """Catches `hubprune inspect` hiding per-block widths of a width plan (table and --json)."""
    from hubprune.cli.inspect import format_table, json_record

    lines = format_table(widths).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("would keep (removed 1 of 4 blocks"))
    assert lines[start + 1].split() == ["block", "heads", "kv", "heads", "channels"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[start + 2 :]}
    assert rows == {
        "0": ["4/4", "2/2", "96/96"],
        "1": ["2/4", "1/2", "72/96"],
        "2": ["4/4", "2/2", "48/96"],
        "3": ["removed"],
    }
    record = json_record(widths)
    assert record["summary"].startswith("removed 1 of 4 blocks (3); pruned")
    assert [(b["heads"], b["kv_heads"], b["channels"]) for b in record["shape"] if not b["removed"]] == [
        (4, 2, 96),
        (2, 1, 72),
        (4, 2, 48),
    ]
    assert "would keep" not in format_table(finished([Unit("block", 1)], "block", "block-influence"))


def test_inspect_marks_only_the_removed_kv_group() -> None:
    """Would catch the table marking every KV group of a block once one of them is removed (the
    unit label must name the group, and the mark come from the method's own `removed`)."""
    from hubprune.cli.inspect import format_table
    from hubprune.plan import Plan, Unit

    plan = Plan(
        "wanda-sp",
        "width",
        [Unit("heads", 0, (0,))],
        scores=[
            {"unit": Unit("heads", 0, (0,)), "score": 1.0, "removed": True},
            {"unit": Unit("heads", 0, (1,)), "score": 2.0, "removed": False},
        ],
    )
    rows = {line.split()[0] + " " + line.split()[1]: line for line in format_table(plan).splitlines()[1:3]}
    assert rows["heads 0[0]"].rstrip().endswith("x") and not rows["heads 0[1]"].rstrip().endswith("x")
