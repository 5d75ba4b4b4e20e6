"""A heterogeneous pruned model for transformers 5.24+ (written by hubprune).

One class for seven families (`config.base_model_type`: llama, mistral, qwen2, qwen3, gemma2,
gemma3_text, phi3). Each block is built at its own size from `config.per_layer_config[i]` out of
the family's own transformers modules (attention, MLP, RMSNorm, rotary embedding, scaled word
embedding), so attention backends, rotary variants, q/k norms, soft-capping and sliding windows
behave as in the native model. Weight names are the native checkpoint's
(`model.layers.3.self_attn.q_proj.weight`, ...); a block without attention has no `self_attn.*`
and no attention norms, one without MLP no `mlp.*` and no MLP norms.

A rotated residual stream (`config.rotated_residual`, SliceGPT) has its norm scales folded into
the layers that read the norms, so every norm is a weightless :class:`FoldedRMSNorm`; the stream
has its own width per block (`config.residual_width(i)`), and each sublayer's residual connection
goes through a shortcut matrix (`attn_shortcut`, `mlp_shortcut`: the change of basis, and of
width, between the rotations before and after it). The MLP writes the next block's width.

KV cache: a block without attention stores nothing. Its cache slot becomes a transformers
`DummyLayer` before the masks are built; transformers' cache and mask helpers skip dummy slots
when they look for the sequence length or the first attention layer of a kind.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DummyLayer, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_hubprune import HubpruneConfig


@dataclass(frozen=True)
class _Family:
    """Where a family's modules live and how its block wires them."""

    module: str  # transformers.models.<module>.modeling_<module>
    prefix: str  # class name prefix: <prefix>Attention, <prefix>MLP, <prefix>RMSNorm, <prefix>RotaryEmbedding
    attention_norms: tuple[str, ...] = ("input_layernorm",)  # before the attention [, after it]
    mlp_norms: tuple[str, ...] = ("post_attention_layernorm",)  # before the MLP [, after it]
    scaled_embedding: bool = False  # <prefix>TextScaledWordEmbedding (times sqrt(hidden_size))
    rope_per_layer_type: bool = False  # the rotary embedding takes the layer type (local / global rope)
    residual_dropout: str | None = None  # config field of the dropout on each sublayer's output

    def cls(self, name: str) -> type[nn.Module]:
        module = importlib.import_module(f"transformers.models.{self.module}.modeling_{self.module}")
        return getattr(module, self.prefix + name)


_SANDWICH = dict(
    attention_norms=("input_layernorm", "post_attention_layernorm"),
    mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
)
FAMILIES = {
    "llama": _Family("llama", "Llama"),
    "mistral": _Family("mistral", "Mistral"),
    "qwen2": _Family("qwen2", "Qwen2"),
    "qwen3": _Family("qwen3", "Qwen3"),
    "gemma2": _Family("gemma2", "Gemma2", scaled_embedding=True, **_SANDWICH),
    "gemma3_text": _Family("gemma3", "Gemma3", scaled_embedding=True, rope_per_layer_type=True, **_SANDWICH),
    "phi3": _Family("phi3", "Phi3", residual_dropout="resid_pdrop"),
}
_MASKS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


def family_of(config: HubpruneConfig) -> _Family:
    """The family table entry of `config.base_model_type`."""
    try:
        return FAMILIES[config.base_model_type]
    except KeyError:
        raise ValueError(
            f"base_model_type '{config.base_model_type}' is not one of: {', '.join(FAMILIES)}"
        ) from None


