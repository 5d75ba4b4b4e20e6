"""Shard-streamed plain export: apply a plan to a checkpoint without ever holding the model.

A plan that removes whole blocks (and, in the plain format, zero-fills removed attention / MLP
sublayers) decides which tensors exist and what they are called, never what a kept tensor
holds. So the export copies tensors from the source safetensors into new shards, one
tensor at a time (:mod:`hubprune.tensor_writer`): kept block tensors renamed to their new indices,
a removed sublayer's output projection written as zeros. Peak memory is about one tensor:
each is copied out of the memory-mapped file (:class:`hubprune.streaming.TensorFiles`), written
and dropped.

Byte-identical to the in-memory path (:func:`hubprune.surgery.apply_plan` with
``sublayers="zero"``, then ``save_pretrained``), because everything but the tensor bytes comes
from transformers' own code run on a *skeleton*: the model built on the meta device from the
source config, as ``from_pretrained`` builds it, with the same surgery applied. Its config is the
pruned config.json; its state dict, less the tied weights ``save_pretrained`` leaves out, gives
the tensor names, their order and shapes; huggingface_hub's ``split_torch_state_dict_into_shards``
cuts the shards; the index and the ``{"format": "pt"}`` metadata are written as transformers
writes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hubprune import streaming
from hubprune.arch import ArchAdapter
from hubprune.plan import Plan
from hubprune.shape import Shape
from hubprune.tensor_writer import INDEX_NAME, write_sharded

logger = logging.getLogger("hubprune.shard_export")

#: safetensors header dtypes of floating tensors, as torch dtypes.
_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class NotStreamable(Exception):
    """The checkpoint or plan cannot be exported shard by shard (the message says why); the
    caller loads the model instead. Not a user error: the in-memory path still works."""


def unstreamable_plan(shape: Shape, export_format: str) -> str | None:
    """Why a plan of `shape` cannot be exported by copying tensors, or None when it can: widths
    and rotations rewrite tensors, and a compact export of removed sublayers rebuilds blocks."""
    if shape.rotated:
        return "the plan rotates and slices the residual stream"
    if shape.has_widths():
        return "the plan narrows blocks (heads or channels)"
    if shape.has_sublayer_removals() and export_format != "plain":
        return f"a {export_format} export of removed sublayers rewrites the blocks"
    return None


def checkpoint_dtype(folder: Path) -> torch.dtype | None:
    """The checkpoint's dtype as ``from_pretrained(dtype="auto")`` reads it before the weights:
    the config's, else the index's; None when only the weights can tell (:func:`weights_dtype`)."""
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(folder), "dtype", None)
    if dtype is None and (folder / INDEX_NAME).is_file():
        dtype = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8")).get("metadata", {}).get("dtype")
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def skeleton(folder: Path, dtype: torch.dtype) -> nn.Module:
    """The model of `folder` on the meta device (:func:`hubprune.streaming.skeleton`): planning,
    costs and the written config use it."""
    model = streaming.skeleton(folder, dtype)
    # What from_pretrained records when no conversion of tensor names was used, as for a checkpoint
    # whose names are the model's own (the only kind streamed: check_sources). save_pretrained
    # then writes the tensors in natural name order, so the shards are cut in that order.
    model._weight_conversions = []
    return model


@dataclass
class TensorPlan:
    """What each output tensor is, in the order ``save_pretrained`` writes them: its source
    tensor's name (None: zeros), and the meta tensors of the pruned skeleton (shape and dtype)."""

    sources: dict[str, str | None]
    meta: dict[str, torch.Tensor]
    total_parameters: int

    def files(self, weights: Mapping[str, str]) -> list[str]:
        """The source files holding the kept tensors (all the export reads or downloads)."""
        missing = sorted({s for s in self.sources.values() if s is not None} - weights.keys())
        if missing:
            raise NotStreamable(
                f"the checkpoint has no tensor {missing[0]} (its names differ from the model's)"
            )
        return sorted({weights[s] for s in self.sources.values() if s is not None})


