"""Configuration of a heterogeneous pruned model for transformers 5.24+ (written by hubprune).

config.json holds every field of the source model's own config (`base_model_type` names its
model_type: "llama", "qwen3", "gemma2", ...) plus transformers' `per_layer_config`: a sparse
mapping from block index to the fields that differ in that block, e.g.

    "per_layer_config": {"1": {"num_attention_heads": 2, "num_key_value_heads": 1},
                         "2": {"skip": ["attention"]}, "3": {"intermediate_size": 72}}

`skip` lists removed sublayers ("attention", "mlp"). Query heads per KV head and `head_dim` are
the same in every block.

A sliced residual stream (SliceGPT: norm scales folded into the layers that read the norms,
the residual stream rotated and cut to a width per block) adds `"rotated_residual": true`,
`final_hidden_size` (the width after the last block) and `per_layer_config[i].hidden_size` for
each block whose width differs from the dense `hidden_size`. The global `hidden_size` stays the
dense width D: the weightless norms of such a model divide the sum of squares by D, so at full
width the model is exactly the dense one. Read globally, `hidden_size` is then ambiguous to
transformers; where the dense D is meant, read it with `_getattr_without_heterogeneous_validation`
(as :meth:`HubpruneConfig.dense_hidden_size` does).

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
#: Families whose residual stream can be rotated: the norms only read the stream (pre-norm) and
#: scale by their weight alone, so a norm's scale folds into the layers that read its output.
ROTATABLE = ("llama", "mistral", "qwen2", "qwen3", "phi3")


@strict  # runs validate_architecture after __init__, as on transformers' own configs
class HubpruneConfig(PreTrainedConfig):
    """The native config's fields of `base_model_type`, plus per-block overrides in `per_layer_config`."""

    model_type = "hubprune"

    base_model_type: str = "llama"
    # Declared because PreTrainedConfig drops undeclared generation keys such as use_cache.
    use_cache: bool = True
    # A rotated, per-block sliced residual stream (SliceGPT) and its width after the last block.
    rotated_residual: bool = False
    final_hidden_size: int | None = None

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

    def dense_hidden_size(self) -> int:
        """The dense model's `hidden_size` D, which the norms of a rotated model divide by."""
        return self._getattr_without_heterogeneous_validation("hidden_size")

    def residual_width(self, layer_idx: int) -> int:
        """The width of the residual stream entering block `layer_idx` (and between its attention
        and MLP); `num_hidden_layers` gives the width after the last block."""
        if layer_idx < self.num_hidden_layers:
            return self.per_layer_config[layer_idx].hidden_size
        return self.final_hidden_size if self.rotated_residual else self.dense_hidden_size()

    @property
    def _attn_implementation(self) -> str | None:
        owner = self.__dict__.get("_backend_owner")
        return owner._attn_implementation if owner is not None else self._attn_implementation_internal

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | dict | None) -> None:
        PreTrainedConfig._attn_implementation.fset(self, value)

    def validate_architecture(self) -> None:
        """A fixed head size, the same query heads per KV head in every block, known `skip` values,
        residual widths that a rotated model of a rotatable family can have."""
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
        self._validate_residual()

    def _validate_residual(self) -> None:
        """Per-block residual widths only on a rotated residual stream, each in [1, D]; a rotated
        model of a rotatable family, with no skipped sublayer and an untied head."""
        dense = self.dense_hidden_size()
        widths = [self.per_layer_config[i].hidden_size for i in range(self.num_hidden_layers)]
        if not self.rotated_residual:
            if any(width != dense for width in widths):
                raise ValueError("a per-block hidden_size needs rotated_residual (a rotated residual stream)")
            return
        if self.base_model_type not in ROTATABLE:
            raise ValueError(
                f"a {self.base_model_type} model cannot have a rotated residual stream: Gemma normalises "
                "each sublayer's output and scales its norms by 1 + weight, so a rotation of the residual "
                "stream does not commute with its norms"
            )
        for i, width in enumerate(widths):
            if self.skipped(i):
                raise ValueError(
                    f"block {i} skips {self.skipped(i)}; a rotated residual stream needs every sublayer"
                )
            if not 1 <= width <= dense:
                raise ValueError(f"block {i} has a residual width of {width}, outside [1, {dense}]")
        final = self.final_hidden_size
        if final is None or not 1 <= final <= dense:
            raise ValueError(
                f"a rotated residual stream needs final_hidden_size in [1, {dense}], not {final}"
            )
        if self.tie_word_embeddings:
            raise ValueError(
                "a rotated residual stream needs tie_word_embeddings false (embeddings and lm_head are "
                "rotated differently)"
            )


__all__ = ["HubpruneConfig"]
