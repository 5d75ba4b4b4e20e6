"""Width methods: Wanda-SP scores and the shared selection under budgets (hubprune.methods.width)."""

from __future__ import annotations

import pytest
import torch

from hubprune.arch import adapter_for
from hubprune.errors import BudgetError, RecipeError
from hubprune.methods import Budget, MethodContext
from hubprune.methods.wanda_sp import column_scores
from hubprune.methods.width import WidthParams, select_width
from hubprune.shape import Dims, Shape
from tests.tiny import tiny_model


def test_column_scores_are_weight_magnitude_times_input_norm() -> None:
    """|W| summed over rows, times the L2 norm of each input column, computed by hand."""
    weight = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    sq_sum = torch.tensor([4.0, 9.0])  # input norms 2 and 3
    assert column_scores(weight, sq_sum).tolist() == [(1 + 3) * 2, (2 + 0.5) * 3]


def _ctx(amount: float, by: str = "params") -> MethodContext:
    model = tiny_model("llama")
    return MethodContext(model, adapter_for(model), Budget(amount, by))


def _scores() -> dict[str, list[torch.Tensor]]:
    """Heads: block 0's group 1 is the least important; channels: evenly spread scores in every
    block (at different scales), except that block 2 has ten channels far below its others."""
    heads = [
        torch.tensor([5.0, 0.1]),
        torch.tensor([5.0, 5.0]),
        torch.tensor([4.0, 6.0]),
        torch.tensor([7.0, 8.0]),
    ]
    channels = [torch.arange(96, dtype=torch.float32) * (b + 1) + 1000 * b for b in range(4)]
    channels[2] = torch.cat([torch.zeros(10), 1000 + torch.arange(86, dtype=torch.float32)])
    return {"heads": heads, "channels": channels}


def test_global_selection_takes_the_lowest_scores_across_blocks() -> None:
    """Global: scores are compared within their block (z-scores, so a block's scale does not
    matter): block 2's outlier channels go first and nothing else of it, the others lose their
    lowest channels alike; the least important KV group goes; the parameters reach the budget."""
    ctx = _ctx(0.05)
    units = select_width(ctx, _scores(), WidthParams(scope="global"))
    by_block = {(u.kind, u.block): u.indices for u in units}
    assert by_block[("heads", 0)] == (1,)
    assert by_block[("channels", 2)] == tuple(range(10))
    others = [by_block[("channels", b)] for b in (0, 1, 3)]
    assert all(o[:3] == (0, 1, 2) for o in others) and max(map(len, others)) - min(map(len, others)) <= 1
    shape = Shape.from_units(units, Dims.from_config(ctx.model.config))
    from hubprune.cost import budget_reached

    assert budget_reached(ctx.model, ctx.adapter, shape)["params_total"]["removed_fraction"] >= 0.05


def test_uniform_selection_removes_the_same_width_everywhere_rounded_to_multiple_of() -> None:
    """Uniform with multiple_of=8: every block keeps the same MLP width, a multiple of 8."""
    ctx = _ctx(0.2, "units")
    units = select_width(ctx, _scores(), WidthParams(scope="uniform", units="channels", multiple_of=8))
    kept = {96 - len(u.indices) for u in units if u.kind == "channels"}
    assert len(kept) == 1 and kept.pop() % 8 == 0
    assert {u.block for u in units} == {0, 1, 2, 3}
    assert all(u.kind == "channels" for u in units)


def test_kv_budget_prunes_heads_only_and_needs_them() -> None:
    """A KV-cache budget leaves channels alone, and without heads it is refused in one sentence."""
    units = select_width(_ctx(0.25, "kv"), _scores(), WidthParams())
    assert units and all(u.kind == "heads" for u in units)
    with pytest.raises(BudgetError, match="cannot reduce the KV cache; prune heads too"):
        select_width(_ctx(0.25, "kv"), _scores(), WidthParams(units="channels"))


def test_bad_width_settings_are_refused() -> None:
    """multiple_of larger than the width, an impossible budget, unknown scope/units."""
    with pytest.raises(BudgetError, match="multiple_of=128 is larger than the MLP width"):
        select_width(_ctx(0.1), _scores(), WidthParams(multiple_of=128))
    with pytest.raises(BudgetError, match="narrower than the minimum widths"):
        select_width(_ctx(0.9), _scores(), WidthParams())
    with pytest.raises(RecipeError, match="scope must be one of global, uniform"):
        WidthParams(scope="per-layer")
    with pytest.raises(RecipeError, match="units must be heads, channels"):
        WidthParams(units="neurons")
