"""SliceGPT and dynamic slicing: the bases, the per-block widths, and the refusals.

The exported sliced model is tested in tests/test_slicing_export.py; here the truth is the dense
model run with its stream projected onto each basis (:func:`hubprune.rotation.projected`).
"""

from __future__ import annotations

import pytest
import torch

from hubprune.arch import adapter_for
from hubprune.data import CalibrationBatch
from hubprune.errors import BudgetError, RecipeError, UnsupportedArchitectureError
from hubprune.methods import Budget, MethodContext, get_method
from hubprune.methods.slicing import dynamic_fractions, widths_for
from hubprune.plan import Calibration
from hubprune.rotation import Bases, principal_basis, projected
from tests.tiny import tiny_model

ROTATABLE = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def _batch(rows: int = 8, seq: int = 24, seed: int = 0) -> CalibrationBatch:
    ids = torch.randint(4, 100, (rows, seq), generator=torch.Generator().manual_seed(seed))
    info = Calibration("test", "file", rows, seq, seed, "0" * 64, rows * seq, False)
    return CalibrationBatch(ids, torch.ones_like(ids), info)


def _plan(model, method: str = "slicegpt", amount: float | None = None, **params):
    spec = get_method(method)
    budget = Budget(amount) if amount else None
    ctx = MethodContext(model, adapter_for(model), budget, _batch(), batch_size=4)
    return spec.plan_fn(ctx, spec.make_params(params))


def _bases(plan) -> Bases:
    return Bases.from_tensors(plan.tensors, len(plan.removed) - 1)


def _ids() -> torch.Tensor:
    return torch.randint(4, 100, (2, 20), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("family", ROTATABLE)
def test_rotation_alone_changes_nothing_and_slicing_does(family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    with torch.no_grad():
        dense = model(_ids()).logits
        full = _bases(_plan(model))
        assert full.widths == [64] * 4 and full.final_width == 64
        with projected(model, adapter, full):
            torch.testing.assert_close(model(_ids()).logits, dense, atol=1e-4, rtol=0)
        sliced = _bases(_plan(model, amount=0.25))
        assert sliced.widths == [48] * 4 and sliced.final_width == 64  # lm_head keeps its width
        with projected(model, adapter, sliced):
            assert (model(_ids()).logits - dense).abs().max() > 1e-2
        assert torch.equal(model(_ids()).logits, dense)  # the model itself was never touched


def test_bases_are_orthonormal_principal_directions() -> None:
    plan = _plan(tiny_model("llama"), amount=0.25)
    for q in (*_bases(plan).inputs, *_bases(plan).mids):
        torch.testing.assert_close(q.T @ q, torch.eye(q.shape[1]), atol=1e-5, rtol=0)
    # The kept share of the second moment is reported per point, and slicing keeps most of it.
    shares = [s["kept_second_moment"]["input"] for s in plan.scores]
    assert all(0.5 < s <= 1.0 + 1e-9 for s in shares)
    assert shares[-1] == pytest.approx(1.0)  # the final norm keeps its full width


def test_principal_basis_orders_directions_by_variance() -> None:
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * torch.tensor([1.0, 10.0, 3.0], dtype=torch.float64)
    values, vectors = principal_basis(x.T @ x)
    assert values[0] > values[1] > values[2]
    assert vectors[:, 0].abs().argmax() == 1 and vectors[:, 1].abs().argmax() == 2


def test_dynamic_fractions_follow_redundancy_and_keep_the_mean() -> None:
    redundancy = [0.2, 0.9, 0.5, 0.7]
    fractions, norm = dynamic_fractions(redundancy, 0.3, 0.1)
    assert sum(fractions) / 4 == pytest.approx(0.3)
    assert norm[0] == 0 and norm[1] == 1
    assert fractions.index(max(fractions)) == 1 and fractions[0] == pytest.approx(0.1)
    assert dynamic_fractions(redundancy, 0.3, 0.3)[0] == pytest.approx([0.3] * 4)
    with pytest.raises(BudgetError, match="SB must be at most SP"):
        dynamic_fractions(redundancy, 0.2, 0.3)


def test_widths_are_rounded_clipped_and_keep_the_mean_slice() -> None:
    widths = widths_for([0.1, 0.5, 0.9, 0.1], 576, 8, 8, 0.4)
    assert all(w % 8 == 0 and 8 <= w <= 576 for w in widths)
    assert sum(widths) == pytest.approx(4 * 576 * 0.6, abs=8)
    assert widths[2] < widths[1] < widths[0]
    # A block asked to give more than all of itself is clipped, and the others give it instead.
    clipped = widths_for([1.4, 0.2, 0.2, 0.2], 64, 8, 16, 0.5)
    assert clipped[0] == 16 and sum(clipped) == 128
    with pytest.raises(BudgetError, match="below min_width=64"):
        widths_for([0.5] * 4, 576, 8, 64, 0.95)


def test_dynamic_slicing_gives_blocks_different_widths() -> None:
    model = tiny_model("llama")
    plan = _plan(model, "dynamic-slicing", amount=0.3, base=0.05)
    widths = _bases(plan).widths
    assert len(set(widths)) > 1
    assert plan.budget["reached"]["mean_slice"] == pytest.approx(0.3, abs=8 / 64)
    redundancy = [s["layer_redundancy"] for s in plan.scores[:-1]]
    # The most redundant block is sliced the most.
    assert widths[redundancy.index(max(redundancy))] == min(widths)
    assert [u.kind for u in plan.removed] == ["width"] * 5


def test_gemma_is_refused_with_the_reason() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="sandwich norms"):
        _plan(tiny_model("gemma2"), amount=0.2)


@pytest.mark.parametrize(
    ("amount", "params", "error", "match"),
    [
        (3, {}, BudgetError, "fraction of the hidden width"),
        (None, {"min_width": 100}, BudgetError, "larger than the hidden size"),
        (0.9, {"min_width": 32}, BudgetError, "below min_width=32"),
        (0.2, {"multiple_of": 0}, RecipeError, "multiple_of"),
    ],
)
def test_bad_slicing_settings_are_refused(amount, params, error, match) -> None:
    model = tiny_model("llama")
    spec = get_method("slicegpt")
    with pytest.raises(error, match=match):
        budget = Budget(amount) if amount else None
        spec.plan_fn(MethodContext(model, adapter_for(model), budget, _batch()), spec.make_params(params))


def test_dynamic_slicing_refuses_a_base_above_the_target_before_any_pass() -> None:
    spec = get_method("dynamic-slicing")
    with pytest.raises(BudgetError, match="SB must be at most SP"):
        spec.plan_fn(
            MethodContext(tiny_model("llama"), adapter_for(tiny_model("llama")), Budget(0.2), None),
            spec.make_params({"base": 0.3}),
        )
    with pytest.raises(RecipeError, match=r"base \(SB\)"):
        spec.make_params({"base": 1.5})
