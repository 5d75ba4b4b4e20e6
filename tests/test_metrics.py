"""Block metrics on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from hubprune.methods.metrics import angular_distance, block_influence, cosine, masked_mean


def test_block_influence_hand_values():
    h_in = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    h_out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    # same direction -> 0, orthogonal -> 1, opposite -> 2
    torch.testing.assert_close(block_influence(h_in, h_out), torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(cosine(h_in, h_out), torch.tensor([1.0, 0.0, -1.0]))


def test_angular_distance_hand_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    torch.testing.assert_close(angular_distance(a, b), torch.tensor([0.0, 0.5, 0.25]), atol=1e-3, rtol=0)


def test_masked_mean_excludes_padding():
    values = torch.tensor([[1.0, 2.0, 100.0]])
    total, count = masked_mean(values, torch.tensor([[1, 1, 0]]))
    assert (total, count) == (3.0, 2)


def test_angular_distance_is_bounded():
    a, b = torch.randn(50, 8), torch.randn(50, 8)
    d = angular_distance(a, b)
    assert (d >= 0).all() and (d <= 1).all()
    assert math.isclose(float(angular_distance(a, -a).mean()), 1.0, abs_tol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_metrics_compute_in_fp32(dtype):
    a = torch.randn(4, 16).to(dtype)
    assert block_influence(a, a).dtype == torch.float32
