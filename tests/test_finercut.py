"""FinerCut: divergences, naive vs cached search, budgets, protection, plan contents, errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hubprune.arch import adapter_for
from hubprune.data import TextSource, build_calibration
from hubprune.errors import BudgetError, RecipeError
from hubprune.methods import Budget, MethodContext, get_method
from hubprune.methods.finercut import (
    FinerCutParams,
    _Engine,
    angular_logits,
    finercut_search,
    js_official,
    js_textbook,
    kl_divergence,
)
from hubprune.plan import Plan, Unit
from hubprune.sublayers import sublayers_skipped
from tests.tiny import FAMILIES, SAMPLE_TEXT, char_tokenizer, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spend most of their time waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _calibration(samples: int = 4, seq_len: int = 16, seed: int = 0):
    source = TextSource("sample", "file", texts=[SAMPLE_TEXT])
    return build_calibration(char_tokenizer(), source, samples=samples, seq_len=seq_len, seed=seed)


# -- divergences, by hand -----------------------------------------------------------------------

P = torch.tensor([0.5, 0.5])
Q = torch.tensor([0.9, 0.1])
M = (P + Q) / 2


def _kl(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(sum(x * math.log(x / y) for x, y in zip(a.tolist(), b.tolist(), strict=True)))


def test_divergences_match_hand_computation():
    """Would catch the official JS variant computed as the textbook one (or KL reversed)."""
    lp, lq = P.log(), Q.log()
    assert float(js_official(lp, lq)) == pytest.approx(0.5 * _kl(M, P) + 0.5 * _kl(M, Q), rel=1e-5)
    assert float(js_textbook(lp, lq)) == pytest.approx(0.5 * _kl(P, M) + 0.5 * _kl(Q, M), rel=1e-5)
    assert float(js_official(lp, lq)) != pytest.approx(float(js_textbook(lp, lq)), rel=1e-3)
    assert float(kl_divergence(lp, lq)) == pytest.approx(_kl(P, Q), rel=1e-5)
    assert float(js_official(lp, lp)) == pytest.approx(0.0, abs=1e-7)
    z1, z2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert float(angular_logits(z1, z2)) == pytest.approx(0.25, rel=1e-5)  # 45 degrees / 180


# -- the search ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, reuse_mb, samples",
    [(family, 1024, 4) for family in FAMILIES] + [("llama", 0, 4), ("qwen2", 1, 16)],
)
def test_cached_search_equals_naive(family, reuse_mb, samples):
    """Would catch a cached engine that resumes from a stale state (wrong order or scores), or a
    bound that drops a candidate which could still be the minimum, or reports a bound above its
    score.

    1024 MB keeps every boundary of these tiny models; 1 MB with 16 sequences only a few
    speculated ones (every boundary would take 1.9 MB); 0 none."""
    model = tiny_model(family, num_layers=6)
    adapter = adapter_for(model)
    batch = _calibration(samples=samples)
    results = {}
    for name, engine, bound, vocab in (
        ("naive", "naive", "on", 64),
        ("full", "cached", "off", 64),
        ("bounded", "cached", "on", 0),  # bounds from full logits only
        ("subset", "cached", "on", 4),  # ... and from the 4 likeliest tokens of each position first
    ):
        params = FinerCutParams(engine=engine, reuse_budget_mb=reuse_mb, bound=bound, bound_vocab=vocab)
        results[name] = finercut_search(
            model, adapter, batch, params, lambda removed: len(removed) >= 6, batch_size=2, progress=False
        )
    naive, full = results["naive"], results["full"]
    assert naive.order == full.order == results["bounded"].order == results["subset"].order
    assert naive.stats["bound"] == full.stats["bound"] == "off"
    for step, (a, b) in enumerate(zip(naive.step_scores, full.step_scores, strict=True)):
        assert a.keys() == b.keys()
        for unit in a:
            assert b[unit] == pytest.approx(a[unit], rel=1e-5, abs=1e-9)
        for bounded in (results["bounded"], results["subset"]):
            exact, dropped = bounded.step_scores[step], bounded.step_bounds[step]
            assert exact.keys() | dropped.keys() == a.keys() and not exact.keys() & dropped.keys()
            for unit, value in exact.items():
                assert value == pytest.approx(a[unit], rel=1e-5, abs=1e-9)
            for unit, (bound, tokens) in dropped.items():
                assert bounded.step_divergence[step] < bound <= a[unit] * (1 + 1e-5)
                assert 0 < tokens <= bounded.stats["calibration_tokens"]
    assert full.stats["forward_flops"] < naive.stats["forward_flops"] / (1.5 if reuse_mb else 1.2)
    assert naive.stats["full_forward_calls"] > full.stats["full_forward_calls"]
    for bounded in (results["bounded"], results["subset"]):
        assert bounded.stats["bound"] == "on" and bounded.stats["abandoned"] > 0
        assert bounded.stats["forward_flops"] < full.stats["forward_flops"]


def _scripted_engine(per_chunk: dict, tokens_per_chunk: int = 10) -> _Engine:
    """An engine whose candidates add fixed per-chunk sums instead of running a model: the bound's
    bookkeeping on values chosen by hand."""
    chunks = len(next(iter(per_chunk.values())))
    engine = object.__new__(_Engine)
    engine.chunks = [None] * chunks
    engine.tokens = chunks * tokens_per_chunk
    engine.cached = True
    engine.divergence = "kl"
    engine.keep_token_values = False
    engine.bound_vocab = 0
    engine.chunk_order = list(range(chunks))
    ran: list[tuple[str, int]] = []

    def advance(units, chunk, _last, objectives, exact=True):
        assert exact
        for unit in units:
            ran.append((unit.name, chunk))
            objectives[unit].parts[chunk] = per_chunk[unit][chunk]
            objectives[unit].total += per_chunk[unit][chunk]
            objectives[unit].count += tokens_per_chunk

    engine._advance = advance
    engine.ran = ran
    return engine


def test_bound_drops_a_candidate_when_its_running_sum_crosses_the_best():
    """Would catch a bound compared with >= (a tie dropped, so the tie-break changes), one checked
    against a candidate's own mean instead of the final count, or a drop left out of the record.

    D* = 2.0 (attn 3 completes first: lowest first chunk). mlp 3 reaches 2.1 > D* on its third
    chunk and is dropped there; attn 0 ties D* exactly after its third chunk (its last adds 0), so
    it must go on and complete, and wins the tie by block order, as in the full search; mlp 0 is
    dropped after its first chunk."""
    from hubprune.plan import Unit

    values = {
        Unit("attn", 3): [0.5, 0.5, 0.5, 0.5],
        Unit("mlp", 3): [0.6, 0.6, 0.9, 0.1],
        Unit("attn", 0): [0.7, 0.3, 1.0, 0.0],
        Unit("mlp", 0): [3.0, 0.0, 0.0, 0.0],
    }
    units = list(values)
    full = _scripted_engine(values).evaluate_many(units, None)
    bounded = _scripted_engine(values)
    exact, dropped = bounded.evaluate_bounded(units, None, [])
    assert exact == {Unit("attn", 3): 2.0 / 40, Unit("attn", 0): 2.0 / 40}
    assert dropped[Unit("mlp", 3)] == (pytest.approx(2.1 / 40), 30)
    assert dropped[Unit("mlp", 0)] == (3.0 / 40, 10)
    argmin = lambda scores: min(scores, key=lambda u: (scores[u], u.block, u.kind))  # noqa: E731
    assert argmin(exact) == argmin(full) == Unit("attn", 0)
    assert ("mlp 3", 3) not in bounded.ran and ("mlp 0", 1) not in bounded.ran
    assert bounded.ran[:4] == [(u.name, 0) for u in units]  # first every candidate's first chunk
    # In another chunk order (the last removal's most moved sequences first) every candidate
    # starts with that chunk; mlp 0 (0 there) completes first, and the outcome is the same.
    reordered = _scripted_engine(values)
    reordered.chunk_order = [2, 0, 1, 3]
    exact, dropped = reordered.evaluate_bounded(units, None, [])
    assert argmin(exact) == Unit("attn", 0) and exact[Unit("mlp", 0)] == 3.0 / 40
    assert dropped[Unit("mlp", 3)] == (pytest.approx(2.1 / 40), 30)
    assert reordered.ran[:4] == [(u.name, 2) for u in units]


def test_bounded_step_orders_the_next_chunks_by_the_chosen_candidate():
    """Would catch the next step scoring chunks in a fixed order instead of the most moved first."""
    model = tiny_model("llama", num_layers=4)
    engine = _Engine(
        model, adapter_for(model), _calibration(), 1, "js-official", cached=True, reuse_budget_mb=64
    )
    units = [Unit(kind, b) for b in range(4) for kind in ("attn", "mlp")]
    engine.begin_step([], units)
    exact, _ = engine.evaluate_bounded(units, None, [])
    chosen = min(exact, key=lambda u: (exact[u], u.block, u.kind))
    parts = engine.parts[chosen]
    assert sorted(parts) == [0, 1, 2, 3] and sum(parts.values()) / engine.tokens == pytest.approx(
        exact[chosen]
    )
    engine.commit(chosen)
    assert engine.chunk_order == sorted(parts, key=lambda c: -parts[c]) != [0, 1, 2, 3]


def test_stash_boundaries_fit_the_budget():
    """Would catch boundaries chosen past the memory budget, counted for candidates that never keep
    a state there (those at or after the boundary), or not in the order of last step's ranking."""
    engine = object.__new__(_Engine)
    engine.cached, engine.num_blocks, engine.state_bytes = True, 6, 1
    candidates = [Unit(kind, b) for b in range(6) for kind in ("attn", "mlp")]
    engine.reuse_budget = 2 * (1 + 2 + 3 + 4 + 5)  # every boundary k: the 2k candidates before it
    assert engine._boundaries([], candidates) == {1, 2, 3, 4, 5}
    engine.reuse_budget -= 1
    ranking = [
        Unit("attn", 4),
        Unit("mlp", 4),
        Unit("attn", 0),
        Unit("mlp", 5),
        Unit("attn", 2),
        Unit("attn", 1),
    ]
    assert engine._boundaries(ranking, candidates) == {4, 5, 2, 1}  # 8 + 10 + 4 + 2 states
    engine.reuse_budget = 12
    assert engine._boundaries(ranking, candidates) == {4, 2}  # 5 would need 10 more: skipped
    engine.reuse_budget = 9
    assert engine._boundaries(ranking, candidates) == {4}
    assert engine._boundaries([], candidates) == {3}  # the densest even grid that fits: 6 states
    engine.reuse_budget = 1
    assert engine._boundaries(ranking, candidates) == set()


