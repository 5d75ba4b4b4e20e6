"""Residual-stream states at block boundaries, streamed from one forward pass per batch.

A forward hook on each decoder block hands `(i, h_in, h_out)` to a callback while the block's
input and output are alive anyway, so a metric reduces them on the spot and no batch ever holds
all L+1 states (which would cost L times the activations of one block). The backbone runs without
`lm_head`, so no logits are built either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from hubprune.arch import ArchAdapter
from hubprune.data import CalibrationBatch

BlockCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _first_tensor(value: object) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value  # type: ignore[return-value]


@torch.no_grad()
def stream_blocks(
    model: nn.Module,
    adapter: ArchAdapter,
    calibration: CalibrationBatch,
    batch_size: int,
    on_block: BlockCallback,
) -> Iterator[torch.Tensor]:
    """Run every calibration batch through the backbone, calling `on_block(i, h_in, h_out, mask)`
    for each block i (h_in = h_i, h_out = h_{i+1}, both [B, T, D]; mask [B, T]); yields each
    batch's mask after its forward pass, so the caller can finish per-batch reductions.

    The progress bar counts calibration batches: every batch scores all blocks at once."""
    blocks = adapter.blocks(model)
    current: list[torch.Tensor] = []

    def make_hook(index: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            on_block(index, h_in, _first_tensor(output), current[0])

        return hook

    hooks = [block.register_forward_hook(make_hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        yield from calibration_passes(
            model, adapter, calibration, batch_size, f"Scoring {len(blocks)} blocks", current
        )
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def calibration_passes(
    model: nn.Module,
    adapter: ArchAdapter,
    calibration: CalibrationBatch,
    batch_size: int,
    desc: str,
    current: list[torch.Tensor],
) -> Iterator[torch.Tensor]:
    """Run every calibration batch through the backbone (no `lm_head`), with a progress bar that
    counts batches. During each pass `current` holds that batch's attention mask (on the model's
    device) for hooks that reduce activations on the spot; the mask is yielded after the pass."""
    backbone = adapter.decoder_model(model)
    device = next(model.parameters()).device
    for input_ids, attention_mask in tqdm(
        calibration.batches(batch_size), desc=desc, unit="batch", leave=False
    ):
        attention_mask = attention_mask.to(device)
        current[:] = [attention_mask]
        backbone(input_ids=input_ids.to(device), attention_mask=attention_mask, use_cache=False)
        yield attention_mask
