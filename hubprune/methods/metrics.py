"""Block redundancy metrics as pure tensor functions (no model, no hooks)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cosine(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per token along the hidden dimension, in fp32. [..., D] -> [...]"""
    return F.cosine_similarity(h_in.float(), h_out.float(), dim=-1, eps=1e-8)


def block_influence(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """ShortGPT's block influence per token: BI = 1 - cos(h_i, h_{i+1}) (arXiv 2403.03853).

    Averaged over tokens it is the block's importance; its complement, mean cos, is the layer
    redundancy (LR) score of Dynamic LLM Slicing (arXiv 2411.03513).
    """
    return 1.0 - cosine(h_in, h_out)


def angular_distance(h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
    """arccos(cos(h_a, h_b)) / pi per token, in [0, 1] (Gromov et al., arXiv 2403.17887)."""
    return torch.arccos(cosine(h_a, h_b).clamp(-1.0, 1.0)) / math.pi


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Sum of `values` where `mask` is set, and how many: for streaming averages over batches."""
    mask = mask.bool()
    return float(values[mask].sum()), int(mask.sum())
