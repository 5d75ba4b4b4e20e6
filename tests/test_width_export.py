"""Width plans end to end on every family: in memory, plain export and compact export agree.

The truth is the in-memory model with the removed units masked (hubprune.transforms.masked);
the plain export zero-fills them in the native architecture; the compact export slices them away
(nemotron-nas where it can say so, else our heterogeneous format). All three must give the same
logits, generation with the KV cache must equal generation without it, and the compact model's
parameters and KV cache must be exactly what the cost model predicted from the plan.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hubprune.arch import adapter_for
from hubprune.cost import model_cost, plan_cost
from hubprune.export import write_plain
from hubprune.export_compact import write_compact_shape
from hubprune.export_hetero import hetero_config
from hubprune.methods import Budget
from hubprune.pipeline import CalibrationOptions, SourceOptions, prune
from hubprune.plan import Plan, Unit
from hubprune.shape import Dims, Shape
from hubprune.surgery import apply_plan
from hubprune.transforms import masked, unit_masks
from tests.test_finercut import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.tiny import FAMILIES, SAMPLE_TEXT, char_tokenizer, save_tiny, tiny_model

IDS = torch.randint(4, 100, (2, 20), generator=torch.Generator().manual_seed(1))
WIDTH_UNITS = [Unit("heads", 1, (1,)), Unit("channels", 2, tuple(range(1, 96, 4)))]  # 1 KV group; 25%


def _reload(folder, remote: bool):
    return AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=remote, attn_implementation="eager", dtype=torch.float32
    ).eval()


def _generate(model, use_cache: bool) -> torch.Tensor:
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=0)
    return model.generate(IDS[:1, :12], **kwargs)


def _cache_bytes_per_token(model) -> int:
    """Bytes the KV cache really holds per token after one forward pass."""
    out = model(input_ids=IDS[:1], use_cache=True)
    cache = out.past_key_values
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor) and tensor.numel():
                total += tensor[0].numel() * tensor.element_size() // tensor.shape[-2]
    return total


@pytest.mark.parametrize("model_type", FAMILIES)
@torch.no_grad()
def test_width_plan_in_memory_plain_and_compact_agree(model_type: str, tmp_path) -> None:
    """Would catch a transform, writer or remote-code path that slices the wrong rows, forgets a
    bias or q/k norm, breaks sliding windows or the cache, or a cost model that miscounts."""
    model = tiny_model(model_type)
    adapter = adapter_for(model)
    dims = Dims.from_config(model.config)
    plan = Plan("manual", "width", WIDTH_UNITS, dims=dims.to_dict())
    shape = plan.shape()
    with masked(model, adapter, unit_masks(shape)):
        truth = model(input_ids=IDS, use_cache=False).logits
    assert (truth - model(input_ids=IDS, use_cache=False).logits).abs().max() > 1e-4
    predicted = plan_cost(model, adapter, shape)

    plain_model = apply_plan(copy.deepcopy(model), adapter, plan, sublayers="zero")
    (tmp_path / "plain").mkdir()
    write_plain(plain_model, char_tokenizer(), tmp_path / "plain")
    plain = _reload(tmp_path / "plain", remote=False)
    torch.testing.assert_close(plain(input_ids=IDS, use_cache=False).logits, truth, atol=1e-5, rtol=0)
    assert torch.equal(_generate(plain, True), _generate(plain, False))

    (tmp_path / "compact").mkdir()
    record = write_compact_shape(copy.deepcopy(model), adapter, shape, char_tokenizer(), tmp_path / "compact")
    assert record["format"] == "compact" and record["trust_remote_code"] is True
    layers = [b.layer_config() for b in shape.blocks]
    written = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert written == json.loads(json.dumps(hetero_config(model.config, layers)))  # ours, not re-saved
    compact = _reload(tmp_path / "compact", remote=True)
    torch.testing.assert_close(compact(input_ids=IDS, use_cache=False).logits, truth, atol=1e-5, rtol=0)
    assert torch.equal(_generate(compact, True), _generate(compact, False))
    unique = {id(p): p.numel() for p in compact.parameters()}
    assert sum(unique.values()) == predicted["params_total"]
    assert _cache_bytes_per_token(compact) == predicted["kv_cache_bytes_per_token"]
    actual = model_cost(compact, adapter=adapter_for(model))
    assert actual["kv_cache_bytes_per_token"] == predicted["kv_cache_bytes_per_token"]
    assert (
        actual["params_total"]
        == predicted["params_total"]
        < model_cost(model, adapter=adapter)["params_total"]
    )


@pytest.mark.parametrize("model_type", ["qwen3", "gemma2", "gemma3_text", "phi3"])
@torch.no_grad()
def test_finercut_compact_export_for_families_nemotron_nas_cannot_express(model_type: str, tmp_path) -> None:
    """FinerCut through `prune --format compact` on families refused before: the heterogeneous
    export reloads with the plain export's logits and fewer parameters."""
    source = save_tiny(tmp_path / "base", model_type)
    (tmp_path / "calib.txt").write_text(SAMPLE_TEXT)
    runs = {}
    for fmt in ("plain", "compact"):
        runs[fmt] = prune(
            SourceOptions(str(source), dtype="float32"),
            "finercut",
            Budget(3),
            tmp_path / fmt,
            calibration=CalibrationOptions(dataset=str(tmp_path / "calib.txt"), samples=4, seq_len=16),
            batch_size=2,
            export_format=fmt,
        )
    assert runs["compact"].plan.removed == runs["plain"].plan.removed
    assert runs["compact"].export["schema"].startswith("hubprune heterogeneous")
    plain, compact = _reload(tmp_path / "plain", False), _reload(tmp_path / "compact", True)
    torch.testing.assert_close(compact(input_ids=IDS).logits, plain(input_ids=IDS).logits, atol=1e-5, rtol=0)
    assert torch.equal(_generate(compact, True), _generate(compact, False))
    assert runs["compact"].model_after["params_total"] < runs["plain"].model_after["params_total"]


def test_forcing_nemotron_nas_on_a_heads_plan_is_refused(tmp_path) -> None:
    """A format that cannot express the plan says why, before anything is written."""
    from hubprune.errors import ExportError

    model = tiny_model("llama")
    shape = Shape.from_units(WIDTH_UNITS, Dims.from_config(model.config))
    with pytest.raises(
        ExportError, match="nemotron-nas cannot express this plan: block 1 keeps 2 of 4 query heads"
    ):
        write_compact_shape(model, adapter_for(model), shape, None, tmp_path, schema="nemotron-nas")
    assert not any(tmp_path.iterdir())


def test_pruning_a_compact_export_again_is_refused(tmp_path) -> None:
    """A compact folder as the source of `prune` ends in one sentence, before any weights load."""
    from hubprune.errors import RecipeError

    model = tiny_model("llama")
    shape = Shape.from_units(WIDTH_UNITS, Dims.from_config(model.config))
    write_compact_shape(model, adapter_for(model), shape, char_tokenizer(), tmp_path)
    with pytest.raises(
        RecipeError, match="is a compact export \\(hetero\\); prune works on native checkpoints"
    ):
        prune(SourceOptions(str(tmp_path)), "reverse-order", Budget(1), tmp_path / "again")
