"""Block surgery and plain export for every family, checked numerically."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from hubprune.arch import adapter_for
from hubprune.errors import BudgetError, ExportError
from hubprune.export import export_plain
from hubprune.surgery import blocks_skipped, remove_blocks
from tests.tiny import FAMILIES, char_tokenizer, tiny_model

# Longer than the tiny sliding window (8), so sliding layers really mask differently.
INPUT = torch.randint(4, 100, (2, 24), generator=torch.Generator().manual_seed(0))


def reference_logits_skipping(model, adapter, removed):
    """Logits of the unpruned model with the removed blocks turned into identities by hooks:
    an independent reference that shares no code with surgery."""
    blocks = adapter.blocks(model)
    hooks = [
        blocks[i].register_forward_hook(
            lambda _m, args, kwargs, _out: args[0] if args else kwargs["hidden_states"], with_kwargs=True
        )
        for i in removed
    ]
    try:
        with torch.no_grad():
            return model(INPUT, use_cache=False).logits
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_remove_blocks_export_reload_generate(model_type, tmp_path):
    """Would catch: a wrong block dropped, stale layer_types / layer_idx, an export that reloads
    differently, tied embeddings untied on save, or a KV cache that breaks after pruning."""
    model = tiny_model(model_type)
    adapter = adapter_for(model)
    with torch.no_grad():
        base = model(INPUT).logits
    expected = reference_logits_skipping(model, adapter, [1, 2])
    layer_types = list(getattr(model.config, "layer_types", None) or [])

    keep = remove_blocks(model, adapter, [1, 2])
    assert keep == [0, 3]
    assert model.config.num_hidden_layers == 2 and len(adapter.blocks(model)) == 2
    if layer_types:
        assert model.config.layer_types == [layer_types[0], layer_types[3]]
    assert [b.self_attn.layer_idx for b in adapter.blocks(model)] == [0, 1]

    with torch.no_grad():
        pruned = model(INPUT).logits
    assert not torch.allclose(pruned, base, atol=1e-3), "pruning changed nothing"
    torch.testing.assert_close(pruned, expected, rtol=1e-5, atol=1e-5)

    out = tmp_path / "pruned"
    record = export_plain(model, char_tokenizer(), out)
    assert "config.json" in record["files"] and "tokenizer.json" in record["files"]
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert reloaded.config.num_hidden_layers == 2
    if layer_types:
        assert reloaded.config.layer_types == [layer_types[0], layer_types[3]]
    if model.config.tie_word_embeddings:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(INPUT).logits, pruned, rtol=1e-6, atol=1e-6)

    prompt = INPUT[:1, :6]
    with_cache = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    without_cache = reloaded.generate(
        prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0
    )
    assert with_cache.shape[1] == 18
    assert torch.equal(with_cache, without_cache), "KV-cache decoding disagrees with full recomputation"


def test_blocks_skipped_restores_model():
    """Would catch: a temporary skip (used for scoring) that leaks into the model."""
    model = tiny_model("qwen3")
    adapter = adapter_for(model)
    with torch.no_grad():
        before = model(INPUT).logits
        with blocks_skipped(model, adapter, [0]):
            skipped = model(INPUT, use_cache=False).logits
            assert model.config.num_hidden_layers == 3 and len(model.config.layer_types) == 3
        after = model(INPUT).logits
    torch.testing.assert_close(skipped, reference_logits_skipping(model, adapter, [0]))
    assert torch.equal(before, after) and model.config.num_hidden_layers == 4


@pytest.mark.parametrize("indices", [[4], [-1], [0, 1, 2, 3]])
def test_remove_blocks_refuses_impossible(indices):
    model = tiny_model("llama")
    with pytest.raises(BudgetError):
        remove_blocks(model, adapter_for(model), indices)
    assert model.config.num_hidden_layers == 4


def test_qwen_max_window_layers_recounted():
    model = tiny_model("qwen2")  # max_window_layers=2
    remove_blocks(model, adapter_for(model), [0])
    assert model.config.max_window_layers == 1


def test_export_refuses_non_empty_folder_and_inconsistent_model(tmp_path):
    model = tiny_model("llama")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export_plain(model, None, tmp_path / "x")
    model.config.num_hidden_layers = 3  # config no longer matches the weights
    with pytest.raises(ExportError):
        export_plain(model, None, tmp_path / "y")
    assert not (tmp_path / "y").exists(), "a failed export left a folder behind"


def test_export_shards_and_copies_licenses(tmp_path):
    model = tiny_model("llama")
    src = tmp_path / "src"
    src.mkdir()
    (src / "LICENSE").write_text("license text")
    (src / "USE_POLICY.md").write_text("policy")
    record = export_plain(model, None, tmp_path / "out", source_dir=src, max_shard_size="100KB")
    shards = [f for f in record["files"] if f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in record["files"]
    assert record["license_files"] == ["LICENSE", "USE_POLICY.md"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(INPUT).logits, model(INPUT).logits)
