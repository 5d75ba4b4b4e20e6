"""The card of a policy-gradient run: the loss curve, the learned widths or kept blocks, the search cost.

Runs the real method for 6 steps on the tiny Llama of tests/tiny.py (4 blocks, 2 KV groups of
2 query heads, 96 MLP channels), calibrated on 4 sequences of 32 tokens (one batch a step).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hubprune import card
from hubprune.cli import main
from hubprune.layer_map import LOSS_CURVE_NAME, curve_svg
from hubprune.plan import Manifest
from tests.tiny import SAMPLE_TEXT, save_tiny

STEPS, K, SAMPLES, SEQ_LEN = 6, 2, 4, 32
AMOUNTS = {"heads,channels": "0.2", "channels": "0.2", "blocks": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One compact run folder per granularity, with its card rendered by `hubprune card`."""
    root = tmp_path_factory.mktemp("policy")
    tiny = save_tiny(root / "tiny-llama", "llama")
    text = root / "cal.txt"
    text.write_text(SAMPLE_TEXT)
    out = {}
    for granularity, amount in AMOUNTS.items():
        run = root / granularity.replace(",", "-")
        argv = ["prune", str(tiny), "--method", "policy-gradient", "--amount", amount]
        argv += ["--method-arg", f"steps={STEPS}", "--method-arg", f"granularity={granularity}"]
        argv += ["--calibration", str(text), "--samples", str(SAMPLES), "--seq-len", str(SEQ_LEN)]
        assert main([*argv, "--format", "compact", "--out", str(run)]) == 0
        assert main(["card", str(run)]) == 0
        out[granularity] = run
    return out


def readme(run: Path) -> str:
    return (run / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("granularity", list(AMOUNTS))
def test_card_links_the_loss_curve_of_every_step(runs, granularity):
    """Catches the loss curve missing from the folder or the card, or drawn from the wrong data:
    one marker per step whose tooltip is that step's recorded loss, and the baseline dashed."""
    run = runs[granularity]
    curve = Manifest.load(run).plan.curve
    assert [p["step"] for p in curve] == list(range(1, STEPS + 1))
    svg = (run / LOSS_CURVE_NAME).read_text(encoding="utf-8")
    tips = re.findall(r"<title>step (\d+): loss ([0-9.]+)</title>", svg)
    assert [(int(s), float(v)) for s, v in tips] == [
        (p["step"], pytest.approx(p["loss"], abs=5e-3)) for p in curve
    ]
    lines = re.findall(r'<polyline points="([^"]+)"[^>]*?( stroke-dasharray="6 4")?/>', svg)
    assert [(len(points.split()), bool(dashed)) for points, dashed in lines] == [
        (STEPS, False),
        (STEPS, True),
    ]
    text = readme(run)
    assert f"]({LOSS_CURVE_NAME})" in text
    assert "a falling curve means the sampled masks got better" in text


def test_card_search_cost_line(runs):
    """Catches a wrong or missing search cost: 6 steps x 2 masks = 12 masked passes over 6 batches
    of 4 x 32 tokens, one more pass for the Wanda-SP initialisation, the recorded wall time."""
    run = runs["heads,channels"]
    cost = Manifest.load(run).plan.search_cost
    assert cost["tokens_seen"] == STEPS * SAMPLES * SEQ_LEN
    assert (
        f"Search cost: {STEPS} optimisation steps, {K} masks per step: {STEPS * K} masked forward passes "
        f"over {STEPS * SAMPLES * SEQ_LEN} calibration tokens (+ 1 for the initialising metric) in "
        f"{cost['wall_s']:.1f} s; gradient normalisation `sqrt` (the estimate divided by √(s(1−s)), as in "
        "the released code).\n"
    ) in readme(run)
    assert "resumed" not in readme(run)


def test_card_says_a_resumed_run_timed_only_its_last_part(runs, tmp_path):
    """Catches a resumed run's wall time presented as the whole search's, a REINFORCE run named as
    the released code's normalisation, and a uniform start credited with metric passes."""
    raw = json.loads((runs["channels"] / "hubprune.json").read_text(encoding="utf-8"))
    raw["plan"]["search_cost"].update(resumed_from_step=4, normalisation="reinforce", init_forward_passes=0)
    folder = tmp_path / "resumed"
    folder.mkdir()
    (folder / "hubprune.json").write_text(json.dumps(raw), encoding="utf-8")
    text = card.render_card_text(folder)
    line = next(line for line in text.splitlines() if line.startswith("Search cost:"))
    assert "over 768 calibration tokens in " in line  # no "(+ 0 ...)" for the initialising metric
    assert line.endswith(
        "; gradient normalisation `reinforce` (the estimate divided by s(1−s), textbook REINFORCE). "
        "The run resumed from its checkpoint at step 4, so the time covers only the steps after it."
    )


def test_layer_map_shows_learned_widths_and_kept_blocks(runs):
    """Catches the layer map of a policy-gradient plan drawn from the wrong shape: per-block head
    and channel widths as the plan's shape has them, attention untouched by a channels-only run,
    and the one removed block crossed on a single row for a block run."""
    from hubprune.describe import block_widths

    for granularity in ("heads,channels", "channels"):
        run = runs[granularity]
        svg = (run / "layer_map.svg").read_text(encoding="utf-8")
        rows = block_widths(Manifest.load(run).plan.shape())
        for row in rows:
            channels = row["channels"]
            title = f"MLP {row['block']}: " + (
                "kept" if channels == "96/96" else f"{channels.split('/')[0]} of 96 channels kept"
            )
            assert f"<title>{title}</title>" in svg, title
        heads = [row["heads"] for row in rows]
        if granularity == "channels":
            assert heads == ["4/4"] * 4
            assert all(f"<title>attention {b}: kept</title>" in svg for b in range(4))
        else:
            assert "2/4" in heads  # one KV group of two query heads went somewhere
            narrowed = heads.index("2/4")
            assert f"<title>attention {narrowed}: 2 of 4 query heads kept (1 KV head)</title>" in svg
    svg = (runs["blocks"] / "layer_map.svg").read_text(encoding="utf-8")
    gone = Manifest.load(runs["blocks"]).plan.removed_blocks()
    assert len(gone) == 1 and f"<title>block {gone[0]}: removed</title>" in svg
    assert ">attention</text>" not in svg and svg.count("<path d=") == 1
    assert "Budget asked: **1 unit**." in readme(runs["blocks"])


def test_scored_head_groups_are_named_with_their_block(runs):
    """Catches the per-unit score list naming two KV groups of a block alike (`heads 0` twice)."""
    text = readme(runs["heads,channels"])
    for block in range(4):
        for group in range(2):
            assert f"| block {block} KV group {group} | " in text


def test_no_curve_no_picture_and_a_stale_one_is_removed(runs, tmp_path, capsys):
    """Catches a loss curve drawn, linked or left behind for a plan without a curve."""
    from tests.test_card import block_manifest, write_run

    assert curve_svg(block_manifest().plan) is None
    folder = write_run(tmp_path / "bi", block_manifest())
    (folder / LOSS_CURVE_NAME).write_text("<svg/>", encoding="utf-8")
    assert main(["card", str(folder)]) == 0
    assert not (folder / LOSS_CURVE_NAME).exists() and LOSS_CURVE_NAME not in readme(folder)
    assert LOSS_CURVE_NAME not in capsys.readouterr().out
    assert main(["card", str(runs["blocks"])]) == 0
    assert f"wrote {runs['blocks'] / LOSS_CURVE_NAME}" in capsys.readouterr().out
