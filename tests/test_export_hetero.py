"""The heterogeneous export: per-block heads, MLP widths and removed sublayers, for every family.

The truth is the native model with the removed units' contributions zeroed
(:func:`hubprune.transforms.zero_fill`), which is exact; the export holds the sliced tensors
(:func:`hubprune.transforms.slice_state_dict`) and our remote code.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.cache_utils import DummyLayer

from hubprune.arch import adapter_for
from hubprune.errors import ExportError
from hubprune.export_hetero import hetero_config, is_hetero, load_hetero, remote_code, write_hetero
from hubprune.formats import _write_hetero
from hubprune.plan import Unit
from hubprune.shape import Dims, Shape
from hubprune.transforms import slice_state_dict, zero_fill
from tests.tiny import FAMILIES, tiny_model

SEQ = 20  # longer than the tiny models' sliding window (8)


def _units() -> list[Unit]:
    """KV group 1 (query heads 2, 3) of block 0, a quarter of block 1's MLP channels, block 2's
    attention and block 3's MLP."""
    return [
        Unit("heads", 0, indices=(1,)),
        Unit("channels", 1, indices=tuple(range(0, 96, 4))),
        Unit("attn", 2),
        Unit("mlp", 3),
    ]


def _export(model, shape: Shape, folder: Path) -> dict:
    adapter = adapter_for(model)
    state = slice_state_dict(model.state_dict(), adapter, shape)
    layers = [block.layer_config() for block in shape.blocks]
    return write_hetero(state, model.config, layers, folder, dtype=torch.float32)


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(4, 100, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def _load_stock(folder: Path):
    return AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, attn_implementation="eager"
    ).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_heterogeneous_export_matches_zero_filled_model(tmp_path: Path, family: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    shape = Shape.from_units(_units(), Dims.from_config(model.config))
    state = slice_state_dict(model.state_dict(), adapter, shape)
    record = _export(model, shape, tmp_path)
    truth = copy.deepcopy(model)
    zero_fill(truth, adapter, shape)
    ids = _ids()
    with torch.no_grad():
        expected = truth(ids).logits
        assert not torch.allclose(expected, model(ids).logits, atol=1e-3)  # the pruning does something
        stock = _load_stock(tmp_path)
        ours = load_hetero(tmp_path, dtype=torch.float32)
        torch.testing.assert_close(stock(ids).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(ids).logits, expected, atol=1e-5, rtol=0)

    # Weight names are the native ones minus removed modules, at their sliced sizes.
    saved = stock.state_dict()
    assert not any(k.startswith("model.layers.2.self_attn.") for k in saved)
    assert not any(k.startswith("model.layers.3.mlp.") for k in saved)
    for norm in adapter.attention_norms:
        assert f"model.layers.2.{norm}.weight" not in saved
    for norm in adapter.mlp_norms:
        assert f"model.layers.3.{norm}.weight" not in saved
    for name, tensor in state.items():
        assert saved[name].shape == tensor.shape, name

    # Parameters: what the sliced state dict holds, tied embeddings counted once.
    tied = model.config.tie_word_embeddings
    expected_params = sum(t.numel() for k, t in state.items() if not (tied and k == "lm_head.weight"))
    assert sum(p.numel() for p in stock.parameters()) == expected_params
    assert (stock.lm_head.weight is stock.model.embed_tokens.weight) == tied

    # KV cache: the block without attention stores nothing; greedy decoding with the cache equals
    # decoding without it.
    with torch.no_grad():
        cache = stock(ids, use_cache=True).past_key_values
        assert isinstance(cache.layers[2], DummyLayer)
        assert all(cache.layers[i].keys.shape[-2] > 0 for i in (0, 1, 3))
        assert cache.layers[0].keys.shape[1] == 1  # block 0 keeps one KV head
        cached = stock.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = stock.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert record["attention_blocks"] == 3 and record["mlp_blocks"] == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_export_equals_native_model(tmp_path: Path, family: str) -> None:
    model = tiny_model(family)
    _export(model, Shape.dense(Dims.from_config(model.config)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["per_layer_config"] == {} and config["base_model_type"] == model.config.model_type
    ids = _ids(2)
    with torch.no_grad():
        assert torch.equal(_load_stock(tmp_path)(ids).logits, model(ids).logits)


def test_config_follows_transformers_per_layer_schema(tmp_path: Path) -> None:
    model = tiny_model("qwen3")
    _export(model, Shape.from_units(_units(), Dims.from_config(model.config)), tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert is_hetero(written) and not is_hetero(model.config.to_dict())
    assert written["architectures"] == ["HubpruneForCausalLM"] and written["head_dim"] == 16
    assert set(written["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    assert written["per_layer_config"] == {
        "0": {"num_attention_heads": 2, "num_key_value_heads": 1},
        "1": {"intermediate_size": 72},
        "2": {"skip": ["attention"]},
        "3": {"skip": ["mlp"]},
    }
    assert (tmp_path / "modeling_hubprune.py").is_file() and (
        tmp_path / "configuration_hubprune.py"
    ).is_file()
    # Stock transformers reads the overrides through its heterogeneity mixin.
    config = AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert config.per_layer_config[0].num_attention_heads == 2
    assert config.per_layer_config[1].intermediate_size == 72
    assert config.per_layer_config[2].skip == ["attention"]


def test_rewriting_a_loaded_export_keeps_its_config(tmp_path: Path) -> None:
    """Would catch recovery's writer (`formats._write_hetero`) changing the config.json of an export
    without a rotated residual stream, e.g. by writing the loaded config's `rotated_residual: false`."""
    model = tiny_model("qwen3")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _export(model, Shape.from_units(_units(), Dims.from_config(model.config)), tmp_path / "a")
    _write_hetero(load_hetero(tmp_path / "a", dtype=torch.float32), None, None, tmp_path / "b")
    before, after = (json.loads((tmp_path / f / "config.json").read_text()) for f in "ab")
    assert before.pop("dtype", None) is None and after.pop("dtype") == "float32"  # the loaded dtype
    assert after == before
    assert not {"rotated_residual", "final_hidden_size"} & set(after)


def test_hidden_states_and_attention_backend_follow_transformers(tmp_path: Path) -> None:
    model = tiny_model("qwen3")
    _export(model, Shape.from_units(_units(), Dims.from_config(model.config)), tmp_path)
    loaded = load_hetero(tmp_path, dtype=torch.float32)
    # Each block's attention is built from its own config, which follows the model's backend.
    for backend in ("sdpa", "eager"):
        loaded.set_attn_implementation(backend)
        assert loaded.model.layers[0].self_attn.config._attn_implementation == backend
    with torch.no_grad():
        out = loaded(_ids(), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 5  # the embeddings and one per block
    assert len(out.attentions) == 3  # block 2 has no attention


def test_mismatched_weights_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    model = tiny_model("llama")
    adapter = adapter_for(model)
    shape = Shape.from_units(_units(), Dims.from_config(model.config))
    state = slice_state_dict(model.state_dict(), adapter, shape)
    layers = [block.layer_config() for block in shape.blocks]
    state["model.layers.1.mlp.down_proj.weight"] = model.state_dict()["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ExportError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        write_hetero(state, model.config, layers, tmp_path, dtype=torch.float32)
    del state["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ExportError, match=r"missing model\.layers\.1\.mlp\.down_proj\.weight"):
        write_hetero(state, model.config, layers, tmp_path, dtype=torch.float32)


def test_uneven_head_groups_are_refused() -> None:
    model = tiny_model("llama")
    layer = dict(attention=True, num_attention_heads=3, num_key_value_heads=1, mlp=True, intermediate_size=96)
    with pytest.raises(ExportError, match="2 query heads per KV head"):
        hetero_config(model.config, [layer] * 4)
    # The shipped config class refuses such a config.json too, and unknown `skip` values.
    dense = dict(layer, num_attention_heads=4, num_key_value_heads=2)
    written = hetero_config(model.config, [dense] * 4)
    with pytest.raises(StrictDataclassClassValidationError, match="2 query heads per KV head"):
        remote_code().HubpruneConfig(**{**written, "per_layer_config": {"1": {"num_attention_heads": 3}}})
    with pytest.raises(StrictDataclassClassValidationError, match="only \\['attention', 'mlp'\\]"):
        remote_code().HubpruneConfig(**{**written, "per_layer_config": {"1": {"skip": ["moe"]}}})
    assert remote_code().HubpruneConfig(**written).per_layer_config[1].num_attention_heads == 4


def test_load_hetero_refuses_other_folders(tmp_path: Path) -> None:
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(ExportError, match="not a hubprune heterogeneous export"):
        load_hetero(tmp_path, dtype=torch.float32)
