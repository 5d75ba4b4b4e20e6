"""Configuration of a heterogeneous pruned model for transformers 5.24+ (written by hubprune).

config.json holds every field of the source model's own config (`base_model_type` names its
model_type: "llama", "qwen3", "gemma2", ...) plus transformers' `per_layer_config`: a sparse
mapping from block index to the fields that differ in that block, e.g.

    "per_layer_config": {"1": {"num_attention_heads": 2, "num_key_value_heads": 1},
                         "2": {"skip": ["attention"]}, "3": {"intermediate_size": 72}}

`skip` lists removed sublayers ("attention", "mlp"). Query heads per KV head and `head_dim` are
the same in every block. A per-block `hidden_size` (slicing) would be one more key here.

Why transformers' heterogeneity mixin is used rather than a look-alike field:
`PreTrainedConfig.__post_init__` applies a `per_layer_config` key of any config.json through
`HeterogeneousConfigMixin`, so the same file read by a later transformers whose Llama / Qwen
models build blocks from `config.per_layer_config[i]` means the same thing there. Going through
the mixin here also makes global reads of a per-block field (`config.num_attention_heads`) raise
`AmbiguousGlobalPerLayerAttributeError` instead of silently answering with the unpruned value,
and transformers' own heterogeneity-aware code (cache layers per block, static-cache head shapes)
sees the true per-block head counts. Code that needs a per-block value reads
`config.per_layer_config[i].<field>`; transformers' cache and mask helpers only read global
fields (`layer_types`, `sliding_window`, ...) and work unchanged.
"""

from __future__ import annotations

from typing import Any

from transformers.configuration_utils import PreTrainedConfig

SKIPPABLE = ("attention", "mlp")


class HubpruneConfig(PreTrainedConfig):
    """The native config's fields of `base_model_type`, plus per-block overrides in `per_layer_config`."""

    model_type = "hubprune"

    base_model_type: str = "llama"
    # Declared because PreTrainedConfig drops undeclared generation keys such as use_cache.
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if getattr(self, "head_dim", None) is None:
            raise ValueError(
                "a hubprune config needs an explicit head_dim (it stays the same in every block)"
            )
        if getattr(self, "use_bidirectional_attention", False):
            raise ValueError("bidirectional attention (Gemma 3 embedding models) is not supported")

    def layer_config(self, layer_idx: int) -> HubpruneConfig:
        """The homogeneous config of block `layer_idx`, used to build its native modules.

        It follows this config's attention backend, so `set_attn_implementation` on the model
        reaches every block.
        """
        config = self.per_layer_config[layer_idx]
        if config is not self:  # a homogeneous config is its own layer config
            config.__dict__["_backend_owner"] = self
        return config

    def skipped(self, layer_idx: int) -> list[str]:
        """The sublayers ("attention", "mlp") removed from block `layer_idx`."""
        return list(getattr(self.per_layer_config[layer_idx], "skip", None) or [])

    @property
    def _attn_implementation(self) -> str | None:
        owner = self.__dict__.get("_backend_owner")
        return owner._attn_implementation if owner is not None else self._attn_implementation_internal

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | dict | None) -> None:
        PreTrainedConfig._attn_implementation.fset(self, value)

    def validate_architecture(self) -> None:
        """Every block's query heads split evenly into its KV heads; skipped sublayers are known."""
        for i in range(self.num_hidden_layers):
            layer = self.per_layer_config[i] if self.is_heterogeneous else self
            unknown = set(getattr(layer, "skip", None) or []) - set(SKIPPABLE)
            if unknown:
                raise ValueError(f"block {i} skips {sorted(unknown)}; only {list(SKIPPABLE)} can be skipped")
            heads, kv_heads = (
                layer.num_attention_heads,
                layer.num_key_value_heads or layer.num_attention_heads,
            )
            if heads % kv_heads:
                raise ValueError(f"block {i}: {heads} query heads do not split into {kv_heads} KV heads")


__all__ = ["HubpruneConfig"]
