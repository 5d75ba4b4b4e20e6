"""What hubprune needs to know about a decoder-only model family, as plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: The residual stream; every other space is local to one block (STYLE.md §8, mergekit's spaces).
RESIDUAL = "residual"
#: Query heads x head_dim (what `q_proj` writes and `o_proj` reads), KV heads x head_dim, MLP channels.
QUERY, KV, CHANNELS = "q", "kv", "up"


@dataclass(frozen=True)
class Projection:
    """One linear layer of a block, by the spaces it reads (columns) and writes (rows).

    `sublayer` is "attn" or "mlp"; `name` is relative to that sublayer's module. A fused
    projection writes several spaces stacked along its rows, in order (Phi-3's `qkv_proj` writes
    `("q", "kv", "kv")`). Width transforms are written once over spaces: dropping KV group g of a
    block removes its slice from every `q` and `kv` row or column, dropping channel c removes
    row/column c of every `up` tensor, whatever the family calls them.
    """

    sublayer: str
    name: str
    reads: str
    writes: tuple[str, ...]


LLAMA_PROJECTIONS: tuple[Projection, ...] = (
    Projection("attn", "q_proj", RESIDUAL, (QUERY,)),
    Projection("attn", "k_proj", RESIDUAL, (KV,)),
    Projection("attn", "v_proj", RESIDUAL, (KV,)),
    Projection("attn", "o_proj", QUERY, (RESIDUAL,)),
    Projection("mlp", "gate_proj", RESIDUAL, (CHANNELS,)),
    Projection("mlp", "up_proj", RESIDUAL, (CHANNELS,)),
    Projection("mlp", "down_proj", CHANNELS, (RESIDUAL,)),
)


def get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    """`root.get_submodule`, kept here so adapters only ever deal in dotted names."""
    return root.get_submodule(dotted)


def _optional_submodule(root: nn.Module, dotted: str) -> nn.Module | None:
    """`root.get_submodule(dotted)`, or None where a compact model's block has no such module
    (a DeciLM block without attention has no `self_attn` at all)."""
    try:
        return root.get_submodule(dotted)
    except AttributeError:
        return None


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
    #: Every linear layer of a block and the spaces it reads and writes (see :class:`Projection`).
    projections: tuple[Projection, ...] = LLAMA_PROJECTIONS
    #: Config field holding the final-logit soft-cap (Gemma 2/3: ``cap * tanh(logits / cap)``).
    final_logit_softcap: str | None = None
    #: Why an orthogonal rotation of the residual stream does not leave this family's outputs
    #: unchanged (SliceGPT needs it to: :mod:`hubprune.rotation`); empty when it does.
    rotation_note: str = ""

    # -- tensor meaning ------------------------------------------------------------------------
    def projection(self, sublayer: str, name: str) -> Projection | None:
        """The projection `name` of the `sublayer` module, or None for a tensor that is not one
        (a norm, Qwen3's per-head q/k norms)."""
        return next((p for p in self.projections if p.sublayer == sublayer and p.name == name), None)

    def readers_of(self, space: str) -> list[Projection]:
        """Projections whose input columns live in `space` (where a unit of it can be masked)."""
        return [p for p in self.projections if p.reads == space]

    def final_logits(self, config: Any, logits: torch.Tensor) -> torch.Tensor:
        """The model's output transform applied to raw `lm_head` logits (Gemma's soft-capping)."""
        cap = getattr(config, self.final_logit_softcap, None) if self.final_logit_softcap else None
        return logits if not cap else torch.tanh(logits / cap) * cap

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

    def attention_of(self, block: nn.Module) -> nn.Module | None:
        """The block's attention module; None in a compact model's block that has none."""
        return _optional_submodule(block, self.attention)

    def mlp_of(self, block: nn.Module) -> nn.Module | None:
        """The block's MLP module; None in a compact model's block that has none."""
        return _optional_submodule(block, self.mlp)

    def sublayer_params(self, block: nn.Module) -> dict[str, int]:
        """Parameters of the attention and MLP sublayers of one block, each with its own norms
        (0 for a sublayer a compact model's block does not have)."""

        def count(names: Sequence[str]) -> int:
            modules = [_optional_submodule(block, n) for n in names]
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        return {
            "attn": count((self.attention, *self.attention_norms)),
            "mlp": count((self.mlp, *self.mlp_norms)),
        }
