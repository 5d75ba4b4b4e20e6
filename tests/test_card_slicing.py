"""The card, layer map and summary of a sliced residual stream (SliceGPT, dynamic slicing).

Plans are made by hand as hubprune/methods/slicing.py records them, over a 6-block model with
SmolLM2's widths (D = 576, 49,152-token vocabulary), with the export record of the
heterogeneous format (`slicing`: shortcut and lm_head parameters) around them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from hubprune import card
from hubprune.describe import summary
from hubprune.layer_map import layer_map_svg
from hubprune.plan import Calibration, Manifest, Plan, Unit
from hubprune.shape import Dims
from tests.test_card import VERSIONS, write_run

D, BLOCKS, VOCAB = 576, 6, 49152
DIMS = Dims(BLOCKS, hidden_size=D, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
            intermediate_size=1536)  # fmt: skip
CONSTANT = [432] * BLOCKS
DYNAMIC = [432, 368, 520, 456, 400, 416]  # the same mean slice, 25%
CALIBRATION = Calibration(
    source="lee-background", kind="offline", samples=32, seq_len=256, seed=0,
    token_ids_sha256="cd" * 32, total_tokens_available=50000, bos_prepended=True,
)  # fmt: skip


def shortcut_params(widths: list[int], final: int) -> int:
    """Attention shortcut d_b x d_b and MLP shortcut d_b -> d_(b+1) of every block."""
    ends = [*widths[1:], final]
    return sum(w * w + w * nxt for w, nxt in zip(widths, ends, strict=True))


def sliced_plan(widths: list[int], *, final: int = D, dynamic: bool = False) -> Plan:
    """A plan as the slicing methods record it: L+1 width units, per-unit scores, the search cost."""
    redundancy = [0.80, 0.95, 0.60, 0.70, 0.90, 0.85]
    scores: list[dict[str, Any]] = []
    for b, width in enumerate(widths):
        entry = {
            "unit": Unit("width", b, width=width),
            "score": 1 - width / D,
            "slice": 1 - width / D,
            "kept_second_moment": {"input": 0.9 + 0.01 * b, "mid": 0.85 + 0.01 * b},
        }
        if dynamic:
            entry.update(layer_redundancy=redundancy[b], redundancy_normalised=(redundancy[b] - 0.6) / 0.35)
        scores.append(entry)
    scores.append(
        {"unit": Unit("width", BLOCKS, width=final), "score": 1 - final / D, "slice": 1 - final / D,
         "kept_second_moment": {"input": 1.0}}
    )  # fmt: skip
    params: dict[str, Any] = {"multiple_of": 8, "min_width": None, "slice_head": final != D}
    if dynamic:
        params.update(base=0.05, lr_source="pg19.txt")
        params["lr_calibration"] = {"source": "pg19.txt", "kind": "file", "samples": 16, "seq_len": 512}
    return Plan(
        method="dynamic-slicing" if dynamic else "slicegpt",
        unit_kind="width",
        removed=[s["unit"] for s in scores],
        scores=scores,
        score_meaning="slice fraction asked per block",
        params=params,
        dims=DIMS.to_dict(),
        budget={
            "requested": {"amount": 0.25, "by": "units"},
            "reached": {
                "mean_slice": 1 - sum(widths) / (BLOCKS * D),
                "widths": widths,
                "final_width": final,
                "context": 2048,
                "params_total": {"before": 60_000_000, "after": 62_500_000, "removed_fraction": -1 / 24},
            },
        },
        calibration=CALIBRATION,
        seed=0,
        search_cost={"calibration_passes": 2, "redundancy_passes": int(dynamic), "tokens_seen": 8192,
                     "wall_s": 12.34},
    )  # fmt: skip


def sliced_manifest(plan: Plan, *, after: int = 62_500_000, untied: bool = True) -> Manifest:
    """A run of `plan` exported in the heterogeneous format, its `slicing` record filled in."""
    widths = [u.width for u in plan.removed]
    return Manifest(
        source={"spec": "offline:smollm2-135m-instruct", "kind": "offline", "local_dir": "/x",
                "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
        family="llama",
        plan=plan,
        model_before={"num_blocks": BLOCKS, "params_total": 60_000_000, "tied_embeddings": untied},
        model_after={"num_blocks": BLOCKS, "params_total": after, "tied_embeddings": False},
        export={
            "format": "compact",
            "schema": "hubprune heterogeneous (per_layer_config)",
            "trust_remote_code": True,
            "vllm_servable": False,
            "slicing": {
                "hidden_sizes": widths[:-1],
                "final_hidden_size": widths[-1],
                "shortcut_params": shortcut_params(widths[:-1], widths[-1]),
                "lm_head_params": VOCAB * widths[-1],
                "lm_head_untied": untied,
            },
        },
        versions=dict(VERSIONS),
        created_at="2026-01-01T00:00:00+00:00",
        hubprune_version="0.1.0",
    )  # fmt: skip


def render(tmp_path, manifest: Manifest) -> str:
    return card.render_card_text(write_run(tmp_path / "run", manifest), repo_id="test-org/sliced")


@pytest.mark.parametrize("widths", [CONSTANT, DYNAMIC], ids=["constant", "dynamic"])
def test_layer_map_draws_one_bar_per_block_as_tall_as_its_width(widths):
    """Catches a sliced plan drawn as untouched blocks, bars not proportional to the kept width,
    or the head cell missing: one orange bar per block, height = 64 px x d_b / D, labelled d_b/D,
    and a last full-width head cell."""
    svg = layer_map_svg(sliced_plan(widths, dynamic=widths is DYNAMIC), BLOCKS)
    bars = re.findall(r'<rect x="\d+" y="\d+" width="24" height="(\d+)" fill="#fdbb84"', svg)
    assert [int(h) for h in bars] == [round(64 * w / D) for w in widths]
    assert re.findall(r">(\d+/\d+)</text>", svg) == [f"{w}/{D}" for w in widths]
    for b, w in enumerate(widths):
        assert f"<title>block {b}: {w} of {D} residual dims kept</title>" in svg
    assert f"<title>head (final norm and lm_head): full width ({D} dims)</title>" in svg
    assert ">residual</text>" in svg and ">head</text>" in svg
    assert "residual width kept (of D)" in svg
    assert "#e34a33" not in svg  # nothing is removed


def test_dynamic_and_constant_slicing_look_different():
    """Catches the layer map ignoring per-block widths: equal bars for constant slicing, unequal
    ones for dynamic slicing at the same mean."""

    def heights(plan: Plan) -> set[str]:
        return set(re.findall(r'width="24" height="(\d+)" fill="#fdbb84"', layer_map_svg(plan, BLOCKS)))

    assert len(heights(sliced_plan(CONSTANT))) == 1
    assert len(heights(sliced_plan(DYNAMIC, dynamic=True))) == len(set(DYNAMIC))


def test_summary_line_of_a_sliced_model():
    """Catches a sliced plan summarised as "removed nothing", the wrong widths or mean slice, the
    head's width left out, and a parameter increase printed as a decrease ("--4.2%")."""
    constant = sliced_manifest(sliced_plan(CONSTANT))
    assert summary(constant) == (
        "sliced the residual stream to 432 of 576 dims in every block (mean slice 25%; lm_head at 576) "
        "with slicegpt: 60.0M → 62.5M parameters (+4.2%)"
    )
    assert summary(constant, short=True) == (
        "sliced the residual stream to 432 of 576 dims (mean slice 25%) with slicegpt (+4.2% parameters)"
    )
    dynamic = sliced_manifest(sliced_plan(DYNAMIC, final=512, dynamic=True))
    assert summary(dynamic).startswith(
        "sliced the residual stream to 368-520 of 576 dims per block (mean slice 25%; lm_head at 512) "
        "with dynamic-slicing: "
    )


