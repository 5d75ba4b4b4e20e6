"""Measured generation speed: prefill and decode tokens per second on the device used.

A benchmark, not a test: numbers depend on the machine and on what else runs on it, so the
device is named in the result, warm-up runs are discarded and the median of several repetitions
is reported (with every sample kept). Prefill is one forward pass over a prompt of random token
ids (batch x prompt tokens / time). Decode feeds one token at a time with the KV cache of that
prompt, greedy, `new_tokens` steps (batch x new tokens / time): the loop ``generate()`` runs,
without its sampling and stopping logic, so an end-of-sequence token cannot cut a run short.
"""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import time
from typing import Any

import torch
from torch import nn

from hubprune.errors import RecipeError


def device_name(device: torch.device | str) -> str:
    """A readable name: the GPU model, or the CPU model with the thread count torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        return f"{model} ({torch.get_num_threads()} threads of {os.cpu_count()} CPUs)"
    return str(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _one_run(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for the prefill and for `new_tokens` cached decode steps."""
    device = prompt.device
    # transformers renamed the cache argument and output `past_key_values` to `cache` during 5.x.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    _sync(device)
    prefill = time.perf_counter() - start
    cache = out.get(cache_arg)
    token = out.logits[:, -1:].argmax(-1)
    mask = torch.ones(prompt.shape[0], prompt.shape[1] + new_tokens, dtype=torch.long, device=device)
    start = time.perf_counter()
    for step in range(new_tokens):
        length = prompt.shape[1] + step + 1
        out = model(input_ids=token, attention_mask=mask[:, :length], use_cache=True, **{cache_arg: cache})
        cache = out.get(cache_arg)
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    return prefill, time.perf_counter() - start


def measure_speed(
    model: nn.Module,
    *,
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    batch_size: int = 1,
    warmup: int = 1,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Median prefill and decode tokens/s of `model` over `repeats` runs after `warmup` runs."""
    counts = {
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "batch_size": batch_size,
        "repeats": repeats,
    }
    wrong = [f"{name}={value!r}" for name, value in counts.items() if not isinstance(value, int) or value < 1]
    if not isinstance(warmup, int) or warmup < 0:
        wrong.append(f"warmup={warmup!r}")
    if wrong:
        raise RecipeError(
            f"speed settings need whole numbers, at least 1 (warmup at least 0); got {', '.join(wrong)}"
        )
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (batch_size, prompt_tokens), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            _one_run(model, prompt, new_tokens)
        runs = [_one_run(model, prompt, new_tokens) for _ in range(repeats)]
    finally:
        model.train(was_training)
    prefill = [batch_size * prompt_tokens / p for p, _ in runs]
    decode = [batch_size * new_tokens / d for _, d in runs]
    return {
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(decode),
        "prefill_samples": prefill,
        "decode_samples": decode,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "batch_size": batch_size,
        "warmup": warmup,
        "repeats": repeats,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }
