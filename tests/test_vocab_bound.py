"""Lower bounds of a divergence from part of the vocabulary (FinerCut's early abandoning)."""

from __future__ import annotations

import pytest
import torch

from hubprune.methods.finercut import js_official, js_textbook, kl_divergence
from hubprune.methods.vocab_bound import lower_bound, vocab_subset

EXACT = {"js-official": js_official, "js": js_textbook, "kl": kl_divergence}


def _pair(tokens: int = 12, vocab: int = 60, spread: float = 0.7, seed: int = 0):
    """Dense log-probs and a perturbed model's logits, float64, over a small vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(1, tokens, vocab, generator=gen, dtype=torch.float64) * 3
    other = dense[0] + torch.randn(tokens, vocab, generator=gen, dtype=torch.float64) * spread
    return torch.log_softmax(dense, dim=-1), other


@pytest.mark.parametrize("name", list(EXACT))
@pytest.mark.parametrize("top", [1, 2, 5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_bound_never_exceeds_the_divergence(name, top, seed):
    """Would catch a bound that is not one (the rest's mass dropped, p and q swapped, a minimum
    over the mass q(S) taken at the wrong end): the search would then drop the argmin."""
    ref, logits = _pair(seed=seed, spread=0.3 + seed)
    exact = EXACT[name](ref[0], torch.log_softmax(logits, dim=-1))
    ids, inside, outside = vocab_subset(ref, torch.ones(1, 12), top)
    assert ids.shape[0] < 60 and torch.equal(ids, ids.sort().values)
    bound = lower_bound(name, inside, outside, logits[:, ids])
    assert bool((bound >= 0).all())
    assert bool((bound <= exact * (1 + 1e-9) + 1e-12).all())


@pytest.mark.parametrize("name", list(EXACT))
def test_bound_tightens_to_the_divergence(name):
    """Would catch a bound of 0 (true, useless) or one that ignores what the subset shows: with the
    whole vocabulary it is the divergence (the Jensen-Shannon forms up to their ratio bins), and
    with the 3 likeliest tokens of each position (27 of 60 in all) it is most of it."""
    ref, logits = _pair()
    exact = EXACT[name](ref[0], torch.log_softmax(logits, dim=-1))
    ids, inside, outside = vocab_subset(ref, torch.ones(1, 12), 60)
    assert ids.shape[0] == 60 and bool(torch.isinf(outside).all())
    assert torch.allclose(lower_bound(name, inside, outside, logits), exact, rtol=3e-3)
    ids, inside, outside = vocab_subset(ref, torch.ones(1, 12), 3)
    bound = lower_bound(name, inside, outside, logits[:, ids])
    assert float(bound.sum()) > 0.75 * float(exact.sum())


def test_subset_covers_each_scored_position():
    """Would catch a subset taken from one position only, or from positions the mask leaves out."""
    ref, _ = _pair(tokens=6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    ids, inside, outside = vocab_subset(ref, mask, 2)
    for t in range(5):
        assert set(ref[0, t].topk(2).indices.tolist()) <= set(ids.tolist())
    assert inside.shape == (5, ids.shape[0]) and outside.shape == (5,)
    rest = torch.tensor([i not in set(ids.tolist()) for i in range(60)])
    assert torch.allclose(outside, torch.logsumexp(ref[0, :5][:, rest], dim=-1))
