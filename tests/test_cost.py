"""Size and cost (hubprune.cost) on tiny models, against hand-computed numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubprune.arch import adapter_for
from hubprune.cost import bytes_on_disk, cost_change, model_cost
from hubprune.plan import Plan, Unit
from hubprune.shape import Dims
from tests.tiny import FAMILIES, tiny_model

# tiny models: hidden 64, MLP 96, 4 query heads / 2 KV heads of 16, vocab 128, fp32
HIDDEN, MLP, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 64, 96, 4, 2, 16, 128
ATTN_LINEAR = HIDDEN * HEADS * HEAD_DIM * 2 + HIDDEN * KV_HEADS * HEAD_DIM * 2  # q, o + k, v
MLP_LINEAR = 3 * HIDDEN * MLP  # gate, up, down


def _linear_flops(blocks: int) -> int:
    return 2 * (blocks * (ATTN_LINEAR + MLP_LINEAR) + HIDDEN * VOCAB)  # + the (tied) lm_head


@pytest.mark.parametrize("blocks", [4, 3])
def test_flops_and_kv_cache_by_hand(blocks: int) -> None:
    """Catches a dropped lm_head (tied, but still a matmul), a wrong attention term, or a KV
    cache counted with query heads instead of KV heads."""
    model = tiny_model("llama", num_layers=blocks)
    cost = model_cost(model, adapter=adapter_for(model), context=100)
    attention = blocks * 4 * HEADS * HEAD_DIM * 100
    assert cost["flops_per_token_detail"]["linear"] == _linear_flops(blocks)
    assert cost["flops_per_token"] == _linear_flops(blocks) + attention
    assert cost["kv_cache_bytes_per_token"] == 2 * KV_HEADS * HEAD_DIM * blocks * 4
    assert cost["attention_layers"] == cost["num_blocks"] == blocks
    assert cost["zero_filled"] is None and cost["nominal"] is None


def test_parameters_by_hand_and_bytes_on_disk(tmp_path: Path) -> None:
    """Tied embeddings counted once; bytes on disk are the safetensors files actually written."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    model.save_pretrained(tmp_path)
    cost = model_cost(model, adapter=adapter, folder=tmp_path)
    norms = HIDDEN * (2 * 4 + 1)  # two per block, one final; this tiny Llama has no biases
    assert cost["params_total"] == 4 * (ATTN_LINEAR + MLP_LINEAR) + norms + HIDDEN * VOCAB
    assert cost["params_non_embedding"] == cost["params_total"] - HIDDEN * VOCAB
    assert cost["weight_bytes"] == 4 * cost["params_total"]
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert cost["bytes_on_disk"] == on_disk >= cost["weight_bytes"]
    assert bytes_on_disk(tmp_path / "absent") is None
    assert model_cost(model, adapter=adapter)["bytes_on_disk"] is None


def test_sliding_window_layers_attend_to_the_window_only() -> None:
    """Qwen 2 tiny: layers 0 and 2 slide over 8 positions, so at context 100 they cost 8/100."""
    model = tiny_model("qwen2")
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    cost = model_cost(model, adapter=adapter_for(model), context=100)
    per_position = 4 * model.config.num_attention_heads * head_dim
    assert cost["flops_per_token_detail"]["attention"] == per_position * (8 + 100 + 8 + 100)


def test_untied_lm_head_is_embedding_too() -> None:
    model = tiny_model("phi3")
    cost = model_cost(model, adapter=adapter_for(model))
    assert not cost["tied_embeddings"]
    assert cost["params_total"] - cost["params_non_embedding"] == 2 * HIDDEN * VOCAB


def test_removed_attention_is_neither_cached_nor_computed() -> None:
    """Catches a compact prune (attention swapped for a stand-in) still counting that layer's KV
    cache and attention FLOPs in the manifest's `model_after`."""
    from hubprune.sublayers import remove_sublayers

    model = tiny_model("llama", num_layers=4)
    adapter = adapter_for(model)
    dense = model_cost(model, adapter=adapter, context=100)
    remove_sublayers(model, adapter, [Unit("attn", 1), Unit("mlp", 2)])
    cost = model_cost(model, adapter=adapter, context=100)
    assert cost["num_blocks"] == 4 and cost["attention_layers"] == 3
    assert cost["kv_cache_bytes_per_token"] == 2 * KV_HEADS * HEAD_DIM * 3 * 4
    assert cost["flops_per_token_detail"]["attention"] == 3 * 4 * HEADS * HEAD_DIM * 100
    assert (
        cost["flops_per_token"]
        == dense["flops_per_token"] - 2 * (ATTN_LINEAR + MLP_LINEAR) - 4 * HEADS * HEAD_DIM * 100
    )
    assert cost["params_total"] == dense["params_total"] - ATTN_LINEAR - MLP_LINEAR - 2 * HIDDEN