def plan_tensors(model: nn.Module, adapter: ArchAdapter, plan: Plan) -> TensorPlan:
    """Apply `plan` to the meta `model` (in place, as the in-memory export applies it) and say
    where each tensor of the result comes from: kept block tensors from the block's original
    index, a removed sublayer's output projection from nowhere (zeros), the rest unchanged."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    from hubprune.surgery import apply_plan
    from hubprune.transforms import zeroed_whole

    shape = plan.shape()
    keep = [i for i, _ in shape.kept()]
    apply_plan(model, adapter, plan, sublayers="zero")
    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    meta = revert_weight_conversion(model, state)  # save_pretrained's order (and names, checked)
    if meta.keys() != state.keys():
        raise NotStreamable("transformers renames this model's tensors when saving it")
    prefix = adapter.layers + "."
    sources: dict[str, str | None] = {}
    for name in meta:
        source = name
        if name.startswith(prefix):
            index, _, rest = name[len(prefix) :].partition(".")
            source = f"{prefix}{keep[int(index)]}.{rest}"
        sources[name] = None if zeroed_whole(source, adapter, shape) else source
    return TensorPlan(sources, dict(meta), model.num_parameters())


def weights_dtype(folder: Path, weights: Mapping[str, str]) -> torch.dtype:
    """The dtype of the checkpoint's first floating tensor (``from_pretrained``'s "auto" when the
    config names none)."""
    first = sorted(set(weights.values()))[0]
    for _, (_, dtype) in streaming.tensor_headers(
        folder, {n: f for n, f in weights.items() if f == first}
    ).items():
        if dtype in _FLOAT_DTYPES:
            return _FLOAT_DTYPES[dtype]
    return torch.float32


def check_sources(tensors: TensorPlan, folder: Path, weights: Mapping[str, str]) -> None:
    """Raise NotStreamable unless every source tensor has the shape its output tensor needs."""
    from hubprune.errors import ExportError
    from hubprune.export import check_tensors

    wanted = {out: src for out, src in tensors.sources.items() if src is not None}
    headers = streaming.tensor_headers(folder, {src: weights[src] for src in wanted.values()})
    try:
        check_tensors(
            {out: tuple(tensors.meta[out].shape) for out in wanted},
            {out: headers[src][0] for out, src in wanted.items()},
            "source",
        )
    except ExportError as err:
        raise NotStreamable(str(err)) from err
    odd = sorted(src for src in wanted.values() if headers[src][1] not in _FLOAT_DTYPES)
    if odd:
        raise NotStreamable(
            f"tensor {odd[0]} is not floating point ({headers[odd[0]][1]}): a quantized checkpoint"
        )


def write_weights(
    tensors: TensorPlan, source_dir: Path, folder: Path, max_shard_size: str | int
) -> list[str]:
    """Write the output shards (and the index when there are several) into `folder`, reading
    each tensor from the source safetensors when its turn comes; returns the files written."""
    files = streaming.TensorFiles(source_dir)

    def read(name: str) -> torch.Tensor:
        meta, source = tensors.meta[name], tensors.sources[name]
        if source is None:
            return torch.zeros(meta.shape, dtype=meta.dtype)
        return files.read([source], meta.dtype)[source]

    return write_sharded(
        tensors.meta, read, folder, max_shard_size=max_shard_size, total_parameters=tensors.total_parameters
    )


def write_config(model: nn.Module, folder: Path) -> None:
    """config.json and generation_config.json of the pruned skeleton, as ``save_pretrained``
    writes them (it records the weights' dtype and the model class first)."""
    model.config.dtype = str(model.dtype).split(".")[1]
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)


def export_streamed(
    model: nn.Module,
    tensors: TensorPlan,
    source_dir: Path,
    weights: Mapping[str, str],
    folder: Path,
    *,
    max_shard_size: str | int,
) -> list[str]:
    """Write the plain export into the (staging) `folder`: config, generation config and weights
    (no tokenizer). `model` is the skeleton pruned by :func:`plan_tensors`, which gave `tensors`;
    `weights` is the source's :func:`weight_map`. Raises NotStreamable, before writing anything,
    when the checkpoint's tensors do not fit the model. Returns the weight files written."""
    from hubprune.export import check_consistent

    tensors.files(weights)
    check_sources(tensors, source_dir, weights)
    check_consistent(model)
    write_config(model, folder)
    return write_weights(tensors, source_dir, folder, max_shard_size)
