"""Every export format loads back into hubprune: detection, loading with hubprune's own remote
code, adapters for compact models, and eval / recover / card / publish on a compact run folder.

What these catch: a compact folder hubprune cannot load (or loads by running the folder's code),
code that walks blocks and breaks on a block without attention, a report whose cost is not the
compact model's, recovery that writes a compact input back as plain (or as a folder that loads
differently from the model trained in memory), and a card that hides the shipped remote code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hubprune import evaluation
from hubprune import export_compact as export_compact_mod
from hubprune import recover as recover_mod
from hubprune.arch import adapter_for
from hubprune.card import render_card_text
from hubprune.cli import main
from hubprune.cost import model_cost
from hubprune.errors import UnsupportedArchitectureError
from hubprune.formats import (
    FORMATS,
    HETERO,
    NEMOTRON_NAS,
    PLAIN,
    REMOTE_PACKAGE,
    format_of,
    load_folder,
    register_format,
    remote_code_module,
)
from hubprune.methods import Budget
from hubprune.pipeline import CalibrationOptions, SourceOptions, prune
from hubprune.plan import Manifest, Unit
from hubprune.recover import default_lora_targets, recover
from hubprune.resources import templates_dir
from hubprune.source import ResolvedSource, load_model
from hubprune.sublayers import remove_sublayers
from tests.test_export_compact import _save_compactable
from tests.test_finercut import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.test_recover import PROBE, _settings
from tests.tiny import SAMPLE_TEXT, char_tokenizer, tiny_config, tiny_model


@pytest.fixture(scope="module")
def compact(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A FinerCut compact run of a tiny Llama that removes 5 of 8 sublayers: some attention, and
    one block (`empty`) loses both (no `self_attn`, no `mlp` at all)."""
    root = tmp_path_factory.mktemp("formats")
    base = _save_compactable(root / "base", "llama")
    text = root / "text.txt"
    text.write_text("\n".join(SAMPLE_TEXT[i : i + 200] for i in range(0, len(SAMPLE_TEXT), 200)))
    manifest = prune(
        SourceOptions(str(base), dtype="float32"),
        "finercut",
        Budget(5),
        root / "run",
        calibration=CalibrationOptions(dataset=str(text), samples=4, seq_len=16),
        method_params={"divergence": "kl"},
        batch_size=2,
        export_format="compact",
    )
    removed = {(u.kind, u.block) for u in manifest.plan.removed}
    empty = [i for i in range(4) if {("attn", i), ("mlp", i)} <= removed]
    assert len(empty) == 1 and 0 < sum(k == "attn" for k, _ in removed) < 4, "the fixture lost its point"
    return {"base": base, "run": root / "run", "text": text, "empty": empty[0], "removed": removed}


