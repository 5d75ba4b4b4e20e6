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

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

SKIPPABLE = ("attention", "mlp")


@strict  # runs validate_architecture after __init__, as on transformers' own configs
class HubpruneConfig(PreTrainedConfig):
    """The native config's fields of `base_model_type`, plus per-block overrides in `per_layer_config`."""

    model_type = "hubprune"

    base_model_type: str = "llama"
    # Declared because PreTrainedConfig drops undeclared generation keys such as use_cache.
    use_cache: bool = True

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
        """A fixed head size, the same query heads per KV head in every block, known `skip` values."""
        if not self._hasattr_without_heterogeneous_validation("num_attention_heads"):
            return  # a bare HubpruneConfig(), which transformers builds to find default values
        if getattr(self, "head_dim", None) is None:
            raise ValueError("a hubprune config needs an explicit head_dim (it is the same in every block)")
        if getattr(self, "use_bidirectional_attention", False):
            raise ValueError("bidirectional attention (Gemma 3 embedding models) is not supported")
        heads = self._getattr_without_heterogeneous_validation("num_attention_heads")
        kv_heads = self._getattr_without_heterogeneous_validation("num_key_value_heads") or heads
        for i in range(self.num_hidden_layers):
            layer = self.per_layer_config[i]
            unknown = set(getattr(layer, "skip", None) or []) - set(SKIPPABLE)
            if unknown:
                raise ValueError(f"block {i} skips {sorted(unknown)}; only {list(SKIPPABLE)} can be skipped")
            if layer.num_attention_heads != (layer.num_key_value_heads or heads) * (heads // kv_heads):
                raise ValueError(
                    f"block {i} has {layer.num_attention_heads} query heads for {layer.num_key_value_heads} "
                    f"KV heads; every block has {heads // kv_heads} query heads per KV head"
                )


__all__ = ["HubpruneConfig"]
