"""Plain and compact exports of sublayer removal: reload, logits, generate, sizes, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hubprune.arch import adapter_for
from hubprune.cli import main as cli_main
from hubprune.errors import ExportError, UnsupportedArchitectureError
from hubprune.export_compact import export_compact, ffn_mult_for, ffn_mult_to_intermediate_size
from hubprune.methods import Budget
from hubprune.pipeline import CalibrationOptions, SourceOptions, prune
from hubprune.plan import Manifest, Unit
from hubprune.size import kv_cache_bytes_per_token
from hubprune.sublayers import remove_sublayers
from tests.test_finercut import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.tiny import SAMPLE_TEXT, char_tokenizer, save_tiny, tiny_config


def _save_compactable(folder, model_type: str):
    """A tiny model whose MLP width (256 for hidden 64) DeciLM's ffn_mult rule can express."""
    torch.manual_seed(0)
    config = tiny_config(model_type)
    config.intermediate_size = 256
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def _load(folder, **kwargs):
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", **kwargs).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """FinerCut on a tiny Llama through `prune`, exported both ways from the same plan."""
    root = tmp_path_factory.mktemp("compact")
    source = _save_compactable(root / "base", "llama")
    text = root / "calib.txt"
    text.write_text(SAMPLE_TEXT)
    calibration = CalibrationOptions(dataset=str(text), samples=4, seq_len=16)
    outs = {}
    for fmt in ("plain", "compact"):
        outs[fmt] = prune(
            SourceOptions(str(source), dtype="float32"),
            "finercut",
            Budget(3),
            root / fmt,
            calibration=calibration,
            method_params={"divergence": "kl"},
            batch_size=2,
            export_format=fmt,
        )
    return source, root, outs


def test_same_plan_both_formats(exported):
    """Would catch the format changing what the search chose."""
    _, _, outs = exported
    assert outs["plain"].plan.removed == outs["compact"].plan.removed
    assert outs["plain"].plan.params["divergence"] == "kl"


@torch.no_grad()
def test_reloads_give_in_memory_logits_and_generate(exported):
    """Would catch an export (either one) that does not reproduce the pruned model."""
    source, root, outs = exported
    plan = outs["plain"].plan
    in_memory = _load(source)
    adapter = adapter_for(in_memory)
    remove_sublayers(in_memory, adapter, plan.removed)
    plain = _load(root / "plain")
    compact = _load(root / "compact", trust_remote_code=True)
    assert type(compact).__name__ == "DeciLMForCausalLM"
    ids = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = in_memory(ids).logits
    assert torch.allclose(plain(ids).logits, expected, atol=1e-5)
    assert torch.allclose(compact(ids).logits, expected, atol=1e-5)
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    reference = in_memory.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(plain.generate(ids, **kwargs), reference)
    assert torch.equal(compact.generate(ids, **kwargs), reference)


@torch.no_grad()
def test_compact_saves_exactly_what_the_plan_says(exported):
    """Would catch savings that differ from the plan (parameters, KV cache) or a plain export
    that claims savings."""
    _, root, outs = exported
    plan = outs["compact"].plan
    reached = plan.budget["reached"]
    plain = _load(root / "plain")
    compact = _load(root / "compact", trust_remote_code=True)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_compact = sum(p.numel() for p in compact.parameters())
    assert n_plain - n_compact == reached["params_removed"]
    assert outs["plain"].model_after["params_total"] == outs["plain"].model_before["params_total"]
    assert outs["compact"].model_after["params_total"] == n_compact
    export = outs["plain"].export
    assert export["zero_filled"] is True and export["savings"].startswith("none")
    assert outs["compact"].export["zero_filled"] is False

    ids = torch.randint(4, 100, (1, 10), generator=torch.Generator().manual_seed(1))

    def cache_bytes(model):
        cache = model(ids, use_cache=True).past_key_values
        return sum(la.keys.numel() * 4 * 2 for la in cache.layers if getattr(la, "keys", None) is not None)

    per_layer = kv_cache_bytes_per_token(plain.config, 1, 4) * ids.shape[1]
    assert cache_bytes(plain) - cache_bytes(compact) == reached["attn_removed"] * per_layer
    per_token = outs["plain"].model_after["kv_cache_bytes_per_token"]
    per_token_compact = outs["compact"].model_after["kv_cache_bytes_per_token"]
    assert per_token - per_token_compact == reached["attn_removed"] * per_layer // ids.shape[1]


def test_compact_config_schema(exported):
    """Would catch a config vLLM's DeciLM loader could not read."""
    _, root, outs = exported
    config = json.loads((root / "compact" / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_decilm.DeciLMForCausalLM"
    assert (root / "compact" / "modeling_decilm.py").is_file()
    removed = {(u.kind, u.block) for u in outs["compact"].plan.removed}
    for i, block in enumerate(config["block_configs"]):
        assert block["attention"]["no_op"] == (("attn", i) in removed)
        assert block["ffn"]["no_op"] == (("mlp", i) in removed)
        if not block["ffn"]["no_op"]:
            assert ffn_mult_to_intermediate_size(block["ffn"]["ffn_mult"], 64) == 256
        if not block["attention"]["no_op"]:
            assert block["attention"]["n_heads_in_group"] == 2
    manifest = Manifest.load(root / "compact")
    assert manifest.export["format"] == "compact"


def test_ffn_mult_round_trip():
    """Would catch an ffn_mult that vLLM would turn into a different MLP width."""
    assert ffn_mult_for(1536, 576) == 4.0  # SmolLM2
    for hidden, width in ((4096, 14336), (8192, 28672), (2048, 8192), (3072, 8192)):
        assert ffn_mult_to_intermediate_size(ffn_mult_for(width, hidden), hidden) == width
    with pytest.raises(ExportError, match="cannot be written as a DeciLM ffn_mult"):
        ffn_mult_for(96, 64)


def test_unsupported_family_refused(tmp_path, capsys):
    """Would catch a nemotron-nas export written wrong for a family the schema cannot express
    (`--format compact` writes those in the heterogeneous format instead)."""
    from tests.tiny import tiny_model

    model = tiny_model("qwen3")
    adapter = adapter_for(model)
    remove_sublayers(model, adapter, [Unit("attn", 1)])
    with pytest.raises(UnsupportedArchitectureError, match="cannot express family 'qwen3'"):
        export_compact(model, adapter, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    qwen2 = tiny_model("qwen2")  # sliding-window layers
    with pytest.raises(UnsupportedArchitectureError, match="cannot express sliding-window attention"):
        export_compact(qwen2, adapter_for(qwen2), None, tmp_path / "out")
    source = save_tiny(tmp_path / "gemma", "gemma2")
    code = cli_main(
        [
            "prune",
            str(source),
            "--method",
            "finercut",
            "--amount",
            "2",
            "--format",
            "nemotron-nas",
            "--calibration",
            str(tmp_path / "missing.txt"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0
    assert "compact format cannot express family 'gemma2'" in err


def test_cli_bad_method_arg_and_amount(tmp_path, capsys):
    """Would catch an unknown divergence or an all-sublayer amount reaching the model load."""
    source = save_tiny(tmp_path / "llama", "llama")
    base = ["prune", str(source), "--method", "finercut", "--out", str(tmp_path / "o")]
    assert cli_main([*base, "--amount", "2", "--method-arg", "divergence=jsd"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown FinerCut divergence 'jsd'" in err
    assert cli_main([*base, "--amount", "8"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "would remove all 8 sublayers" in err


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
@torch.no_grad()
def test_compact_other_families(tmp_path, model_type):
    """Would catch Mistral or Qwen2 (q/k/v biases, no o_proj bias) written wrong in the schema."""
    torch.manual_seed(0)
    config = tiny_config(model_type)
    config.intermediate_size = 256
    if model_type == "qwen2":
        config.use_sliding_window = False
        config.layer_types = ["full_attention"] * config.num_hidden_layers
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.02)
    adapter = adapter_for(model)
    remove_sublayers(model, adapter, [Unit("attn", 0), Unit("mlp", 1), Unit("mlp", 3)])
    export_compact(model, adapter, char_tokenizer(), tmp_path / "c")
    compact = _load(tmp_path / "c", trust_remote_code=True)
    ids = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(compact(ids).logits, model(ids).logits, atol=1e-5)
    assert sum(p.numel() for p in compact.parameters()) == sum(p.numel() for p in model.parameters())
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(compact.generate(ids, **kwargs), model.generate(ids, use_cache=False, **kwargs))
