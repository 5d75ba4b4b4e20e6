"""Real weights: SmolLM2-135M-Instruct from the offline package (30 blocks, tied embeddings).

Calibration is news text (Lee corpus); held-out evaluation uses different text (XSum articles).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hubprune.cli import main
from hubprune.data import build_calibration, load_texts
from hubprune.evaluation.perplexity import perplexity
from hubprune.export import export_plain
from hubprune.methods import Budget
from hubprune.pipeline import CalibrationOptions, SourceOptions, load, score
from hubprune.surgery import apply_plan

pytestmark = pytest.mark.slow
CALIBRATION = CalibrationOptions(dataset="offline:lee-background", samples=8, seq_len=128, seed=0)


@pytest.fixture(scope="module")
def loaded(smollm2_dir):
    return load(SourceOptions(str(smollm2_dir), base_model="HuggingFaceTB/SmolLM2-135M-Instruct"))


@pytest.fixture(scope="module")
def held_out(loaded):
    texts = load_texts("offline:xsum")
    return build_calibration(loaded.tokenizer, texts, samples=16, seq_len=256, seed=1234).batches(8)


@pytest.mark.parametrize("method", ["block-influence", "angular", "perplexity", "random", "reverse-order"])
def test_inspect_scores_all_30_blocks(method, smollm2_dir, capsys):
    argv = ["inspect", str(smollm2_dir), "--method", method, "--json", "--amount", "6"]
    argv += ["--calibration", "offline:lee-background", "--samples", "4", "--seq-len", "128"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["scores"]) == 30 and len(plan["removed"]) == 6
    assert all(s["score"] == s["score"] for s in plan["scores"]), "NaN score"


def test_block_influence_beats_reverse_order_and_export_matches(loaded, held_out, tmp_path, capsys):
    """Unhealed, dropping the last 6 blocks is known to be far worse than dropping the 6 most
    redundant ones; the exported model must reproduce the in-memory one exactly."""
    base_ppl = perplexity(loaded.model, held_out)
    results = {}
    for method in ("block-influence", "reverse-order"):
        model = copy.deepcopy(loaded.model)
        pruned = copy.copy(loaded)
        pruned.model = model
        plan = score(pruned, method, Budget(6), calibration=CALIBRATION)
        apply_plan(model, loaded.adapter, plan)
        results[method] = (perplexity(model, held_out), plan.removed_blocks(), model)
    with capsys.disabled():
        print(
            f"\nSmolLM2 held-out perplexity (XSum, 16x256): base {base_ppl:.2f}, "
            f"block-influence {results['block-influence'][0]:.2f} (blocks {results['block-influence'][1]}), "
            f"reverse-order {results['reverse-order'][0]:.2f}"
        )
    assert 15 < base_ppl < 60
    assert results["reverse-order"][1] == list(range(24, 30))
    assert base_ppl < results["block-influence"][0] < results["reverse-order"][0]

    model = results["block-influence"][2]
    export_plain(model, loaded.tokenizer, tmp_path / "bi6", source_dir=loaded.source.local_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bi6", dtype=torch.float32)
    assert reloaded.config.num_hidden_layers == 24
    ids = held_out[0][0][:2, :64]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    chat = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    chat = chat["input_ids"] if not torch.is_tensor(chat) else chat
    generated = reloaded.generate(chat, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape[1] == chat.shape[1] + 8


def test_width_pruned_compact_export_evaluates_and_heals_compact(smollm2_dir, tmp_path, monkeypatch):
    """Real weights, end to end: wanda-sp (global, heads and channels, MLP widths in multiples of
    64) written compact; the export reloads with the in-memory pruned logits and the parameter
    count the plan predicted; `eval` reads it; LoRA recovery writes it compact again, reloading
    with the logits of the model trained in memory."""
    from hubprune import recover as recover_mod
    from hubprune.evaluation import evaluate_run
    from hubprune.formats import load_folder
    from hubprune.pipeline import prune
    from hubprune.recover import recover
    from hubprune.transforms import masked, unit_masks
    from tests.test_recover import _settings

    monkeypatch.setenv("HUBPRUNE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "wanda"
    manifest = prune(
        SourceOptions(str(smollm2_dir), dtype="float32"),
        "wanda-sp",
        Budget(0.15, "params"),
        run,
        calibration=CALIBRATION,
        method_params={"multiple_of": 64},
        export_format="compact",
    )
    shape = manifest.plan.shape()
    assert manifest.export["schema"].startswith("hubprune heterogeneous")
    assert len({b.intermediate_size for _, b in shape.kept()}) > 1
    assert all(b.intermediate_size % 64 == 0 for _, b in shape.kept())
    compact = load_folder(run, dtype=torch.float32, device="cpu")
    dense = load(SourceOptions(str(smollm2_dir), dtype="float32")).model
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 5457, 30, 378, 1345, 282, 9023, 314, 2]])
    with torch.no_grad(), masked(dense, load(SourceOptions(str(smollm2_dir))).adapter, unit_masks(shape)):
        truth = dense(ids).logits
    with torch.no_grad():  # smaller matmuls sum in another order: ~3e-4 on logits of size ~20
        torch.testing.assert_close(compact(ids).logits, truth, atol=1e-3, rtol=0)
    assert (
        sum(p.numel() for p in compact.parameters())
        == manifest.plan.budget["reached"]["params_total"]["after"]
    )

    text = tmp_path / "heal.txt"
    text.write_text("\n".join(load_texts("offline:lee-background").texts[:40]))
    report = evaluate_run(run, tasks=[], perplexity_data=str(text), perplexity_max_tokens=1024)
    assert 1 < report["perplexity"]["metric"]["pruned"] < 1e4

    seen = {}
    original = recover_mod._export

    def spy(*args, **kwargs):
        model, export = original(*args, **kwargs)
        with torch.no_grad():
            seen["logits"] = model(ids).logits.clone()
        return model, export

    monkeypatch.setattr(recover_mod, "_export", spy)
    healed = recover(run, tmp_path / "healed", _settings(text, mode="lora", max_steps=2))
    assert healed.export["format"] == "compact"
    reloaded = load_folder(tmp_path / "healed", dtype=torch.float32, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, seen["logits"], atol=1e-4, rtol=0)
