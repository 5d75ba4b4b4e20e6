"""Tiny random models of every supported family, and a character-level tokenizer, built in code.

Sizes are chosen to exercise the interesting paths: grouped-query attention (4 query / 2 KV
heads), sliding-window layers shorter than the test sequences (Qwen 2/3, Gemma 2/3 `layer_types`),
tied and untied embeddings, and Phi-3's fused projections.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 128
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

_SLIDING = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def tiny_config(model_type: str, num_layers: int = 4):
    """A tiny config of `model_type` with `num_layers` blocks."""
    from transformers import AutoConfig

    kwargs = dict(_COMMON, num_hidden_layers=num_layers)
    layer_types = (_SLIDING * num_layers)[:num_layers]
    if model_type in ("qwen2", "qwen3"):
        kwargs.update(use_sliding_window=True, sliding_window=8, max_window_layers=2, layer_types=layer_types)
    if model_type in ("gemma2", "gemma3_text"):
        kwargs.update(sliding_window=8, layer_types=layer_types, head_dim=16, query_pre_attn_scalar=16)
    if model_type == "mistral":
        kwargs.update(sliding_window=None)
    if model_type == "qwen3":
        kwargs.update(head_dim=16)
    if model_type == "phi3":
        kwargs.update(tie_word_embeddings=False)
    if model_type in ("llama", "qwen2", "gemma2", "gemma3_text"):
        kwargs.setdefault("tie_word_embeddings", True)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, num_layers: int = 4, seed: int = 0):
    """A randomly initialised tiny model in eval mode (eager attention, so sliding windows apply exactly)."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, num_layers)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Random init leaves norms at 1 and biases at 0; perturb every tensor so no block is trivial.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with <pad>/<s>/</s>/<unk> (ids 0-3)."""
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny(folder: Path, model_type: str, num_layers: int = 4, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer folder, as a Hub repo would hold it."""
    model = tiny_model(model_type, num_layers, seed)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. "
) * 20