@pytest.fixture(scope="module")
def hetero(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wanda-sp compact run of a tiny Qwen3 (q/k norms, sliding windows): blocks of different
    widths, which only the heterogeneous format can express."""
    from tests.tiny import save_tiny

    root = tmp_path_factory.mktemp("hetero")
    base = save_tiny(root / "base", "qwen3")
    text = root / "text.txt"
    text.write_text("\n".join(SAMPLE_TEXT[i : i + 200] for i in range(0, len(SAMPLE_TEXT), 200)))
    manifest = prune(
        SourceOptions(str(base), dtype="float32"),
        "wanda-sp",
        Budget(0.3, "params"),
        root / "run",
        calibration=CalibrationOptions(dataset=str(text), samples=4, seq_len=16),
        batch_size=2,
        export_format="compact",
    )
    assert manifest.export["schema"].startswith("hubprune heterogeneous")
    widths = {b["channels"] for b in manifest.plan.to_dict()["shape"]}
    assert len(widths) > 1, "the fixture lost its point: blocks should differ in width"
    return {"base": base, "run": root / "run", "text": text}


def _load(folder: Path):
    return load_model(ResolvedSource(str(folder), "local", folder), dtype="float32", device="cpu")


def test_format_of_and_registry() -> None:
    """Would catch a compact config taken for plain (or the reverse), a compact config without an
    adapter, and a format registered twice."""
    assert format_of({"model_type": "nemotron-nas", "block_configs": []}) is NEMOTRON_NAS
    assert format_of({"model_type": "llama"}) is PLAIN
    assert format_of({"model_type": "no-such-type"}) is PLAIN
    assert adapter_for({"model_type": "nemotron-nas"}).family == "llama"
    assert adapter_for({"model_type": "qwen3"}).family == "qwen3"
    with pytest.raises(UnsupportedArchitectureError, match="no-such-type"):
        adapter_for({"model_type": "no-such-type"})
    with pytest.raises(ValueError, match="twice"):
        register_format(FORMATS["plain"])
    assert NEMOTRON_NAS.vllm_servable and not HETERO.vllm_servable


def test_compact_loads_with_hubprunes_own_code(compact: dict[str, Path], tmp_path: Path) -> None:
    """Would catch a load that runs the folder's modeling code, and adapter / cost code that
    breaks on (or miscounts) a block without attention."""
    folder = tmp_path / "tampered"
    shutil.copytree(compact["run"], folder)
    (folder / "modeling_decilm.py").write_text("raise RuntimeError('the folder code ran')\n")
    model, tokenizer = _load(folder)
    assert type(model).__module__ == f"{REMOTE_PACKAGE}.modeling_decilm"
    assert tokenizer("abc")["input_ids"]
    adapter = adapter_for(model)
    blocks = list(adapter.blocks(model))
    empty = blocks[compact["empty"]]
    assert not hasattr(empty, "self_attn") and adapter.attention_of(empty) is None
    assert adapter.mlp_of(empty) is None and adapter.sublayer_params(empty) == {"attn": 0, "mlp": 0}
    cost = model_cost(model, adapter=adapter)
    assert cost["params_total"] == sum(p.numel() for p in model.parameters())
    attending = 4 - sum(k == "attn" for k, _ in compact["removed"])
    assert cost["attention_layers"] == sum(adapter.attention_of(b) is not None for b in blocks) == attending
    stock = AutoModelForCausalLM.from_pretrained(compact["run"], trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model(PROBE).logits, stock.eval()(PROBE).logits, rtol=0, atol=1e-6)


def test_default_lora_targets_skip_missing_projections() -> None:
    """Would catch LoRA defaults naming projections no block has (peft would refuse the model)."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    assert default_lora_targets(model, adapter) == list(adapter.lora_targets)
    remove_sublayers(model, adapter, [Unit("attn", i) for i in range(4)])
    assert default_lora_targets(model, adapter) == ["gate_proj", "up_proj", "down_proj"]


def test_eval_compact_run_and_bare_folder(
    compact: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Would catch `hubprune eval` refusing a compact folder, or reporting the cost of anything
    but the compact model (its own parameters, its attention layers only)."""
    monkeypatch.setenv("HUBPRUNE_CACHE", str(tmp_path / "cache"))
    report = evaluation.evaluate_run(
        compact["run"],
        tasks=["offline:piqa"],
        limit=2,
        perplexity_data=str(compact["text"]),
        perplexity_seq_len=16,
        perplexity_max_tokens=128,
        batch_size=2,
    )
    model, _ = _load(compact["run"])
    pruned, base = report["cost"]["pruned"], report["cost"]["base"]
    assert pruned["params_total"] == sum(p.numel() for p in model.parameters()) < base["params_total"]
    attending = 4 - sum(k == "attn" for k, _ in compact["removed"])
    assert (pruned["attention_layers"], base["attention_layers"]) == (attending, 4)
    assert pruned["zero_filled"] is None
    assert report["tasks"]["offline_piqa"] and report["perplexity"]["metric"]["pruned"] > 1

    bare = tmp_path / "bare"
    shutil.copytree(compact["run"], bare, ignore=shutil.ignore_patterns("hubprune.json", "eval"))
    args = ["eval", str(bare), "--perplexity-data", str(compact["text"]), "--seq-len", "16"]
    assert main(args + ["--max-tokens", "128", "--output", str(tmp_path / "bare.json")]) == 0
    assert "ppl@16" in capsys.readouterr().out
    bare_cost = json.loads((tmp_path / "bare.json").read_text())["cost"]["model"]
    assert bare_cost["params_total"] == pruned["params_total"]


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Logits of the exact model object recovery exported (LoRA merged, cast back)."""
    seen: dict = {}
    original = recover_mod._export

    def spy(*args, **kwargs):
        model, export = original(*args, **kwargs)
        with torch.no_grad():
            seen["logits"] = model(PROBE).logits.clone()
        return model, export

    monkeypatch.setattr(recover_mod, "_export", spy)
    return seen


def test_nemotron_nas_rewrite_keeps_per_block_widths(tmp_path: Path) -> None:
    """Would catch re-exporting a loaded compact model (as recovery does) with the config's one
    KV-head count instead of each block's own (a width-pruned nemotron-nas model)."""
    blocks = [
        {"attention": {"n_heads_in_group": 2}, "ffn": {"ffn_mult": 6.0}},
        {"attention": {"n_heads_in_group": 4}, "ffn": {"ffn_mult": 6.0}},
        {"attention": {"no_op": True}, "ffn": {"ffn_mult": 6.0}},
        {"attention": {"n_heads_in_group": 4}, "ffn": {"no_op": True}},
    ]
    config = remote_code_module("configuration_decilm").DeciLMConfig(
        **{**tiny_config("llama").to_dict(), "intermediate_size": 256, "block_configs": blocks}
    )
    torch.manual_seed(0)
    model = remote_code_module("modeling_decilm").DeciLMForCausalLM(config).eval()
    folder = tmp_path / "rewritten"
    folder.mkdir()
    record = NEMOTRON_NAS.write(model, adapter_for(model), char_tokenizer(), folder)
    assert record["format"] == "compact" and (folder / "modeling_decilm.py").is_file()
    written = json.loads((folder / "config.json").read_text())["block_configs"]
    assert [b["attention"]["n_heads_in_group"] for b in written] == [2, 4, None, 4]
    reloaded = load_folder(folder, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(PROBE).logits, model(PROBE).logits, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["partial", "lora"])
@pytest.mark.parametrize("which", ["compact", "hetero"])
def test_recover_writes_the_same_compact_format(
    which: str, request: pytest.FixtureRequest, tmp_path: Path, written: dict, mode: str
) -> None:
    """Would catch recovery that writes a compact input (nemotron-nas, or heterogeneous widths)
    as plain, drops the remote code or `auto_map`, loses a block's width, skips merging LoRA,
    trains an empty block, or writes weights that reload (through hubprune or stock
    transformers) differently from the model trained in memory."""
    from hubprune import export_hetero

    fixture = request.getfixturevalue(which)
    run, out = fixture["run"], tmp_path / mode
    manifest = recover(run, out, _settings(fixture["text"], mode=mode, last_k=2, max_steps=4))
    record = manifest.stages["recover"]
    if mode == "partial" and which == "compact":  # the empty block holds no weights: skipped
        last = [i for i in range(4) if i != fixture["empty"]][-2:]
        assert record["trained_modules"] == [f"model.layers.{i}" for i in last] + ["model.norm"]
    elif mode == "lora":  # merged: no LoRA tensors, the same module names as the input
        assert record["lora_merged"] and "q_proj" in record["trained_modules"]
    config, before = (json.loads((f / "config.json").read_text()) for f in (out, run))
    assert config["model_type"] == before["model_type"] and config["auto_map"] == before["auto_map"]
    per_block = "block_configs" if which == "compact" else "per_layer_config"
    assert config[per_block] == before[per_block]
    module = export_compact_mod if which == "compact" else export_hetero
    for name in module.REMOTE_FILES:
        assert (out / name).read_bytes() == (templates_dir() / "remote" / name).read_bytes()
    export = Manifest.load(out).export
    assert export["format"] == "compact" and export["remote_code"] == list(module.REMOTE_FILES)

    ours, _ = _load(out)
    stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    input_model, _ = _load(run)
    with torch.no_grad():
        for reloaded in (ours, stock):
            torch.testing.assert_close(reloaded(PROBE).logits, written["logits"], rtol=0, atol=1e-5)
        assert not torch.allclose(input_model(PROBE).logits, written["logits"]), "nothing was trained"
    assert manifest.model_after["params_total"] == sum(p.numel() for p in ours.parameters())

    text = render_card_text(out)
    code_file = module.REMOTE_FILES[1]
    assert f"[{code_file}]({code_file})" in text and "trust_remote_code=True" in text
    assert main(["publish", str(out), "--repo", "test-org/compact", "--private", "--dry-run"]) == 0


def test_eval_heterogeneous_run(
    hetero: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Would catch `hubprune eval` failing on a heterogeneous export (a config whose per-block
    fields cannot be read globally) or reporting the dense cost."""
    monkeypatch.setenv("HUBPRUNE_CACHE", str(tmp_path / "cache"))
    report = evaluation.evaluate_run(
        hetero["run"],
        tasks=["offline:piqa"],
        limit=2,
        perplexity_data=str(hetero["text"]),
        perplexity_seq_len=16,
        perplexity_max_tokens=128,
        batch_size=2,
    )
    model, _ = _load(hetero["run"])
    pruned, base = report["cost"]["pruned"], report["cost"]["base"]
    assert pruned["params_total"] == sum(p.numel() for p in model.parameters()) < base["params_total"]
    assert (
        pruned["kv_cache_bytes_per_token"]
        == Manifest.load(hetero["run"]).model_after["kv_cache_bytes_per_token"]
    )
    assert report["tasks"]["offline_piqa"] and report["perplexity"]["metric"]["pruned"] > 1