def test_zero_filled_sublayers_save_nothing_and_say_so() -> None:
    """A plain export of removed attention/MLP sublayers keeps every weight: the actual cost must
    equal the dense one, and the nominal (compact) cost must drop by exactly those sublayers."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    dense = model_cost(model, adapter=adapter, context=100)
    dims = Dims.from_config(model.config).to_dict()
    plan = Plan("finercut", "sublayer", [Unit("attn", 1), Unit("mlp", 2)], dims=dims)
    cost = model_cost(model, adapter=adapter, plan=plan, export_format="plain", context=100)
    for key in ("params_total", "flops_per_token", "kv_cache_bytes_per_token", "weight_bytes"):
        assert cost[key] == dense[key]
    assert cost["zero_filled"]["units"] == ["attn 1", "mlp 2"]
    assert cost["zero_filled"]["savings_realised"] is False
    assert "saves" not in cost["zero_filled"]["note"] and "zero-filled" in cost["zero_filled"]["note"]
    blocks = adapter.blocks(model)
    removed = adapter.sublayer_params(blocks[1])["attn"] + adapter.sublayer_params(blocks[2])["mlp"]
    nominal = cost["nominal"]
    assert nominal["params_total"] == dense["params_total"] - removed
    assert nominal["attention_layers"] == 3
    assert nominal["kv_cache_bytes_per_token"] == dense["kv_cache_bytes_per_token"] * 3 // 4
    assert nominal["flops_per_token"] == dense["flops_per_token"] - 2 * (ATTN_LINEAR + MLP_LINEAR) - (
        4 * HEADS * HEAD_DIM * 100
    )
    compact = model_cost(model, adapter=adapter, plan=plan, export_format="compact")
    assert compact["zero_filled"] is None  # a compact export really removes them
    blocks_plan = Plan("reverse-order", "block", [Unit("block", 3)])
    assert model_cost(model, adapter=adapter, plan=blocks_plan, export_format="plain")["zero_filled"] is None


def test_cost_change_is_relative() -> None:
    change = cost_change(
        {"params_total": 100, "flops_per_token": 10, "kv_cache_bytes_per_token": 8, "bytes_on_disk": None},
        {"params_total": 75, "flops_per_token": 10, "kv_cache_bytes_per_token": 6, "bytes_on_disk": 5},
    )
    assert change["params_total"] == pytest.approx(-0.25)
    assert change["flops_per_token"] == 0
    assert change["kv_cache_bytes_per_token"] == pytest.approx(-0.25)
    assert change["bytes_on_disk"] is None


@pytest.mark.parametrize("model_type", FAMILIES)
def test_cost_of_a_shape_matches_the_model_and_its_sliced_tensors(model_type: str) -> None:
    """plan_cost of the dense shape equals model_cost of the model (params, FLOPs, KV cache); under
    a width shape its parameter count is the numel of the sliced tensors, and KV cache / attention
    FLOPs drop by exactly the removed KV group and attention sublayer."""
    from hubprune.cost import plan_cost
    from hubprune.shape import Shape
    from hubprune.transforms import slice_state_dict

    model = tiny_model(model_type)
    adapter = adapter_for(model)
    dims = Dims.from_config(model.config)
    dense = model_cost(model, adapter=adapter, context=100)
    same = plan_cost(model, adapter, Shape.dense(dims), context=100)
    for key in ("params_total", "params_non_embedding", "flops_per_token", "kv_cache_bytes_per_token"):
        assert same[key] == dense[key], key
    units = [Unit("heads", 1, (1,)), Unit("channels", 2, tuple(range(24))), Unit("attn", 3)]
    shape = Shape.from_units(units, dims)
    cost = plan_cost(model, adapter, shape, context=100)
    tied_twice = len(model.state_dict()) - len(dict(model.named_parameters()))
    sliced = slice_state_dict(model.state_dict(), adapter, shape)
    if tied_twice:
        sliced.pop(adapter.lm_head + ".weight")
    assert cost["params_total"] == sum(t.numel() for t in sliced.values())
    per_kv_layer = dense["kv_cache_bytes_per_token"] // (dims.num_blocks * dims.num_key_value_heads)
    assert cost["kv_cache_bytes_per_token"] == dense["kv_cache_bytes_per_token"] - 3 * per_kv_layer
    assert cost["attention_layers"] == dims.num_blocks - 1
