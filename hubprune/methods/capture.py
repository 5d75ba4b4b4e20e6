"""Residual-stream states at every block boundary, from one forward pass per batch.

Forward hooks on the decoder blocks record h_i (the input of block i) and h_L (the output of the
last block, before the final norm). The backbone runs without `lm_head`, so no logits are built.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from hubprune.arch import ArchAdapter
from hubprune.data import CalibrationBatch


def _first_tensor(value: object) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value  # type: ignore[return-value]


@torch.no_grad()
def boundary_states(
    model: nn.Module,
    adapter: ArchAdapter,
    calibration: CalibrationBatch,
    batch_size: int,
    desc: str = "Collecting hidden states",
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Yield, per batch, the L+1 boundary states [h_0 .. h_L] (each [B, T, D]) and the mask."""
    blocks = adapter.blocks(model)
    states: list[torch.Tensor] = []
    hooks = []

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        states.append(args[0] if args else kwargs["hidden_states"])

    def post_hook(_module: nn.Module, _args: tuple, output: object) -> None:
        states.append(_first_tensor(output))

    for block in blocks:
        hooks.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
    hooks.append(blocks[-1].register_forward_hook(post_hook))
    backbone = adapter.decoder_model(model)
    device = next(model.parameters()).device
    try:
        for input_ids, attention_mask in tqdm(calibration.batches(batch_size), desc=desc, leave=False):
            states.clear()
            backbone(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
            )
            if len(states) != len(blocks) + 1:
                raise RuntimeError(f"captured {len(states)} states for {len(blocks)} blocks")
            yield list(states), attention_mask.to(device)
    finally:
        for hook in hooks:
            hook.remove()
        states.clear()
