"""Removing attention / MLP sublayers in memory (hubprune.sublayers), on every family."""

from __future__ import annotations

import copy

import pytest
import torch

from hubprune.arch import adapter_for
from hubprune.errors import BudgetError
from hubprune.plan import Plan, Unit
from hubprune.shape import Dims, Shape
from hubprune.sublayers import (
    check_units,
    remove_sublayers,
    removed_sublayers,
    skipped_cache_layer_cls,
    sublayers_skipped,
)
from hubprune.surgery import apply_plan
from hubprune.transforms import zero_fill as zero_fill_shape
from tests.test_finercut import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.tiny import FAMILIES, tiny_model

# Attention of block 0 (the cache's default slot for the sequence length) and of both sliding
# blocks of the hybrid families (0 and 2), plus an MLP.
UNITS = [Unit("attn", 0), Unit("mlp", 1), Unit("attn", 2)]


def _ids(seed: int = 0, shape: tuple[int, int] = (2, 10)) -> torch.Tensor:
    return torch.randint(4, 100, shape, generator=torch.Generator().manual_seed(seed))


def zero_fill(model, adapter, units) -> None:
    """The plain export's zero-filling of `units` (hubprune.transforms, over the plan's shape)."""
    zero_fill_shape(model, adapter, Shape.from_units(units, Dims.from_config(model.config)))


@pytest.fixture(scope="module", params=FAMILIES)
def family_models(request):
    model = tiny_model(request.param)
    adapter = adapter_for(model)
    removed = copy.deepcopy(model)
    remove_sublayers(removed, adapter, UNITS)
    return request.param, model, adapter, removed


@torch.no_grad()
def test_removed_zero_filled_and_skipped_agree(family_models):
    """Would catch a stand-in that does not add exactly zero (e.g. Gemma's post-norm left in)."""
    _, model, adapter, removed = family_models
    zeroed = copy.deepcopy(model)
    zero_fill(zeroed, adapter, UNITS)
    ids = _ids()
    expected = removed(ids).logits
    assert torch.equal(zeroed(ids).logits, expected)
    with sublayers_skipped(model, adapter, UNITS):
        assert torch.equal(model(ids).logits, expected)
    assert not torch.allclose(model(ids).logits, expected)  # the context restored the model
    assert removed_sublayers(removed, adapter) == UNITS
    assert removed_sublayers(model, adapter) == []


def test_parameters_freed(family_models):
    """Would catch norms or projections left behind by the removal."""
    _, model, adapter, removed = family_models
    blocks = adapter.blocks(model)
    expected = sum(adapter.sublayer_params(blocks[u.block])[u.kind] for u in UNITS)
    before = sum(p.numel() for p in model.parameters())
    assert before - sum(p.numel() for p in removed.parameters()) == expected


@torch.no_grad()
def test_generate_with_cache_matches_no_cache(family_models):
    """Would catch a KV cache that expects a slot the removed attention never fills."""
    _, _, _, removed = family_models
    ids = _ids(1, (2, 6))
    kwargs = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    with_cache = removed.generate(ids, use_cache=True, **kwargs)
    without = removed.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)


@torch.no_grad()
def test_cache_stores_nothing_for_removed_attention(family_models):
    """Would catch a removal that saves parameters but still caches keys and values."""
    _, _, _, removed = family_models
    out = removed(_ids(), use_cache=True)
    layers = out.past_key_values.layers
    skipped = skipped_cache_layer_cls()
    assert [i for i, layer in enumerate(layers) if isinstance(layer, skipped)] == [0, 2]
    assert all(layer.keys is None for layer in layers if isinstance(layer, skipped))
    assert out.past_key_values.get_seq_length() == 10


def test_bad_units_refused():
    """Would catch removing every sublayer or a block that does not exist."""
    everything = [Unit(k, b) for b in range(4) for k in ("attn", "mlp")]
    with pytest.raises(BudgetError, match="at least one must remain"):
        check_units(everything, 4)
    with pytest.raises(BudgetError, match="does not exist"):
        check_units([Unit("mlp", 9)], 4)


@torch.no_grad()
def test_apply_plan_mixes_blocks_and_sublayers():
    """Would catch sublayer indices read after block removal renumbered the blocks."""
    model = tiny_model("qwen2", num_layers=5)
    adapter = adapter_for(model)
    plan = Plan("test", "mixed", [Unit("block", 1), Unit("attn", 3), Unit("mlp", 4)])
    reference = copy.deepcopy(model)
    zero_fill(reference, adapter, [Unit("attn", 3), Unit("mlp", 4)])
    from hubprune.surgery import remove_blocks

    remove_blocks(reference, adapter, [1])
    apply_plan(model, adapter, plan)
    assert removed_sublayers(model, adapter) == [Unit("attn", 2), Unit("mlp", 3)]
    ids = _ids()
    assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-6)
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(ids, **kwargs), model.generate(ids, use_cache=False, **kwargs))
