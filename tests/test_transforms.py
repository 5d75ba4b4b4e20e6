"""Width transforms and masking (hubprune.transforms, hubprune.shape) on every family."""

from __future__ import annotations

import copy

import pytest
import torch

from hubprune.arch import adapter_for
from hubprune.errors import BudgetError
from hubprune.plan import Unit
from hubprune.shape import Dims, Shape
from hubprune.transforms import masked, pruned_shapes, slice_state_dict, unit_masks, zero_fill
from tests.tiny import FAMILIES, tiny_model

IDS = torch.randint(4, 100, (2, 20), generator=torch.Generator().manual_seed(0))
MIXED = [
    Unit("heads", 1, (1,)),
    Unit("channels", 2, tuple(range(0, 96, 4))),  # 24 of 96 channels: 25%
    Unit("attn", 3),
]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


@pytest.mark.parametrize("model_type", FAMILIES)
def test_masking_equals_zero_filled_weights(model_type: str) -> None:
    """Masks at run time and zero-filled weights remove the same units exactly, for every family;
    and both differ from the dense model (the units did contribute)."""
    model = tiny_model(model_type)
    adapter = adapter_for(model)
    shape = Shape.from_units(MIXED, Dims.from_config(model.config))
    dense = _logits(model)
    zeroed_model = copy.deepcopy(model)
    names = zero_fill(zeroed_model, adapter, shape)
    assert (
        any(".1." in n for n in names) and any(".2." in n for n in names) and any(".3." in n for n in names)
    )
    zeroed = _logits(zeroed_model)
    masks = unit_masks(shape)
    assert set(masks) == {1, 2}
    from hubprune.sublayers import sublayers_skipped

    with masked(model, adapter, masks), sublayers_skipped(model, adapter, [Unit("attn", 3)]):
        live = _logits(model)
    torch.testing.assert_close(live, zeroed, atol=1e-5, rtol=0)
    assert (live - dense).abs().max() > 1e-3


@pytest.mark.parametrize("model_type", ["llama", "phi3", "qwen2"])
def test_masks_with_a_batch_dimension_mask_each_row(model_type: str) -> None:
    """A (batch, units) mask gives row r the result of running with mask r alone."""
    model = tiny_model(model_type)
    adapter = adapter_for(model)
    ids = IDS[:1].repeat(2, 1)
    both = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with torch.no_grad(), masked(model, adapter, {0: {"heads": both}}):
        batched = model(input_ids=ids, use_cache=False).logits
    for row in range(2):
        with torch.no_grad(), masked(model, adapter, {0: {"heads": both[row]}}):
            single = model(input_ids=ids[:1], use_cache=False).logits
        torch.testing.assert_close(batched[row : row + 1], single, atol=1e-5, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 1e-4


@pytest.mark.parametrize("model_type", FAMILIES)
def test_sliced_tensors_have_the_predicted_shapes(model_type: str) -> None:
    """slice_state_dict keeps exactly the rows/columns pruned_shapes predicts, drops removed
    sublayers with their norms, and keeps the kept values (not, say, the first rows)."""
    model = tiny_model(model_type)
    adapter = adapter_for(model)
    shape = Shape.from_units(MIXED, Dims.from_config(model.config))
    state = model.state_dict()
    sliced = slice_state_dict(state, adapter, shape)
    predicted = pruned_shapes({k: tuple(v.shape) for k, v in state.items()}, adapter, shape)
    assert {k: tuple(v.shape) for k, v in sliced.items()} == predicted
    assert not any(k.startswith("model.layers.3.self_attn.") for k in sliced)
    assert all(not k.startswith(f"model.layers.3.{n}.") for n in adapter.attention_norms for k in sliced)
    down = "model.layers.2.mlp.down_proj.weight"
    assert sliced[down].shape[1] == 72
    kept = [c for c in range(96) if c % 4]
    torch.testing.assert_close(sliced[down], state[down][:, kept])
    o_proj = "model.layers.1.self_attn.o_proj.weight"
    head_dim = Dims.from_config(model.config).head_dim
    torch.testing.assert_close(sliced[o_proj], state[o_proj][:, : 2 * head_dim])


def test_a_block_without_any_kv_group_has_its_attention_removed() -> None:
    """Removing every KV group of a block is the same as removing its attention (documented
    choice); removing everything is refused."""
    dims = Dims(num_blocks=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=96)  # fmt: skip
    shape = Shape.from_units([Unit("heads", 0, (0, 1))], dims)
    assert not shape.blocks[0].attention and shape.blocks[0].mlp
    assert shape.to_dict()["blocks"][0]["attention"] is False
    with pytest.raises(BudgetError, match="KV group 2 of block 0 does not exist"):
        Shape.from_units([Unit("heads", 0, (2,))], dims)
    everything = [Unit("attn", 0), Unit("mlp", 0), Unit("block", 1)]
    with pytest.raises(BudgetError, match="at least one must remain"):
        Shape.from_units(everything, dims)
