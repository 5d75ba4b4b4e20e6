"""Next-token negative log-likelihood, written once: for eval perplexity on text, the per-block
`perplexity` method and FinerCut's perplexity objective.

Position t's logits predict token t+1, so a window of T tokens gives at most T-1 predictions;
a target counts when its `score_mask` entry is 1 (padding and context tokens are 0; position 0
is never a target because nothing precedes it). Perplexity = exp(summed NLL / scored tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hubprune.data import token_windows

# Logits are [rows, T, vocab] floats: with a 50k-256k vocabulary they dwarf every other
# activation, so a batch is scored a few rows at a time, about this many tokens per forward pass.
TOKENS_PER_FORWARD = 1024


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, score_mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL of the tokens where `score_mask` is 1, and how many there are.

    `logits` [B, T, V] come from `input_ids` [B, T]; `score_mask` [B, T] marks target tokens
    (an attention mask scores every real token after the first).
    """
    nll, count = row_nll(logits, input_ids, score_mask)
    return float(nll.sum()), int(count.sum())


def row_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, score_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the batch, the summed next-token NLL of the targets `score_mask` marks and how
    many there are (two [B] tensors; see :func:`token_nll`)."""
    targets = input_ids[:, 1:]
    keep = score_mask[:, 1:].to(torch.float64)
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    return (losses.double() * keep).sum(dim=1), keep.sum(dim=1)


@torch.no_grad()
def nll_sum(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Summed NLL over one batch (a few rows per forward pass) and the number of predictions;
    `score_mask` defaults to the attention mask."""
    device = next(model.parameters()).device
    score_mask = attention_mask if score_mask is None else score_mask
    rows = max(1, TOKENS_PER_FORWARD // input_ids.shape[1])
    total, count = 0.0, 0
    for start in range(0, input_ids.shape[0], rows):
        ids = input_ids[start : start + rows].to(device)
        mask = attention_mask[start : start + rows].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        nll, n = token_nll(logits, ids, score_mask[start : start + rows].to(device))
        total += nll
        count += n
    return total, count


def total_nll(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], *, desc: str | None = None
) -> tuple[float, int]:
    """Summed NLL and scored tokens over (input_ids, attention_mask[, score_mask]) batches;
    `desc` shows a progress bar."""
    total, count = 0.0, 0
    items = list(batches)
    for batch in tqdm(items, desc=desc, disable=desc is None, leave=False):
        nll, n = nll_sum(model, *batch)
        total += nll
        count += n
    return total, count


def perplexity(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, desc: str | None = None
) -> float:
    """exp(mean NLL) over all batches; `desc` shows a progress bar."""
    total, count = total_nll(model, batches, desc=desc)
    if count == 0:
        raise ValueError("no tokens to score")
    return math.exp(total / count)


def text_perplexity(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    seq_len: int = 512,
    stride: int | None = None,
    max_tokens: int = 16384,
    batch_size: int = 8,
    desc: str | None = None,
) -> dict[str, Any]:
    """Token-level perplexity of `model` on the start of `texts`, with sliding windows.

    The documents (in order) are joined with blank lines, tokenised without special tokens and
    cut at `max_tokens`. Windows of `seq_len` positions start every `stride` tokens (default
    `stride` = `seq_len`: disjoint windows, the cheapest reading; a smaller stride gives each
    scored token at least ``seq_len - stride`` tokens of context). In each window, only tokens
    no earlier window scored are targets, so no token counts twice. When the tokenizer puts BOS
    in front of ordinary input (Llama 3, Gemma), every window starts with BOS, which is context
    and never a target, and holds ``seq_len - 1`` text tokens; otherwise a window's first token
    has nothing before it, so it is context only (with disjoint windows, one token per window
    goes unscored). `seq_len` is capped at the model's ``max_position_embeddings``. `desc`
    shows a progress bar over the batches of windows.
    Perplexity = exp(summed NLL / scored tokens); the result states all of the above.
    """
    stride = stride or seq_len
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and seq_len > max_positions:
        seq_len, stride = max_positions, min(stride, max_positions)
    cut = token_windows(
        tokenizer,
        texts,
        seq_len=seq_len,
        policy="strided",
        stride=stride,
        separator="\n\n",
        max_tokens=max_tokens,
        name="the perplexity text",
    )
    groups: dict[int, list[int]] = {}  # windows of one length batch together
    for row, window in enumerate(cut.windows):
        groups.setdefault(len(window), []).append(row)
    batches = []
    for rows in groups.values():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            ids = torch.tensor([cut.windows[r] for r in chunk], dtype=torch.long)
            batches.append((ids, torch.ones_like(ids), cut.score_mask(chunk)))
    nll, count = total_nll(model, batches, desc=desc)
    return {
        "perplexity": math.exp(nll / count),
        "nll": nll,
        "scored_tokens": count,
        "seq_len": seq_len,
        "stride": cut.stride,
        "windows": len(cut.windows),
        "bos_prepended": cut.bos_prepended,
        "documents_used": cut.documents_used,
        "max_tokens": max_tokens,
    }