def test_card_counts_shortcuts_and_the_untied_head_and_says_the_model_grew(tmp_path):
    """Catches a parameter sentence that leaves out the shortcut matrices or the untied lm_head,
    or a card that hides a sliced model larger than its base."""
    manifest = sliced_manifest(sliced_plan(CONSTANT))
    assert manifest.export["slicing"]["shortcut_params"] == 2_301_696  # 5 x 2 x 432² + 432² + 576 x 432
    text = render(tmp_path, manifest)
    assert (
        "\n2.3M of the 62.5M parameters are the 12 shortcut matrices on the residual connections, and "
        "lm_head (28.3M) is no longer tied to the embeddings"
    ) in text
    assert (
        "**The sliced model has more parameters than the base model** (62.5M against 60.0M, +4.2%): "
        "the shortcut matrices and the untied lm_head cost more than slicing saves."
    ) in text
    assert "fewer parameters than the base model" not in text
    # The opening sentence does not call the growth "-4.2% of the parameters".
    assert (
        "with [SliceGPT (rotate and slice the residual stream)](https://arxiv.org/abs/2401.15024): it sliced "
        in text
    )
    assert "lm_head at 576).\n" in text
    assert "Budget asked: **a mean slice of 25% of the residual width**." in text
    assert "| residual width (mean of the blocks) | 576 | 432 | 25.0% |" in text


