"""DeciLM / `nemotron-nas` model for transformers 5 (written by hubprune).

A Llama model whose blocks may lack attention or MLP (`block_configs[i].attention.no_op`,
`.ffn.no_op`) and may differ in KV heads and MLP width. Built from transformers' own Llama
modules, so attention backends (eager, sdpa, flash) and rotary scaling behave as in Llama.

KV cache: a block without attention stores nothing. Caches are created with one slot per block;
a block without attention turns its slot into a dummy slot on first use, which transformers'
cache helpers skip when they look for the sequence length or the mask sizes.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin, DummyLayer, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .configuration_decilm import DeciLMConfig


def _cache_arg_of(fn: Any) -> str:
    """The name `fn` takes the KV cache by: transformers renamed `past_key_values` to `cache`
    during 5.x, and this file runs on either side of the rename."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


_ATTENTION_CACHE_ARG = _cache_arg_of(LlamaAttention.forward)
_MASK_CACHE_ARG = _cache_arg_of(create_causal_mask)


def _pop_cache(past_key_values: Cache | None, kwargs: dict[str, Any]) -> Cache | None:
    """The cache, whichever name the caller (or `generate()`) used for it."""
    cache = kwargs.pop("cache", None)
    return cache if cache is not None else past_key_values


def _output_cache(outputs: BaseModelOutputWithPast) -> Cache | None:
    cache = outputs.get("cache")
    return cache if cache is not None else outputs.get("past_key_values")


class _NoAttentionSlot(DummyLayer):
    """Cache slot of a block without attention; answers size queries for the first real slot."""

    def __init__(self, cache: Cache) -> None:
        super().__init__()
        self._cache = cache
        self.is_sliding = False

    def _delegate(self) -> Any:
        return next((layer for layer in self._cache.layers if isinstance(layer, CacheLayerMixin)), None)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        layer = self._delegate()
        return layer.get_mask_sizes(query_length) if layer is not None else (query_length, 0)

    def get_seq_length(self) -> int:
        layer = self._delegate()
        return layer.get_seq_length() if layer is not None else 0


def _release_slot(cache: Cache | None, layer_idx: int) -> None:
    if cache is None or not hasattr(cache, "layers"):
        return
    factory = getattr(cache, "layer_class_to_replicate", None)
    while len(cache.layers) <= layer_idx and factory is not None:
        cache.layers.append(factory())
    if layer_idx < len(cache.layers) and not isinstance(cache.layers[layer_idx], _NoAttentionSlot):
        cache.layers[layer_idx] = _NoAttentionSlot(cache)


class DeciLMDecoderLayer(nn.Module):
    """A Llama block whose attention and MLP are each optional."""

    def __init__(self, config: DeciLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        block = config.block_configs[layer_idx]
        self.has_attention = not block.attention.no_op
        self.has_mlp = not block.ffn.no_op
        if self.has_attention:
            attn_config = copy.deepcopy(config)
            attn_config.num_key_value_heads = config.num_key_value_heads_of(layer_idx)
            # vLLM's rule: `attention_bias` covers q/k/v/o; `qkv_bias`, when present, overrides q/k/v.
            o_bias = bool(getattr(config, "attention_bias", False))
            attn_config.attention_bias = bool(getattr(config, "qkv_bias", o_bias))
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = LlamaAttention(attn_config, layer_idx)
            if self.self_attn.o_proj.bias is not None and not o_bias:
                out = self.self_attn.o_proj
                self.self_attn.o_proj = nn.Linear(out.in_features, out.out_features, bias=False)
            self.self_attn.config = config  # follow later changes of the attention backend
        if self.has_mlp:
            mlp_config = copy.deepcopy(config)
            mlp_config.intermediate_size = config.intermediate_size_of(layer_idx)
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = LlamaMLP(mlp_config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        cache = _pop_cache(past_key_values, kwargs)
        if self.has_attention:
            residual = hidden_states
            hidden_states, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **{_ATTENTION_CACHE_ARG: cache},
                **kwargs,
            )
            hidden_states = residual + hidden_states
        else:
            _release_slot(cache, self.layer_idx)
        if self.has_mlp:
            residual = hidden_states
            hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DeciLMPreTrainedModel(PreTrainedModel):
    config_class = DeciLMConfig
    config: DeciLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DeciLMDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class DeciLMModel(DeciLMPreTrainedModel):
    def __init__(self, config: DeciLMConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([DeciLMDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        cache = _pop_cache(past_key_values, kwargs)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{_MASK_CACHE_ARG: cache},
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=use_cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=cache)


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DeciLMConfig) -> None:
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=_pop_cache(past_key_values, kwargs),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=_output_cache(outputs))


__all__ = ["DeciLMForCausalLM", "DeciLMModel", "DeciLMPreTrainedModel"]
