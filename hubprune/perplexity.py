"""Perplexity of a causal LM on fixed token windows.

Each window is scored on its own (no stride, no carried context): position t predicts token t+1,
so a window of T tokens contributes T-1 predictions; a leading BOS is context, never a target.
Padding (attention_mask 0) is excluded from the average. Perplexity = exp(total NLL / tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

# Logits are [rows, T, vocab] floats: with a 50k-256k vocabulary they dwarf every other
# activation, so a batch is scored a few rows at a time, about this many tokens per forward pass.
TOKENS_PER_FORWARD = 1024


@torch.no_grad()
def nll_sum(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over one batch, and the number of predictions."""
    device = next(model.parameters()).device
    rows = max(1, TOKENS_PER_FORWARD // input_ids.shape[1])
    total, count = 0.0, 0
    for start in range(0, input_ids.shape[0], rows):
        ids = input_ids[start : start + rows].to(device)
        mask = attention_mask[start : start + rows].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:]
        target_mask = mask[:, 1:].bool()
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        total += float(losses.view_as(targets)[target_mask].sum())
        count += int(target_mask.sum())
    return total, count


def perplexity(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, desc: str | None = None
) -> float:
    """exp(mean NLL) over all batches; `desc` shows a progress bar."""
    total, count = 0.0, 0
    items = list(batches)
    for input_ids, attention_mask in tqdm(items, desc=desc, disable=desc is None, leave=False):
        nll, n = nll_sum(model, input_ids, attention_mask)
        total += nll
        count += n
    if count == 0:
        raise ValueError("no tokens to score")
    return math.exp(total / count)
