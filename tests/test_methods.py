"""Block methods on tiny models: each scores every block and honours the budget."""

from __future__ import annotations

import pytest
import torch

from hubprune.arch import adapter_for
from hubprune.data import build_calibration, load_texts
from hubprune.errors import BudgetError, RecipeError
from hubprune.methods import Budget, MethodContext, get_method, parse_amount
from hubprune.methods.metrics import block_influence
from hubprune.plan import Plan
from hubprune.size import block_params, unique_params
from tests.tiny import SAMPLE_TEXT, char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "t.txt"
    path.write_text(SAMPLE_TEXT)
    return build_calibration(char_tokenizer(), load_texts(str(path)), samples=6, seq_len=32, seed=0)


def run(method, model, budget, calibration, seed=0) -> Plan:
    spec = get_method(method)
    ctx = MethodContext(
        model,
        adapter_for(model),
        budget,
        calibration if spec.needs_calibration else None,
        seed=seed,
        batch_size=4,
    )
    return spec.plan_fn(ctx, spec.make_params())


@pytest.mark.parametrize("method", ["reverse-order", "block-influence", "angular", "perplexity", "random"])
def test_every_method_scores_every_block(method, calibration):
    model = tiny_model("llama", num_layers=6)
    plan = run(method, model, Budget(2), calibration)
    assert len(plan.scores) == 6 and sorted(s["rank"] for s in plan.scores) == list(range(6))
    assert len(plan.removed) == 2 and plan.budget["reached"]["units_removed"] == 2
    ranked = sorted(plan.scores, key=lambda s: s["rank"])
    start = ranked[0]["unit"].block  # angular removes the run of 2 starting at its best block
    first = [start, start + 1] if method == "angular" else sorted(s["unit"].block for s in ranked[:2])
    assert plan.removed_blocks() == first, "the blocks removed are the ones the method ranked first"
    assert (plan.calibration is not None) == get_method(method).needs_calibration
    assert Plan.from_dict(plan.to_dict()) == plan


def test_reverse_order_removes_the_last_blocks():
    plan = run("reverse-order", tiny_model("llama", num_layers=6), Budget(0.5), None)
    assert plan.removed_blocks() == [3, 4, 5]


def test_block_influence_matches_a_direct_computation(calibration):
    """Would catch: hooks capturing the wrong tensors, or padding/averaging mistakes."""
    model = tiny_model("gemma2", num_layers=4)
    plan = run("block-influence", model, Budget(1), calibration)
    with torch.no_grad():
        out = model(calibration.input_ids, output_hidden_states=True, use_cache=False)
    # hidden_states[i] is the input of block i for i < L (the last entry is after the final norm).
    states = list(out.hidden_states[:-1])
    blocks = adapter_for(model).blocks(model)
    captured = []
    hook = blocks[-1].register_forward_hook(
        lambda _m, _a, o: captured.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        model(calibration.input_ids, use_cache=False)
    hook.remove()
    states.append(captured[0])
    direct = [float(block_influence(states[i], states[i + 1]).mean()) for i in range(4)]
    assert [s["score"] for s in plan.scores] == pytest.approx(direct, rel=1e-4)
    assert plan.removed_blocks() == [min(range(4), key=direct.__getitem__)]


def test_angular_removes_a_contiguous_run(calibration):
    plan = run("angular", tiny_model("qwen3", num_layers=6), Budget(3), calibration)
    blocks = plan.removed_blocks()
    assert blocks == list(range(blocks[0], blocks[0] + 3))
    start_scores = [s["score"] for s in plan.scores][:4]
    assert blocks[0] == min(range(4), key=start_scores.__getitem__)


def test_random_is_seeded():
    model = tiny_model("llama", num_layers=8)
    a = run("random", model, Budget(3), None, seed=1).removed_blocks()
    assert a == run("random", model, Budget(3), None, seed=1).removed_blocks()
    assert any(run("random", model, Budget(3), None, seed=s).removed_blocks() != a for s in range(2, 6))


def test_parameter_budget_removes_enough_parameters():
    model = tiny_model("llama", num_layers=8)
    plan = run("reverse-order", model, Budget(0.3, by="params"), None)
    reached = plan.budget["reached"]
    per_block = block_params(model, adapter_for(model))[0]
    assert reached["params_fraction"] >= 0.3
    assert reached["params_removed"] - per_block < 0.3 * unique_params([model]), (
        "removed more blocks than needed"
    )


@pytest.mark.parametrize(
    ("amount", "error"),
    [("0", BudgetError), ("-2", BudgetError), ("1.5", BudgetError), ("many", RecipeError)],
)
def test_bad_amounts(amount, error):
    with pytest.raises(error):
        parse_amount(amount)


@pytest.mark.parametrize("amount", [8, 12, 0.99, 0.01])
def test_budget_refuses_none_or_all(amount):
    with pytest.raises(BudgetError):
        Budget(amount).unit_count(8)


def test_unknown_method_lists_choices():
    with pytest.raises(RecipeError, match="did you mean 'block-influence'.*choose from: angular"):
        get_method("block-influense")


def test_unknown_method_parameter():
    with pytest.raises(RecipeError, match="has no parameter 'depth'"):
        get_method("block-influence").make_params({"depth": 3})


def test_every_budget_kind_is_offered_by_the_cli_and_recipes() -> None:
    """The CLI choices and the recipe schema list exactly the budget kinds Budget accepts."""
    import typing

    from hubprune.cli import build_parser
    from hubprune.methods.budget import BUDGET_KINDS
    from hubprune.recipe import PruneSection

    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["prune"]._actions
                  if a.dest == "budget_by")  # fmt: skip
    assert tuple(action.choices) == BUDGET_KINDS
    assert typing.get_args(PruneSection.model_fields["budget_by"].annotation) == BUDGET_KINDS


def test_a_budget_kind_a_method_does_not_support_is_refused() -> None:
    """A method declaring fewer budget kinds refuses the others in one sentence naming its kinds
    (checked before any weights load)."""
    import dataclasses

    from hubprune.errors import BudgetError
    from hubprune.methods import Budget, get_method

    spec = dataclasses.replace(get_method("reverse-order"), budget_kinds=("units", "params"))
    with pytest.raises(BudgetError, match="cannot budget by kv; it supports --budget-by units, params"):
        spec.check_budget(Budget.parse("0.2", "kv"))
    spec.check_budget(Budget.parse("0.2", "params"))
