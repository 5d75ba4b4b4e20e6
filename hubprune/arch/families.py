"""The supported model families. A new family is one entry here plus one tiny-model test case."""

from hubprune.arch.adapter import CHANNELS, KV, QUERY, RESIDUAL, ArchAdapter, Projection

LLAMA = ArchAdapter(family="llama", model_types=("llama",), compact_schema="decilm")

# Mistral is a Llama block; the compact export refuses checkpoints that use a sliding window.
MISTRAL = ArchAdapter(family="mistral", model_types=("mistral",), compact_schema="decilm")

_NO_DECILM = "the nemotron-nas (DeciLM) schema describes Llama blocks only; "

# Qwen2/3: blocks at index >= max_window_layers use sliding-window attention when enabled;
# transformers 5 also writes the expanded `layer_types` list, which is what the model reads.
# Qwen2's q/k/v have biases and o_proj has none: the DeciLM schema says so with `qkv_bias`.
QWEN2 = ArchAdapter(
    family="qwen2",
    model_types=("qwen2",),
    window_prefix_config=("max_window_layers",),
    compact_schema="decilm",
    compact_note="Qwen2 checkpoints that use sliding-window attention cannot be expressed",
    extra={"decilm_config": {"attention_bias": False, "qkv_bias": True}},
)

QWEN3 = ArchAdapter(
    family="qwen3",
    model_types=("qwen3",),
    window_prefix_config=("max_window_layers",),
    compact_note=_NO_DECILM + "Qwen3 normalises queries and keys (q_norm/k_norm)",
)

# Gemma 2/3 wrap each sublayer in two norms ("sandwich"): the post-norm of a zeroed output is zero.
_GEMMA = dict(
    attention_norms=("input_layernorm", "post_attention_layernorm"),
    mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    final_logit_softcap="final_logit_softcapping",
    rotation_note="Gemma normalises the output of every attention and MLP (sandwich norms) and scales "
    "its norms by 1 + weight, so its outputs change when the residual stream is rotated",
)
_GEMMA_NOTE = _NO_DECILM + "Gemma has sandwich norms, scaled embeddings and logit soft-capping"
GEMMA2 = ArchAdapter(family="gemma2", model_types=("gemma2",), compact_note=_GEMMA_NOTE, **_GEMMA)

GEMMA3 = ArchAdapter(
    family="gemma3",
    model_types=("gemma3_text",),
    notes="text-only Gemma 3 (Gemma3ForCausalLM); the multimodal gemma3 checkpoints are not supported",
    compact_note=_GEMMA_NOTE,
    **_GEMMA,
)

# Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj.
PHI3 = ArchAdapter(
    family="phi3",
    model_types=("phi3",),
    attention_in=("qkv_proj",),
    mlp_in=("gate_up_proj",),
    lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    projections=(
        Projection("attn", "qkv_proj", RESIDUAL, (QUERY, KV, KV)),
        Projection("attn", "o_proj", QUERY, (RESIDUAL,)),
        Projection("mlp", "gate_up_proj", RESIDUAL, (CHANNELS, CHANNELS)),
        Projection("mlp", "down_proj", CHANNELS, (RESIDUAL,)),
    ),
    compact_note=_NO_DECILM + "Phi-3's fused projections and rotary variants are not expressed yet",
)

ALL: tuple[ArchAdapter, ...] = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3)