def test_cached_engine_runs_only_what_a_removal_changed():
    """Would catch a cached engine that drops still-valid states (more block runs than needed).

    With memory for every boundary, candidate c in block j at step t starts at
    max(j, j*_{t-1}) (j*: the block of the previous removal), and the base states after a
    removal come from the chosen candidate's own kept states: after the first pass entering every
    block, nothing else is run."""
    model = tiny_model("llama", num_layers=6)
    adapter = adapter_for(model)
    batch = _calibration()
    result = finercut_search(
        model,
        adapter,
        batch,
        FinerCutParams(engine="cached", reuse_budget_mb=1024, bound="off"),
        lambda removed: len(removed) >= 5,
        batch_size=2,
        progress=False,
    )
    chunks, blocks = 2, 6
    expected = blocks - 1  # the first pass: the states entering blocks 1..5
    for step, scores in enumerate(result.step_scores):
        previous = result.order[step - 1].block if step else 0
        expected += sum(blocks - max(unit.block, previous) for unit in scores)
    assert result.stats["block_evaluations"] == chunks * expected


def test_flop_tally_matches_flop_counter():
    """Would catch per-sublayer costs that do not add up to a measured forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model("gemma2", num_layers=3)
    batch = _calibration(samples=2)
    engine = _Engine(model, adapter_for(model), batch, 2, "kl", cached=False, reuse_budget_mb=0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    per_row = sum(engine.attn_cost) + sum(engine.mlp_cost) + engine.head_cost
    assert per_row * 2 == pytest.approx(counter.get_total_flops(), rel=1e-6)


def _plan(model, budget, batch=None, **params):
    spec = get_method("finercut")
    ctx = MethodContext(model, adapter_for(model), budget, batch or _calibration(), batch_size=2)
    return spec.plan_fn(ctx, spec.make_params(params))


def test_plan_records_trace_scores_and_budget():
    """Would catch a plan missing candidates' scores or the sublayer/parameter budget."""
    model = tiny_model("llama", num_layers=4)
    plan = _plan(model, Budget(0.25))
    reached = plan.budget["reached"]
    assert reached["sublayers_removed"] == 2 and reached["sublayers_total"] == 8
    assert reached["attn_removed"] + reached["mlp_removed"] == 2
    assert 0 < reached["params_fraction"] < 0.5
    assert [t["step"] for t in plan.trace] == [0, 1]
    assert len(plan.trace[0]["candidates"]) == 8 and len(plan.trace[1]["candidates"]) == 7
    for step in plan.trace:
        exact = [c["score"] for c in step["candidates"] if c["score"] is not None]
        assert step["divergence"] == min(exact)
        assert all(c["lower_bound"] > step["divergence"] for c in step["candidates"] if c["score"] is None)
    assert {u.name for u in plan.removed} == {t["name"] for t in plan.trace}
    assert len(plan.scores) == 8 and plan.params["divergence"] == "js-official"
    assert Plan.from_dict(plan.to_dict()).removed == plan.removed