def layer_type(config: HubpruneConfig, layer_idx: int) -> str:
    """The attention kind of block `layer_idx`, read as the native model reads it."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return layer_types[layer_idx]
    # Llama, Mistral and Phi-3 have no layer_types: one window (or none) for every block.
    return "full_attention" if getattr(config, "sliding_window", None) is None else "sliding_attention"


def release_cache_slot(cache: Cache | None, layer_idx: int) -> None:
    """Make slot `layer_idx` of `cache` a `DummyLayer` (stores nothing); idempotent."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return
    factory = getattr(cache, "layer_class_to_replicate", None)
    while len(layers) <= layer_idx and factory is not None:
        layers.append(factory())
    if layer_idx < len(layers) and not isinstance(layers[layer_idx], DummyLayer):
        layers[layer_idx] = DummyLayer()


class FoldedRMSNorm(nn.Module):
    """An RMS norm without a scale (folded into the layers that read it), over the dense width:
    the sum of squares of a sliced residual is divided by `dense_size`, not by its own width."""

    def __init__(self, dense_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dense_size = dense_size
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.dense_size + self.variance_epsilon)
        return x.to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"dense_size={self.dense_size}, eps={self.variance_epsilon}"


def residual_norm(config: HubpruneConfig) -> nn.Module:
    """One norm of the residual stream: the family's RMSNorm, or a weightless
    :class:`FoldedRMSNorm` when the residual stream is rotated."""
    norm = FoldedRMSNorm if config.rotated_residual else family_of(config).cls("RMSNorm")
    return norm(config.dense_hidden_size(), eps=config.rms_norm_eps)