def test_card_of_a_smaller_model_with_a_separate_head(tmp_path):
    """Catches the untied-head clause printed for a base whose lm_head was never tied, and a
    wrong share for a model that did shrink."""
    text = render(tmp_path, sliced_manifest(sliced_plan(CONSTANT), after=54_000_000, untied=False))
    assert (
        "\n2.3M of the 54.0M parameters are the 12 shortcut matrices on the residual connections.\n" in text
    )
    assert "no longer tied" not in text and "more parameters than the base" not in text
    assert (
        "Counting them, the sliced model has 10.0% fewer parameters than the base model (60.0M → 54.0M)."
        in text
    )


def test_card_of_dynamic_slicing_names_its_widths_and_where_they_came_from(tmp_path):
    """Catches the width table, the layer-redundancy sentence (SP, SB, the LR text) or the search
    cost line of dynamic slicing missing or taken from the wrong fields."""
    text = render(tmp_path, sliced_manifest(sliced_plan(DYNAMIC, dynamic=True)))
    header = (
        "| block | residual width | slice | layer redundancy | normalised | slice asked | "
        "second moment kept (input / mid) |"
    )
    assert header in text
    assert "| 1 | 368/576 | 36.1% | 0.95 | 1 | 0.3611 | 91.0% / 86.0% |" in text
    assert "| 2 | 520/576 | 9.7% | 0.6 | 0 | 0.09722 | 92.0% / 87.0% |" in text
    assert "| head (final norm, lm_head) | 576/576 | 0.0% | – | – | – | 100.0% |" in text
    assert "| unit | score |" not in text and "Scores of all" not in text
    assert "with SP = 0.25 (the mean slice) and SB = 0.05 (`--method-arg base=0.05`)" in text
    assert "rounded to multiples of 8" in text
    assert (
        "LR was measured on `pg19.txt` (file: 16 sequences × 512 tokens), not the calibration text." in text
    )
    assert (
        "Search cost: 2 passes over 8,192 calibration tokens, + 1 for layer redundancy, in 12.3 s.\n"
    ) in text
    assert (
        "--method dynamic-slicing --amount 0.25 --method-arg base=0.05 --method-arg lr_source=pg19.txt "
        "--method-arg multiple_of=8 --method-arg slice_head=false --calibration lee-background"
    ) in text


def test_constant_slicing_has_no_redundancy_columns(tmp_path):
    """Catches SliceGPT's card claiming layer redundancy it never measured."""
    text = render(tmp_path, sliced_manifest(sliced_plan(CONSTANT)))
    assert "| block | residual width | slice | second moment kept (input / mid) |" in text
    assert "| 0 | 432/576 | 25.0% | 90.0% / 85.0% |" in text
    assert "layer redundancy" not in text
    assert "Search cost: 2 passes over 8,192 calibration tokens, in 12.3 s.\n" in text