def test_parameter_budget_and_protection():
    """Would catch a parameter budget stopping short, or protected blocks being removed."""
    model = tiny_model("mistral", num_layers=4)
    plan = _plan(model, Budget(0.2, "params"), protect_first_blocks=2)
    reached = plan.budget["reached"]
    assert reached["params_fraction"] >= 0.2
    assert all(u.block >= 2 for u in plan.removed)
    released = _plan(model, Budget(3), protect_first_blocks=3, protect_steps=1)
    assert released.trace[0]["removed"]["block"] == 3  # only block 3 is a candidate at step 0
    assert len(released.trace[1]["candidates"]) == 7  # then blocks 0-2 are candidates again


def test_one_shot_removes_in_score_order():
    """Would catch one-shot re-scoring after each removal (that is the greedy search)."""
    model = tiny_model("qwen3", num_layers=4)
    plan = _plan(model, Budget(3), search="one-shot", divergence="kl")
    ranked = sorted(plan.scores, key=lambda s: (s["score"], s["unit"].block, s["unit"].kind))
    assert [t["name"] for t in plan.trace] == [s["unit"].name for s in ranked[:3]]


@pytest.mark.parametrize("divergence", ["js", "kl", "angular", "perplexity"])
def test_other_divergences_run_and_bound_exactly(divergence):
    """Would catch a divergence name accepted but not wired to the engine, or a bound that is not
    one for it (the perplexity's per-token NLL is >= 0 too, so its running sum bounds it as well)."""
    model = tiny_model("phi3", num_layers=4)
    plan = _plan(model, Budget(1), divergence=divergence)
    assert len(plan.removed) == 1 and plan.params["divergence"] == divergence
    adapter, batch = adapter_for(model), _calibration()
    runs = [
        finercut_search(
            model,
            adapter,
            batch,
            FinerCutParams(divergence=divergence, bound=bound),
            lambda removed: len(removed) >= 4,
            batch_size=2,
            progress=False,
        )
        for bound in ("off", "on")
    ]
    assert runs[0].order == runs[1].order
    # Perplexities do not approach 0: a candidate goes only once its sum passes the best one's
    # total, late or never (never on this random model, whose candidates all score about 128).
    assert runs[1].stats["abandoned"] > 0 or divergence == "perplexity"
    for full, dropped in zip(runs[0].step_scores, runs[1].step_bounds, strict=True):
        assert all(bound <= full[unit] * (1 + 1e-6) for unit, (bound, _) in dropped.items())


