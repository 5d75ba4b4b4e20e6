"""Policy-gradient search: the estimator, projection and resumable state alone (no LLM), and the
method's parameter checks (hubprune.methods.policy, hubprune.methods.policy_gradient)."""

from __future__ import annotations

import pytest
import torch

from hubprune.errors import RecipeError
from hubprune.methods import get_method
from hubprune.methods.policy import PolicySearch, Pool, project_to_budget, score_function_gradient

# A toy objective whose best mask is known: the loss falls by w_j for every kept unit j, so under
# a budget of 4 kept units the best mask keeps the 4 largest weights.
WEIGHTS = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.7, 0.2, 1.0, 0.3, 0.15, 0.6, 0.25, 0.4], dtype=torch.float64)
BEST = set(torch.topk(WEIGHTS, 4).indices.tolist())


def toy_loss(masks: dict[str, torch.Tensor], step: int) -> torch.Tensor:
    return -(masks["units"].double() * WEIGHTS).sum(1)


def poor_start() -> torch.Tensor:
    """The least important units start the most probable: the initial top 4 is the worst 4."""
    return 1 - WEIGHTS.argsort().argsort().double() / (len(WEIGHTS) - 1)


def test_projection_holds_the_budget_within_the_bounds_and_keeps_the_order() -> None:
    probs = torch.tensor([2.0, 0.9, 0.5, -0.3, 0.45, 0.1], dtype=torch.float64)
    projected = project_to_budget(probs, 2.5, floor=0.05)
    assert float(projected.sum()) == pytest.approx(2.5, abs=1e-9)
    assert float(projected.min()) >= 0.05 - 1e-12 and float(projected.max()) <= 0.95 + 1e-12
    assert projected.argsort().tolist() == probs.argsort().tolist()
    inside = (projected > 0.05 + 1e-9) & (projected < 0.95 - 1e-9)
    shifts = (probs - projected)[inside]
    assert inside.sum() >= 2 and torch.allclose(shifts, shifts[0].expand_as(shifts))  # one shift v


def test_gradient_matches_the_formula_for_both_normalisations() -> None:
    probs = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    masks = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    losses = torch.tensor([3.0, 2.0, 4.0])
    baseline = 2.5
    expected = torch.zeros(3, dtype=torch.float64)
    for k in range(3):
        expected += (losses[k].item() - baseline) * (masks[k].double() - probs) / 2  # 1 / (K - 1)
    variance = probs * (1 - probs)
    got_sqrt = score_function_gradient(probs, masks, losses, baseline, "sqrt")
    got_reinforce = score_function_gradient(probs, masks, losses, baseline, "reinforce")
    assert torch.allclose(got_sqrt, expected / variance.sqrt())
    assert torch.allclose(got_reinforce, expected / variance)


@pytest.mark.parametrize(
    ("normalisation", "lr", "momentum"),
    [("sqrt", 0.05, 0.9), ("reinforce", 0.03, 0.0)],
)
def test_the_search_finds_the_best_mask_from_a_poor_start(
    normalisation: str, lr: float, momentum: float
) -> None:
    """From a start whose top 4 is the worst 4, the probabilities end with the best 4 on top, for
    several seeds (the search is noisy by design)."""
    for seed in range(3):
        pool = Pool(poor_start(), keep=4.0, lr=lr, floor=0.05)
        assert set(torch.topk(pool.probs, 4).indices.tolist()).isdisjoint(BEST)
        search = PolicySearch(
            {"units": pool}, steps=1000, samples=2, normalisation=normalisation, momentum=momentum, seed=seed
        )
        search.run(toy_loss)
        assert set(torch.topk(search.pools["units"].probs, 4).indices.tolist()) == BEST
        assert float(search.pools["units"].probs.sum()) == pytest.approx(4.0, abs=1e-6)
        first, last = search.curve[0]["loss"], sum(p["loss"] for p in search.curve[-20:]) / 20
        assert last < first


def test_without_a_floor_a_unit_at_zero_never_comes_back() -> None:
    """Why the floor exists: a probability projected to 0 draws 0 forever, so its gradient is 0."""
    search = PolicySearch({"units": Pool(poor_start(), keep=4.0, lr=0.05)}, steps=300, seed=0)
    stuck = search.pools["units"].probs == 0
    assert stuck.any()
    search.run(toy_loss)
    assert (search.pools["units"].probs[stuck] == 0).all()


class _Memory:
    """A checkpoint kept in memory that stops the run after it saves step `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.state: dict | None = None
        self.stop_at = stop_at

    def load(self) -> dict | None:
        return self.state

    def save(self, state: dict) -> None:
        self.state = state


def _search(seed: int = 0) -> PolicySearch:
    return PolicySearch({"units": Pool(poor_start(), keep=4.0, lr=0.05, floor=0.05)}, steps=60, seed=seed)


def test_a_stopped_search_resumes_exactly_where_it_stopped() -> None:
    whole = _search()
    whole.run(toy_loss)

    store = _Memory()

    def stop(step: int) -> None:
        if step == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _search().run(toy_loss, checkpoint=store, checkpoint_every=10, after_checkpoint=stop)
    assert store.state is not None and store.state["step"] == 30
    resumed = _search()
    resumed.run(toy_loss, checkpoint=store, checkpoint_every=10)
    assert resumed.resumed_from == 30
    assert torch.equal(resumed.pools["units"].probs, whole.pools["units"].probs)
    assert resumed.curve == whole.curve


def test_the_same_seed_gives_the_same_search_and_another_seed_another() -> None:
    a, b, c = _search(0), _search(0), _search(1)
    for search in (a, b, c):
        search.run(toy_loss)
    assert torch.equal(a.pools["units"].probs, b.pools["units"].probs)
    assert not torch.equal(a.pools["units"].probs, c.pools["units"].probs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"granularity": "neurons"}, "granularity must be one of"),
        ({"k": 1}, "k (masks per step) must be a whole number >= 2"),
        ({"lr": 0}, "lr must be a learning rate above 0"),
        ({"lr": -0.1}, "lr must be a learning rate above 0"),
        ({"lr_heads": 0.0}, "lr_heads must be a learning rate above 0"),
        ({"normalisation": "l2"}, "normalisation must be one of"),
        ({"steps": 0}, "steps must be a whole number >= 1"),
        ({"min_prob": 0.5}, "min_prob must be in [0, 0.5)"),
        ({"granularity": "channels", "multiple_of": 0}, "multiple_of must be a whole number >= 1"),
    ],
)
def test_bad_parameters_are_refused_with_a_sentence(values: dict, message: str) -> None:
    with pytest.raises(
        RecipeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        get_method("policy-gradient").make_params(values)
