"""Residual-stream states at block boundaries, for metrics that reduce them on the spot.

Two engines hand `(block, batch, h_in, h_out, mask)` to a callback, so no one ever holds all
L+1 states of a batch (L times the activations of one block):

* in memory (the model is loaded): one backbone pass per calibration batch with a forward hook
  on each block; the backbone runs without `lm_head`, so no logits are built;
* layer-wise (`ctx.weights`, a :class:`hubprune.streaming.StreamedWeights`): every batch's input
  to block 0 is recorded first, then each block is read from the checkpoint, run on all batches,
  and released. Only the current block and the activations are resident (the scheme SliceGPT and
  Wanda use), so a model larger than memory can be scored. Block outputs are the same tensors
  as in memory, so the scores are too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hubprune.arch import ArchAdapter
from hubprune.checkpoint import Checkpoint
from hubprune.data import CalibrationBatch

if TYPE_CHECKING:
    from hubprune.methods.registry import MethodContext

logger = logging.getLogger(__name__)

#: `on_block(block, batch, h_in, h_out, mask)`: h_in = h_i, h_out = h_{i+1}, both [B, T, D]; mask [B, T].
BlockCallback = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None]
#: `after_block(block_index, block)`: called once per block after every batch ran through it, while
#: its weights are resident (a metric that reads the weights, Wanda's, finishes there).
AfterBlock = Callable[[int, nn.Module], None]


def first_tensor(value: object) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value  # type: ignore[return-value]


@torch.no_grad()
def stream_blocks(
    model: nn.Module,
    adapter: ArchAdapter,
    calibration: CalibrationBatch,
    batch_size: int,
    on_block: BlockCallback,
    current: list[torch.Tensor] | None = None,
) -> Iterator[torch.Tensor]:
    """In memory: run every calibration batch through the backbone, calling `on_block` for each
    block; yields each batch's mask after its forward pass. During a pass `current` holds the
    batch's mask. The progress bar counts batches: every batch scores all blocks at once."""
    blocks = adapter.blocks(model)
    current = [] if current is None else current
    batch_index = [-1]

    def make_hook(index: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            on_block(index, batch_index[0], h_in, first_tensor(output), current[0])

        return hook

    hooks = [block.register_forward_hook(make_hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        yield from calibration_passes(
            model, adapter, calibration, batch_size, f"Scoring {len(blocks)} blocks", current, batch_index
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
    batch_index: list[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Run every calibration batch through the backbone (no `lm_head`), with a progress bar that
    counts batches. During each pass `current` holds that batch's attention mask (on the model's
    device) and `batch_index` its index, for hooks that reduce activations on the spot; the mask
    is yielded after the pass."""
    backbone = adapter.decoder_model(model)
    device = model.get_input_embeddings().weight.device
    for b, (input_ids, attention_mask) in enumerate(
        tqdm(calibration.batches(batch_size), desc=desc, unit="batch", leave=False)
    ):
        attention_mask = attention_mask.to(device)
        current[:] = [attention_mask]
        if batch_index is not None:
            batch_index[:] = [b]
        backbone(input_ids=input_ids.to(device), attention_mask=attention_mask, use_cache=False)
        yield attention_mask


class _Stop(Exception):
    """Raised by the last recorder: the backbone has nothing more to tell."""


class _Recorder(nn.Module):
    """Stands in for a decoder block while the backbone prepares its inputs: records the keyword
    arguments the block would get (masks per layer type, rotary embeddings) and passes the stream
    on unchanged, without touching the block's weights."""

    def __init__(self, block: nn.Module, record: Callable[[torch.Tensor, dict], None], last: bool) -> None:
        super().__init__()
        self.attention_type = getattr(block, "attention_type", None)
        self._record, self._last = record, last

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._record(hidden_states, kwargs)
        if self._last:
            raise _Stop
        return hidden_states


@dataclass
class BlockInputs:
    """Per calibration batch: the stream entering block 0, the keyword arguments of every block
    (a sliding-window block's mask differs from a full one's), and the attention mask."""

    states: list[torch.Tensor]
    kwargs: list[list[dict[str, Any]]]
    masks: list[torch.Tensor]


@torch.no_grad()
def block_inputs(
    model: nn.Module, adapter: ArchAdapter, calibration: CalibrationBatch, batch_size: int
) -> BlockInputs:
    """Record every batch's input to block 0 and each block's arguments in one backbone pass that
    runs the embeddings only: the blocks are swapped for recorders, so they may be on the meta
    device (a streamed skeleton) and cost nothing."""
    blocks = adapter.blocks(model)
    originals = list(blocks)
    out = BlockInputs([], [], [])
    current: list[dict[str, Any]] = []

    def record(hidden: torch.Tensor, kwargs: dict) -> None:
        if not current:
            out.states.append(hidden.detach().clone())
        keep = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache", "past_key_value")}
        keep["use_cache"] = False
        current.append(keep)

    backbone = adapter.decoder_model(model)
    device = model.get_input_embeddings().weight.device
    try:
        for i, block in enumerate(originals):
            blocks[i] = _Recorder(block, record, last=i == len(originals) - 1)
        for input_ids, attention_mask in calibration.batches(batch_size):
            current = []
            attention_mask = attention_mask.to(device)
            with contextlib.suppress(_Stop):
                backbone(input_ids=input_ids.to(device), attention_mask=attention_mask, use_cache=False)
            out.kwargs.append(current)
            out.masks.append(attention_mask)
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    return out


def resident(ctx: MethodContext, *modules: nn.Module) -> contextlib.AbstractContextManager[None]:
    """`modules` read from the checkpoint for the duration of a `with` when `ctx` streams the
    model; nothing to do when it is loaded."""
    return ctx.weights.resident(*modules) if ctx.weights is not None else contextlib.nullcontext()


def run_blocks(
    ctx: MethodContext,
    on_block: BlockCallback,
    *,
    after_block: AfterBlock | None = None,
    state: dict[str, Any] | None = None,
    tag: str = "blocks",
    current: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Run the calibration set through every block, in memory or layer-wise (when `ctx.weights`
    streams the model), calling `on_block` for every (block, batch) and `after_block` once per
    block; returns the masks of the batches. While a batch runs, `current` holds its mask (for
    hooks inside the blocks).

    Layer-wise, with a resumable checkpoint, the activations and `state` (the caller's
    accumulators, updated in place) are saved after every block under `tag`, and a killed run
    resumes after the last finished block."""
    assert ctx.calibration is not None
    if ctx.weights is None:
        masks = list(
            stream_blocks(ctx.model, ctx.adapter, ctx.calibration, ctx.batch_size, on_block, current)
        )
        if after_block is not None:
            for i, block in enumerate(ctx.adapter.blocks(ctx.model)):
                after_block(i, block)
        return masks
    return _layerwise(ctx, on_block, after_block, state, tag, [] if current is None else current)


@torch.no_grad()
def _layerwise(
    ctx: MethodContext,
    on_block: BlockCallback,
    after_block: AfterBlock | None,
    state: dict[str, Any] | None,
    tag: str,
    current: list[torch.Tensor],
) -> list[torch.Tensor]:
    weights, adapter = ctx.weights, ctx.adapter
    assert weights is not None and ctx.calibration is not None
    with resident(ctx, ctx.model.get_submodule(adapter.embed)):
        inputs = block_inputs(ctx.model, adapter, ctx.calibration, ctx.batch_size)
    states, masks = inputs.states, inputs.masks
    store = weights.activation_device(states)
    states = [s.to(store) for s in states]
    checkpoint = (
        Checkpoint(ctx.checkpoint.path.with_name(f"{ctx.checkpoint.path.stem}.{tag}.pt"))
        if ctx.checkpoint is not None and weights.resumable
        else None
    )
    start = 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        start, states = saved["next_block"], saved["states"]
        weights.resumed_from[tag] = start
        if state is not None:
            state.update(saved["state"])
    num_blocks = adapter.num_blocks(ctx.model)
    bar = tqdm(
        range(start, num_blocks),
        desc=f"Scoring {num_blocks} blocks, one at a time",
        unit="block",
        leave=False,
    )
    for i in bar:
        block = weights.block(i)
        with weights.resident(block):
            for b, kwargs in enumerate(inputs.kwargs):
                h_in = states[b].to(weights.device)
                current[:] = [masks[b]]
                h_out = first_tensor(block(h_in, **kwargs[i]))
                on_block(i, b, h_in, h_out, masks[b])
                states[b] = h_out.to(store)
            if after_block is not None:
                after_block(i, block)
        if checkpoint is not None and i + 1 < num_blocks:
            checkpoint.save({"step": i + 1, "next_block": i + 1, "states": states, "state": state or {}})
            weights.after_checkpoint(i + 1)
    if checkpoint is not None:
        checkpoint.clear()
    return masks