def test_scores_without_a_budget_are_all_exact():
    """Would catch `inspect` without `--amount` (the scores are the output) printing lower bounds."""
    model = tiny_model("llama", num_layers=4)
    plan = _plan(model, None)
    assert plan.search_cost["bound"] == "off" and "scores are the output" in plan.search_cost["bound_note"]
    assert all(isinstance(s["score"], float) and "lower_bound" not in s for s in plan.scores)
    bounded = _plan(model, Budget(2))
    assert bounded.search_cost["bound"] == "on" and bounded.search_cost["abandoned"] > 0
    assert any(s["score"] is None and s["lower_bound"] > 0 for s in bounded.scores)
    assert "lower_bound" in bounded.score_meaning and "lower_bound" not in plan.score_meaning


@torch.no_grad()
def test_recorded_divergence_is_the_one_that_ran():
    """Would catch every divergence silently computed as the default: each one-shot score must be
    that divergence between the dense and the sublayer-removed model, computed here by hand."""
    from hubprune.plan import Unit
    from hubprune.sublayers import sublayers_skipped

    model = tiny_model("llama", num_layers=2).eval()
    adapter, batch = adapter_for(model), _calibration()
    ids, mask = batch.input_ids, batch.attention_mask.bool()
    dense = model(input_ids=ids).logits.float()
    unit = Unit("attn", 1)
    with sublayers_skipped(model, adapter, [unit]):
        pruned = model(input_ids=ids).logits.float()
    by_hand = {
        "kl": kl_divergence(dense.log_softmax(-1), pruned.log_softmax(-1))[mask].mean(),
        "js-official": js_official(dense.log_softmax(-1), pruned.log_softmax(-1))[mask].mean(),
        "angular": angular_logits(dense, pruned)[mask].mean(),
        "js": js_textbook(dense.log_softmax(-1), pruned.log_softmax(-1))[mask].mean(),
        "perplexity": torch.nn.functional.cross_entropy(pruned[:, :-1].transpose(1, 2), ids[:, 1:]).exp(),
    }
    recorded = {}
    for divergence, expected in by_hand.items():
        plan = _plan(model, Budget(1), batch, divergence=divergence, search="one-shot")
        recorded[divergence] = next(s["score"] for s in plan.scores if s["unit"] == unit)
        assert recorded[divergence] == pytest.approx(float(expected), rel=1e-4), divergence
        assert plan.params["divergence"] == divergence and plan.score_meaning.startswith(f"{divergence}:")
    assert len({round(v, 8) for v in recorded.values()}) == 5, "the divergences must differ here"


