"""Lower bounds of a divergence from part of the vocabulary, for FinerCut's early abandoning.

Scoring a candidate exactly needs every logit: the output layer, a (vocabulary × hidden) product
per token, which on a small model is a fifth of a forward pass. To rule a candidate out, a lower
bound of its divergence is enough, and one comes from the logits of a few tokens only.

Given the dense distribution p (known in full) and the candidate's logits z_S on a subset S of
the vocabulary, the candidate's distribution q is known on S up to one number, the mass q(S) =
λ: q_i = λ·softmax(z_S)_i for i in S, and 1 − λ on the rest. Merging outcomes never increases an
f-divergence (the data-processing inequality; KL, the textbook Jensen–Shannon divergence and the
official code's variant 0.5·[KL(m‖p) + KL(m‖q)] are all f-divergences), so for the partition
{S's tokens, grouped} ∪ {the rest},

    D(p‖q) ≥ D(p̄‖q̄_λ) ≥ min over λ in [0, 1] of D(p̄‖q̄_λ),

which needs nothing of q outside S. For KL the minimum has a closed form (λ = p(S)); for the
Jensen–Shannon forms, whose value is convex in λ, it is found by golden-section search. S's
tokens are grouped by their likelihood ratio q/p (tokens of equal ratio merge without loss), so
the search runs on a few hundred numbers per token whatever the size of S.
"""

from __future__ import annotations

import math

import torch

BOUNDED = ("js-official", "js", "kl")
# Ratio bins for the Jensen-Shannon forms: log(q_i/p_i) (both conditioned on S) in [-SPAN, SPAN].
BINS, SPAN = 256, 16.0
GOLDEN_STEPS = 60


def vocab_subset(
    ref_logp: torch.Tensor, mask: torch.Tensor, top: int, extra: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one chunk (`ref_logp`: rows × positions × vocabulary dense log-probs; `mask`: positions
    scored): the tokens (sorted ids) among the `top` most likely at any scored position, and
    `extra` ones (e.g. those the current pruned model finds likeliest); the dense log-probs there
    (scored tokens × subset), and the log of the dense mass outside the subset (-inf where the
    subset is the whole vocabulary)."""
    scored = ref_logp[mask.bool()]
    ids = scored.topk(min(top, scored.shape[-1]), dim=-1).indices.flatten()
    ids = torch.unique(ids if extra is None else torch.cat([ids, extra.flatten().to(ids.device)]))
    rest = torch.ones(scored.shape[-1], dtype=torch.bool, device=scored.device)
    rest[ids] = False
    outside = (
        torch.logsumexp(scored[:, rest], dim=-1)
        if bool(rest.any())
        else scored.new_full(scored.shape[:1], -math.inf)
    )
    return ids, scored[:, ids], outside


def _xlogx_over(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a·log(a/b) elementwise, 0 where a = 0."""
    safe = a > 0
    return torch.where(safe, a * (torch.log(a.where(safe, 1.0)) - torch.log(b.where(safe, 1.0))), 0.0)


def _divergence(name: str, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The per-row divergence between probability vectors (last dimension)."""
    if name == "kl":
        return _xlogx_over(p, q).sum(-1)
    m = (p + q) / 2
    if name == "js":
        return 0.5 * (_xlogx_over(p, m).sum(-1) + _xlogx_over(q, m).sum(-1))
    return 0.5 * (_xlogx_over(m, p).sum(-1) + _xlogx_over(m, q).sum(-1))


def lower_bound(
    name: str, ref_logp: torch.Tensor, outside_logp: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    """A lower bound, per token, of divergence `name` between the dense distribution and the
    candidate's, from the dense log-probs `ref_logp` and the candidate's logits `logits` on the
    same subset S of the vocabulary (tokens × |S| each) and the dense log-mass outside S
    (`outside_logp`, one per token). float64; exact when S is the vocabulary (then q(S) = 1), up
    to the golden-section search's tolerance (about 1e-12 of the interval) and rounding."""
    logp = ref_logp.double()
    logq = torch.log_softmax(logits.double(), dim=-1)  # q conditioned on S
    p = logp.exp()
    outside = outside_logp.double().exp().unsqueeze(-1)
    inside = p.sum(-1, keepdim=True)
    if name == "kl":  # minimum at λ = p(S): p(S)·KL(p|S ‖ q|S), plus nothing from the rest
        return (p * (logp - inside.log() - logq)).sum(-1).clamp_min(0.0)
    ratio = logq - (logp - inside.log())
    bins = ((ratio + SPAN) * (BINS / (2 * SPAN))).floor().clamp(0, BINS - 1).long()
    p_bins = torch.zeros(*p.shape[:-1], BINS, dtype=torch.float64).scatter_add_(-1, bins, p)
    q_bins = torch.zeros_like(p_bins).scatter_add_(-1, bins, logq.exp())
    p_merged = torch.cat([p_bins, outside], dim=-1)

    def at(mass: torch.Tensor) -> torch.Tensor:
        return _divergence(name, p_merged, torch.cat([mass * q_bins, 1.0 - mass], dim=-1))

    lo, hi = torch.zeros_like(inside), torch.ones_like(inside)
    lo = torch.where(outside > 0, lo, hi)  # S is the whole vocabulary: q(S) = 1, nothing to search
    shrink = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(GOLDEN_STEPS):
        a, b = hi - shrink * (hi - lo), lo + shrink * (hi - lo)
        left = (at(a) > at(b)).unsqueeze(-1)  # the minimum lies in [a, hi]
        lo, hi = torch.where(left, a, lo), torch.where(left, hi, b)
    return at((lo + hi) / 2).clamp_min(0.0)
