"""Block metrics on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from hubprune.methods.metrics import angular_distance, block_influence, cosine, masked_mean


def test_block_influence_hand_values():
    h_in = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    h_out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    # same direction -> 0, orthogonal -> 1, opposite -> 2
    torch.testing.assert_close(block_influence(h_in, h_out), torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(cosine(h_in, h_out), torch.tensor([1.0, 0.0, -1.0]))


def test_angular_distance_hand_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    torch.testing.assert_close(angular_distance(a, b), torch.tensor([0.0, 0.5, 0.25]), atol=1e-3, rtol=0)


def test_masked_mean_excludes_padding():
    values = torch.tensor([[1.0, 2.0, 100.0]])
    total, count = masked_mean(values, torch.tensor([[1, 1, 0]]))
    assert (total, count) == (3.0, 2)


def test_angular_distance_is_bounded():
    a, b = torch.randn(50, 8), torch.randn(50, 8)
    d = angular_distance(a, b)
    assert (d >= 0).all() and (d <= 1).all()
    assert math.isclose(float(angular_distance(a, -a).mean()), 1.0, abs_tol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_metrics_compute_in_fp32(dtype):
    a = torch.randn(4, 16).to(dtype)
    assert block_influence(a, a).dtype == torch.float32


def test_perplexity_method_scores_are_the_perplexity_without_that_block(tmp_path):
    """Would catch: a `perplexity` block score that ignores the removed block (the same number for
    every block, or the full model's perplexity), or one measured on the wrong block."""
    import copy

    from hubprune.arch import adapter_for
    from hubprune.data import build_calibration, load_texts
    from hubprune.evaluation.perplexity import perplexity
    from hubprune.methods import MethodContext, get_method
    from hubprune.plan import Plan, Unit
    from hubprune.surgery import apply_plan
    from tests.tiny import SAMPLE_TEXT, char_tokenizer, tiny_model

    (tmp_path / "t.txt").write_text(SAMPLE_TEXT)
    calibration = build_calibration(
        char_tokenizer(), load_texts(str(tmp_path / "t.txt")), samples=6, seq_len=32, seed=0
    )
    model = tiny_model("llama", num_layers=4)
    spec = get_method("perplexity")
    ctx = MethodContext(model, adapter_for(model), None, calibration, seed=0, batch_size=4)
    scores = [s["score"] for s in spec.plan_fn(ctx, spec.make_params()).scores]
    full = perplexity(model, calibration.batches(4))
    for block, score in enumerate(scores):
        pruned = copy.deepcopy(model)
        apply_plan(pruned, adapter_for(pruned), Plan("manual", "block", [Unit("block", block)]))
        assert score == pytest.approx(perplexity(pruned, calibration.batches(4)), rel=1e-5)
    assert len(set(scores)) == len(scores) and full not in scores