def test_bad_input_refused():
    """Would catch an impossible budget or a typo being accepted."""
    spec = get_method("finercut")
    with pytest.raises(RecipeError, match="unknown FinerCut divergence 'jsd'; choose from"):
        spec.make_params({"divergence": "jsd"})
    with pytest.raises(RecipeError, match="has no parameter"):
        spec.make_params({"divergense": "kl"})
    with pytest.raises(RecipeError, match="unknown FinerCut bound 'yes'; choose from: on, off"):
        spec.make_params({"bound": "yes"})
    with pytest.raises(RecipeError, match="bound_rows must be a whole number >= 1, got 0"):
        spec.make_params({"bound_rows": 0})
    model = tiny_model("llama", num_layers=2)
    with pytest.raises(BudgetError, match="would remove all 4 sublayers"):
        _plan(model, Budget(4))
    with pytest.raises(BudgetError, match="every attention and MLP sublayer"):
        _plan(model, Budget(0.9, "params"))
    with pytest.raises(BudgetError, match="every sublayer that may be removed"):
        _plan(model, Budget(3), protect_first_blocks=1)


@pytest.mark.slow
def test_cached_search_equals_naive_on_smollm2(smollm2_dir):
    """Would catch an order that differs only on real weights (near-ties, GQA, tied head), with
    the bound on or off.

    The first 8 real blocks and 2 x 16 tokens keep this short; bench/finercut_search.py
    runs the whole model at larger sizes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubprune.data import load_texts
    from hubprune.surgery import remove_blocks

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    adapter = adapter_for(model)
    remove_blocks(model, adapter, range(8, adapter.num_blocks(model)))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    batch = build_calibration(tokenizer, load_texts("offline:lee-background"), samples=2, seq_len=16, seed=0)
    orders = []
    for engine, bound in (("naive", "off"), ("cached", "off"), ("cached", "on")):
        params = FinerCutParams(engine=engine, bound=bound)
        result = finercut_search(
            model, adapter, batch, params, lambda removed: len(removed) >= 2, batch_size=2, progress=False
        )
        orders.append(result.order)
    assert orders[0] == orders[1] == orders[2]
    assert result.stats["abandoned"] > 0


def test_search_cost_lands_in_the_manifest(tmp_path):
    """Would catch FinerCut's search cost computed and then dropped on the way to hubprune.json."""
    import json

    from hubprune.pipeline import CalibrationOptions, SourceOptions, prune
    from tests.tiny import save_tiny

    base = save_tiny(tmp_path / "base", "llama", num_layers=2)
    (tmp_path / "cal.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    calibration = CalibrationOptions(dataset=str(tmp_path / "cal.txt"), samples=4, seq_len=16)
    prune(SourceOptions(spec=str(base)), "finercut", Budget(2), tmp_path / "out", calibration=calibration)
    cost = json.loads((tmp_path / "out" / "hubprune.json").read_text(encoding="utf-8"))["plan"]["search_cost"]
    assert cost["engine"] == "cached" and cost["wall_s"] > 0
    assert cost["bound"] == "on" and cost["candidate_evaluations"] == 4 + 3 >= cost["abandoned"]
    assert cost["forward_flops"] > 0 and cost["full_forward_calls"] >= 1
    assert cost["block_evaluations"] >= 4, "two greedy steps over four candidates"
    assert len(cost["flops_per_row"]["attn"]) == 2 == len(cost["flops_per_row"]["mlp"])


@pytest.mark.parametrize("engine", ["naive", "cached"])
def test_kept_token_values_average_to_the_scores(engine):
    """Would catch per-token values kept out of calibration order, for the wrong candidate, or
    from another step: the bench's ceilings on what a bound could save are computed from them."""
    model = tiny_model("llama", num_layers=4)
    batch = _calibration(samples=4, seq_len=16)

    def search(calibration, steps: int, batch_size: int):
        params = FinerCutParams(engine=engine, divergence="kl")
        return finercut_search(
            model,
            adapter_for(model),
            calibration,
            params,
            lambda removed: len(removed) >= steps,
            batch_size=batch_size,
            progress=False,
            keep_token_values=True,
        )

    res = search(batch, 3, batch_size=3)  # chunks of unequal size
    assert res.stats["bound"] == "off"
    assert len(res.step_token_values) == len(res.step_scores) == 3
    for scores, values in zip(res.step_scores, res.step_token_values, strict=True):
        assert values.keys() == scores.keys()
        for unit, v in values.items():
            assert v.shape == (4 * 16,) and bool((v >= 0).all())
            assert float(v.mean()) == pytest.approx(scores[unit], rel=1e-6)
    # Each sequence's values are its own: rescoring sequence 2 alone gives its slice.
    alone = dataclasses.replace(
        batch, input_ids=batch.input_ids[2:3], attention_mask=batch.attention_mask[2:3]
    )
    for unit, v in search(alone, 1, batch_size=1).step_token_values[0].items():
        assert torch.allclose(v, res.step_token_values[0][unit][32:48], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_subset_bound_on_peaked_distributions(family):
    """Would catch a vocabulary-subset bound above the divergence (the search would drop the argmin
    or record a bound above the score), or one never used.

    The output layer is scaled up so that a few tokens carry most of each distribution, as in a
    trained model; random tiny models spread theirs over the whole vocabulary, where a subset's
    bound is weak. gemma2: soft-capped logits."""
    model = tiny_model(family, num_layers=4)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight * 15)
    adapter = adapter_for(model)
    batch = _calibration(samples=6)
    runs = [
        finercut_search(
            model,
            adapter,
            batch,
            FinerCutParams(engine=engine, bound=bound, bound_vocab=4),
            lambda removed: len(removed) >= 4,
            batch_size=2,
            progress=False,
        )
        for engine, bound in (("naive", "off"), ("cached", "on"))
    ]
    full, bounded = runs
    assert full.order == bounded.order
    tight = 0
    for scores, exact, dropped in zip(
        full.step_scores, bounded.step_scores, bounded.step_bounds, strict=True
    ):
        for unit, (bound, _) in dropped.items():
            assert bound <= scores[unit] * (1 + 1e-5)
            tight += bound > 0.7 * scores[unit]
        for unit, value in exact.items():
            assert value == pytest.approx(scores[unit], rel=1e-5)
    assert tight > 0 and bounded.stats["abandoned"] > 0


def test_vocab_subsets_follow_the_pruned_model():
    """Would catch subsets that keep only the dense model's likeliest tokens after removals (the
    candidates' mass moves with the pruned model), or lose the dense ones."""
    model = tiny_model("llama", num_layers=4)
    engine = _Engine(
        model,
        adapter_for(model),
        _calibration(),
        1,
        "js-official",
        cached=True,
        reuse_budget_mb=64,
        bound_vocab=2,
    )
    dense = [set(ids.tolist()) for ids, *_ in engine.subsets]
    units = [Unit(kind, b) for b in range(4) for kind in ("attn", "mlp")]
    engine.begin_step([], units)
    exact, _ = engine.evaluate_bounded(units, None, [])
    chosen = min(exact, key=lambda u: (exact[u], u.block, u.kind))
    with sublayers_skipped(model, adapter_for(model), [chosen]), torch.no_grad():
        pruned = [model(input_ids=ids).logits.topk(2, dim=-1).indices for ids, _ in engine.chunks]
    engine.commit(chosen)
    for c, (ids, weight, *_) in enumerate(engine.subsets):
        now = set(ids.tolist())
        assert dense[c] <= now and set(pruned[c].flatten().tolist()) <= now
        assert torch.equal(weight, model.lm_head.weight[ids])
    assert any(set(ids.tolist()) != dense[c] for c, (ids, *_) in enumerate(engine.subsets))
