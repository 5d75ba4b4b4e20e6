"""Architecture adapters: every family resolves and its named parts exist on a real model."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from hubprune.arch import ALL, adapter_for, supported_model_types
from hubprune.errors import UnsupportedArchitectureError
from tests.tiny import FAMILIES, tiny_model


@pytest.mark.parametrize("model_type", FAMILIES)
def test_adapter_names_exist(model_type):
    """Would catch: an adapter naming a module the family does not have."""
    model = tiny_model(model_type)
    adapter = adapter_for(model)
    assert model_type in adapter.model_types
    for name in (adapter.embed, adapter.final_norm, adapter.lm_head, adapter.decoder):
        model.get_submodule(name)
    block = adapter.blocks(model)[0]
    attention, mlp = adapter.attention_of(block), adapter.mlp_of(block)
    for name in adapter.attention_in + (adapter.attention_out,):
        attention.get_submodule(name)
    for name in adapter.mlp_in + (adapter.mlp_out,):
        mlp.get_submodule(name)
    for name in adapter.attention_norms + adapter.mlp_norms:
        block.get_submodule(name)
    sizes = adapter.sublayer_params(block)
    assert sizes["attn"] + sizes["mlp"] == sum(p.numel() for p in block.parameters())
    names = {n.split(".")[-1] for n, _ in block.named_modules()}
    assert set(adapter.lora_targets) <= names


def test_seven_families():
    assert len(ALL) == 7
    assert supported_model_types() == sorted(FAMILIES)


def test_unsupported_family_names_the_supported_ones():
    config = AutoConfig.for_model("gpt2")
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2' is not supported.*llama.*qwen3"):
        adapter_for(config)