class HubpruneDecoderLayer(GradientCheckpointingLayer):
    """A block of the native family at its own size; its attention and MLP are each optional.
    On a rotated residual stream each residual connection goes through a shortcut matrix."""

    def __init__(self, config: HubpruneConfig, layer_idx: int) -> None:
        super().__init__()
        family = family_of(config)
        layer_config = config.layer_config(layer_idx)
        skipped = config.skipped(layer_idx)
        self.layer_idx = layer_idx
        self.attention_type = layer_type(config, layer_idx)
        self.attention_norms = () if "attention" in skipped else family.attention_norms
        self.mlp_norms = () if "mlp" in skipped else family.mlp_norms
        for name in self.attention_norms + self.mlp_norms:
            setattr(self, name, residual_norm(config))
        if self.attention_norms:
            self.self_attn = family.cls("Attention")(config=layer_config, layer_idx=layer_idx)
        if self.mlp_norms:
            self.mlp = family.cls("MLP")(layer_config)
        if config.rotated_residual:  # every sublayer is kept (the config refuses `skip`)
            width, out = config.residual_width(layer_idx), config.residual_width(layer_idx + 1)
            self.attn_shortcut = nn.Linear(width, width, bias=False)
            self.mlp_shortcut = nn.Linear(width, out, bias=False)
            if out != width:  # the MLP writes into the next block's residual stream
                down = self.mlp.down_proj
                self.mlp.down_proj = nn.Linear(down.in_features, out, bias=down.bias is not None)
        self.residual_dropout = getattr(config, family.residual_dropout) if family.residual_dropout else 0.0

    @property
    def has_attention(self) -> bool:
        return bool(self.attention_norms)

    @property
    def has_mlp(self) -> bool:
        return bool(self.mlp_norms)

    def _residual(
        self, hidden_states: torch.Tensor, out: torch.Tensor, post_norms: tuple[str, ...], shortcut: str
    ) -> torch.Tensor:
        for name in post_norms:
            out = getattr(self, name)(out)
        if hasattr(self, shortcut):  # a rotated residual stream: change of basis (and width)
            hidden_states = getattr(self, shortcut)(hidden_states)
        return hidden_states + nn.functional.dropout(out, p=self.residual_dropout, training=self.training)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.has_attention:
            pre, *post = self.attention_norms
            out, _ = self.self_attn(
                hidden_states=getattr(self, pre)(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = self._residual(hidden_states, out, tuple(post), "attn_shortcut")
        if self.has_mlp:
            pre, *post = self.mlp_norms
            hidden_states = self._residual(
                hidden_states, self.mlp(getattr(self, pre)(hidden_states)), tuple(post), "mlp_shortcut"
            )
        return hidden_states


class HubprunePreTrainedModel(PreTrainedModel):
    config_class = HubpruneConfig
    config: HubpruneConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HubpruneDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": HubpruneDecoderLayer, "attentions": "self_attn"}

    @property
    def _supports_sdpa(self) -> bool:
        """As the native family (Gemma 2 has none: sdpa cannot soft-cap attention scores)."""
        return family_of(self.config).cls("PreTrainedModel")._supports_sdpa

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults, plus what the Gemma families initialise their own way."""
        super()._init_weights(module)
        if family_of(self.config).scaled_embedding and "RMSNorm" in type(module).__name__:
            init.zeros_(module.weight)  # Gemma norms scale by (1 + weight)
        if hasattr(module, "scalar_embed_scale"):  # Gemma's scaled word embedding (a buffer)
            init.constant_(module.embed_scale, module.scalar_embed_scale)
        if "RotaryEmbedding" in type(module).__name__ and isinstance(
            getattr(module, "rope_type", None), dict
        ):
            # Gemma 3: one rope per layer type (local / global), as Gemma3PreTrainedModel does it
            for kind in module.layer_types:
                rope_init = module.compute_default_rope_parameters
                if module.rope_type[kind] != "default":
                    rope_init = ROPE_INIT_FUNCTIONS[module.rope_type[kind]]
                inv_freq, _ = rope_init(module.config, layer_type=kind)
                init.copy_(getattr(module, f"{kind}_inv_freq"), inv_freq)
                init.copy_(getattr(module, f"{kind}_original_inv_freq"), inv_freq)


class HubpruneModel(HubprunePreTrainedModel):
    """The decoder: native embeddings, rotary embedding and final norm around heterogeneous blocks."""

    def __init__(self, config: HubpruneConfig) -> None:
        super().__init__(config)
        family = family_of(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        if family.scaled_embedding:
            self.embed_tokens = family.cls("TextScaledWordEmbedding")(
                config.vocab_size, config.hidden_size, self.padding_idx, embed_scale=config.hidden_size**0.5
            )
        else:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.residual_width(0), self.padding_idx)
        self.layers = nn.ModuleList(
            [HubpruneDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = residual_norm(config)
        self.rotary_emb = family.cls("RotaryEmbedding")(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @capture_outputs  # output_hidden_states / output_attentions, as in the native models
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        layers = self.layers[: self.config.num_hidden_layers]
        for layer in layers:
            if not layer.has_attention:
                release_cache_slot(cache, layer.layer_idx)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)
        kinds = {layer.attention_type for layer in layers if layer.has_attention}
        masks = attention_mask
        if not isinstance(masks, dict):  # generate() may have prepared them
            mask_kwargs = dict(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
            )
            masks = {kind: _MASKS[kind](**mask_kwargs) for kind in kinds}
        hidden_states = inputs_embeds
        if family_of(self.config).rope_per_layer_type:
            rope = {kind: self.rotary_emb(hidden_states, position_ids, kind) for kind in kinds}
        else:
            rope = dict.fromkeys(kinds, self.rotary_emb(hidden_states, position_ids))
        for layer in layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=masks.get(layer.attention_type),
                position_embeddings=rope.get(layer.attention_type),
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class HubpruneForCausalLM(HubprunePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HubpruneConfig) -> None:
        super().__init__(config)
        self.model = HubpruneModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(
            config.residual_width(config.num_hidden_layers), config.vocab_size, bias=False
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
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
            cache=cache if cache is not None else kwargs.pop("past_key_values", None),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, keep, :])
        softcap = getattr(self.config, "final_logit_softcapping", None)
        if softcap is not None:  # Gemma 2/3
            logits = torch.tanh(logits / softcap) * softcap
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["HubpruneForCausalLM", "HubpruneModel", "HubprunePreTrainedModel"]
