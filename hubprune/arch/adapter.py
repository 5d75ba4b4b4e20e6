"""What hubprune needs to know about a decoder-only model family, as plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn


def get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    """`root.get_submodule`, kept here so adapters only ever deal in dotted names."""
    return root.get_submodule(dotted)


@dataclass(frozen=True)
class ArchAdapter:
    """Where the parts of a model family live, by attribute name.

    Names are relative: `layers`, `embed`, `final_norm`, `decoder` to the `*ForCausalLM` model;
    `attention`, `mlp` and the norms to one decoder block; output projections to the attention or
    MLP module. `per_layer_config` lists the config fields that hold one entry per block (they are
    sliced when blocks are removed); `window_prefix_config` lists integer fields counting a prefix
    of blocks (Qwen's `max_window_layers`), recounted over the kept blocks.
    """

    family: str
    model_types: tuple[str, ...]
    decoder: str = "model"
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    attention: str = "self_attn"
    mlp: str = "mlp"
    attention_norms: tuple[str, ...] = ("input_layernorm",)
    mlp_norms: tuple[str, ...] = ("post_attention_layernorm",)
    attention_out: str = "o_proj"
    mlp_out: str = "down_proj"
    attention_in: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    mlp_in: tuple[str, ...] = ("gate_proj", "up_proj")
    per_layer_config: tuple[str, ...] = ("layer_types",)
    window_prefix_config: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    notes: str = ""
    extra: dict = field(default_factory=dict)
    # Compact export of sublayer removal: "decilm" when the nemotron-nas `block_configs` schema
    # (a Llama block with optional attention / MLP) expresses the family exactly, else None with
    # `compact_note` saying why not.
    compact_schema: str | None = None
    compact_note: str = ""

    # -- navigation ---------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        layers = get_submodule(model, self.layers)
        assert isinstance(layers, nn.ModuleList), f"{self.layers} is not a ModuleList"
        return layers

    def num_blocks(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def decoder_model(self, model: nn.Module) -> nn.Module:
        """The backbone without `lm_head`: running it yields hidden states without logits."""
        return get_submodule(model, self.decoder)

    def attention_of(self, block: nn.Module) -> nn.Module:
        return get_submodule(block, self.attention)

    def mlp_of(self, block: nn.Module) -> nn.Module:
        return get_submodule(block, self.mlp)

    def sublayer_params(self, block: nn.Module) -> dict[str, int]:
        """Parameters of the attention and MLP sublayers of one block, each with its own norms."""

        def count(modules: Sequence[nn.Module]) -> int:
            return sum(p.numel() for m in modules for p in m.parameters())

        attn = [self.attention_of(block)] + [get_submodule(block, n) for n in self.attention_norms]
        mlp = [self.mlp_of(block)] + [get_submodule(block, n) for n in self.mlp_norms]
        return {"attn": count(attn), "mlp": count(mlp)}
