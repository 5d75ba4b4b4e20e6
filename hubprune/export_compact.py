"""The compact export: removed attention / MLP sublayers really gone, in the nemotron-nas schema.

The config is NVIDIA's DeciLM / `nemotron-nas` format (`architectures: ["DeciLMForCausalLM"]`,
one `block_configs` entry per block with `attention.no_op`, `attention.n_heads_in_group`,
`ffn.no_op`, `ffn.ffn_mult`), which vLLM serves natively. transformers loads it through the
configuration and modeling files in `templates/remote/`, copied into the folder and named in
`auto_map` (`trust_remote_code=True`); NVIDIA's own copy does not run on transformers 5.

Only families whose blocks are Llama blocks can be written this way (adapter field
`compact_schema == "decilm"`: Llama, Mistral, and Qwen2 through vLLM's `qkv_bias` key, all
without sliding windows); others are refused with the adapter's reason. The MLP width
must round-trip through DeciLM's `ffn_mult` rule (int(2·mult·hidden/3) rounded up to a multiple
of 256, vLLM `nemotron_nas.py`), or the export is refused rather than written wrong.

Weight names are those of the native Llama checkpoint minus the removed modules: a block
without attention has no `self_attn.*` and no `input_layernorm`; one without MLP has no `mlp.*`
and no `post_attention_layernorm`. Before writing, the weights are loaded strictly into a model
built from the written config, so names and shapes are checked against the remote code itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubprune.arch import ArchAdapter
from hubprune.errors import ExportError, UnsupportedArchitectureError
from hubprune.export import (
    DEFAULT_MAX_SHARD_SIZE,
    check_tensors,
    folder_files,
    shapes,
    write_with_remote_code,
)
from hubprune.rundir import staged_folder
from hubprune.sublayers import is_removed

REMOTE_FILES = ("configuration_decilm.py", "modeling_decilm.py")
AUTO_MAP = {
    "AutoConfig": "configuration_decilm.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
}
# Keys of the native config that describe what the DeciLM config says per block, or that name
# the native class; they are dropped from the compact config.
_DROPPED_KEYS = (
    "architectures",
    "model_type",
    "auto_map",
    "layer_types",
    "use_sliding_window",
    "max_window_layers",
    "_name_or_path",
    "transformers_version",
)


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's MLP width rule (vLLM `nemotron_nas.py`): int(2·mult·hidden/3), rounded up to 256."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return size if size % 256 == 0 else size + 256 - size % 256


def ffn_mult_for(intermediate_size: int, hidden_size: int) -> float:
    """The `ffn_mult` that reproduces `intermediate_size` exactly; ExportError when none does."""
    exact = 3 * intermediate_size / (2 * hidden_size)
    for candidate in (exact, round(exact, 6), exact + 1e-9, exact * (1 + 1e-12)):
        if ffn_mult_to_intermediate_size(candidate, hidden_size) == intermediate_size:
            return candidate
    raise ExportError(
        f"MLP width {intermediate_size} cannot be written as a DeciLM ffn_mult for hidden size "
        f"{hidden_size} (DeciLM rounds widths up to a multiple of 256); use --format plain"
    )


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def check_compact_family(adapter: ArchAdapter) -> None:
    """Refuse, with one sentence, a family the nemotron-nas schema cannot express."""
    if adapter.compact_schema != "decilm":
        raise UnsupportedArchitectureError(
            f"the compact format cannot express family '{adapter.family}': {adapter.compact_note}; "
            "use --format plain"
        )


def check_compact_supported(config: Any, adapter: ArchAdapter, *, check_width: bool = True) -> None:
    """Refuse, with one sentence, a model (its config object or config.json dict) the schema
    cannot express: wrong family, sliding-window attention, uneven KV groups, an MLP width that
    does not round-trip through `ffn_mult` (unless `check_width` is False)."""
    check_compact_family(adapter)
    layer_types = _get(config, "layer_types") or []
    sliding = any(t != "full_attention" for t in layer_types) or (
        _get(config, "sliding_window") is not None and _get(config, "use_sliding_window", True)
    )
    if sliding:
        raise UnsupportedArchitectureError(
            "the compact format cannot express sliding-window attention; use --format plain"
        )
    heads, kv_heads = _get(config, "num_attention_heads"), _get(config, "num_key_value_heads")
    if kv_heads and heads % kv_heads:
        raise UnsupportedArchitectureError(f"{heads} query heads do not split into {kv_heads} KV groups")
    if check_width:
        ffn_mult_for(_get(config, "intermediate_size"), _get(config, "hidden_size"))


def model_layers(model: nn.Module, adapter: ArchAdapter) -> list[dict[str, Any]]:
    """Per block of an in-memory model (sublayers removed by :mod:`hubprune.sublayers`), the
    widths an export writes (the entries of :meth:`hubprune.shape.BlockShape.layer_config`)."""
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    out = []
    for block in adapter.blocks(model):
        attention = not is_removed(block, adapter, "attn")
        mlp = not is_removed(block, adapter, "mlp")
        out.append(
            {
                "attention": attention,
                "num_attention_heads": config.num_attention_heads if attention else 0,
                "num_key_value_heads": kv_heads if attention else 0,
                "mlp": mlp,
                "intermediate_size": config.intermediate_size if mlp else 0,
            }
        )
    return out


def decilm_misfit(config: Any, adapter: ArchAdapter, layers: list[dict[str, Any]]) -> str | None:
    """Why the nemotron-nas schema cannot express this model (None when it can): another family,
    sliding windows, fewer query heads in a block (the schema has one global count), or an MLP
    width that `ffn_mult` cannot reproduce."""
    try:
        check_compact_supported(config, adapter, check_width=False)
    except UnsupportedArchitectureError as err:
        return str(err)
    heads = _get(config, "num_attention_heads")
    for i, layer in enumerate(layers):
        if layer["attention"] and layer["num_attention_heads"] != heads:
            return f"block {i} keeps {layer['num_attention_heads']} of {heads} query heads (the schema has one count)"
    for layer in layers:
        if layer["mlp"]:
            try:
                ffn_mult_for(layer["intermediate_size"], _get(config, "hidden_size"))
            except ExportError as err:
                return str(err)
    return None


def block_configs(config: Any, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One nemotron-nas `block_configs` entry per block."""
    heads, hidden = _get(config, "num_attention_heads"), _get(config, "hidden_size")
    out = []
    for layer in layers:
        attention, mlp = layer["attention"], layer["mlp"]
        group = heads // layer["num_key_value_heads"] if attention else None
        mult = ffn_mult_for(layer["intermediate_size"], hidden) if mlp else None
        out.append(
            {
                "attention": {
                    "no_op": not attention,
                    "replace_with_linear": False,
                    "n_heads_in_group": group,
                },
                "ffn": {"no_op": not mlp, "replace_with_linear": False, "ffn_mult": mult},
            }
        )
    return out


def compact_config(config: Any, adapter: ArchAdapter, layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The config.json of the compact export."""
    native = config.to_dict()
    out = {k: v for k, v in native.items() if k not in _DROPPED_KEYS}
    out.update(
        architectures=["DeciLMForCausalLM"],
        model_type="nemotron-nas",
        auto_map=dict(AUTO_MAP),
        num_hidden_layers=len(layers),
        block_configs=block_configs(config, layers),
    )
    out.update(adapter.extra.get("decilm_config", {}))
    return out


def _build_compact(folder: Path, state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """Instantiate the remote-code model from `folder` and load `state_dict` into it strictly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with torch.device("meta"):
        compact = AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=dtype)
    check_tensors(shapes(compact.state_dict()), shapes(state_dict), "compact")
    compact.load_state_dict(state_dict, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        compact.tie_weights()
    return compact.eval()


def write_decilm(
    state_dict: dict[str, torch.Tensor],
    config: Any,
    adapter: ArchAdapter,
    layers: list[dict[str, Any]],
    folder: Path,
    *,
    dtype: torch.dtype,
    tokenizer: Any = None,
    generation_config: Any = None,
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    extra_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write the compact tensors `state_dict` (native names, removed modules left out, widths
    sliced) with one `layers` entry per block into the (staging) `folder` as a nemotron-nas
    checkpoint with our remote code; returns the manifest's export record."""
    reason = decilm_misfit(config, adapter, layers)
    if reason is not None:
        raise ExportError(f"the nemotron-nas schema cannot express this model: {reason}")
    out_config = compact_config(config, adapter, layers)
    compact, licenses = write_with_remote_code(
        folder,
        out_config,
        REMOTE_FILES,
        lambda f: _build_compact(f, dict(state_dict), dtype),
        tokenizer=tokenizer,
        generation_config=generation_config,
        source_dir=source_dir,
        max_shard_size=max_shard_size,
        extra_files=extra_files,
    )
    blocks = out_config["block_configs"]
    return {
        "format": "compact",
        "schema": "nemotron-nas (DeciLM block_configs)",
        "architectures": out_config["architectures"],
        "trust_remote_code": True,
        "vllm_servable": True,
        "how_to_load": "AutoModelForCausalLM.from_pretrained(REPO, trust_remote_code=True)",
        "remote_code": list(REMOTE_FILES),
        "attention_blocks": sum(1 for b in blocks if not b["attention"]["no_op"]),
        "mlp_blocks": sum(1 for b in blocks if not b["ffn"]["no_op"]),
        "zero_filled": False,
        "max_shard_size": max_shard_size,
        "files": folder_files(folder),
        "license_files": licenses,
        "_model": compact,
    }


def write_compact(
    model: nn.Module,
    adapter: ArchAdapter,
    tokenizer: Any,
    folder: Path,
    *,
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    extra_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`write_decilm` of an in-memory model whose sublayers were removed by
    :mod:`hubprune.sublayers`."""
    check_compact_supported(model.config, adapter)
    record = write_decilm(
        dict(model.state_dict()),
        model.config,
        adapter,
        model_layers(model, adapter),
        folder,
        dtype=next(model.parameters()).dtype,
        tokenizer=tokenizer,
        generation_config=getattr(model, "generation_config", None),
        source_dir=source_dir,
        max_shard_size=max_shard_size,
        extra_files=extra_files,
    )
    record.pop("_model")
    return record


def export_compact(
    model: nn.Module,
    adapter: ArchAdapter,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`write_compact` into a staged folder that becomes `out_dir` (a model folder without
    a manifest; :func:`hubprune.pipeline.prune` writes run folders)."""
    check_compact_supported(model.config, adapter)  # refuse before creating anything
    with staged_folder(out_dir, overwrite, source=source_dir) as tmp:
        return write_compact(
            model, adapter, tokenizer, tmp, source_dir=source_dir, max_shard_size=max_shard_size,
            extra_files=extra_files,
        )  # fmt: skip


def write_compact_shape(
    model: nn.Module,
    adapter: ArchAdapter,
    shape: Any,
    tokenizer: Any,
    folder: Path,
    *,
    schema: str = "auto",
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    extra_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The compact export of a dense `model` under `shape` (:class:`hubprune.shape.Shape`): whole
    blocks removed in place, then the kept tensors sliced (:func:`hubprune.transforms.slice_state_dict`)
    and written in the nemotron-nas schema when it can express the result (vLLM serves it), else in
    our heterogeneous format (:mod:`hubprune.export_hetero`); `schema` "nemotron-nas" or "hetero"
    forces one (nemotron-nas refuses, before anything is written, what it cannot express). The
    record's `_model` is the compact model the weights were checked against."""
    from hubprune.surgery import remove_blocks
    from hubprune.transforms import slice_state_dict

    if schema == "nemotron-nas":  # refuse before touching the model
        reason = decilm_misfit(model.config, adapter, [b.layer_config() for _, b in shape.kept()])
        if reason is not None:
            raise ExportError(
                f"--format nemotron-nas cannot express this plan: {reason}; use --format compact"
            )
    if shape.removed_blocks():
        remove_blocks(model, adapter, shape.removed_blocks())
    compacted = shape.compacted()
    layers = [b.layer_config() for b in compacted.blocks]
    state = slice_state_dict(model.state_dict(), adapter, compacted)
    common = dict(
        dtype=next(model.parameters()).dtype,
        tokenizer=tokenizer,
        generation_config=getattr(model, "generation_config", None),
        source_dir=source_dir,
        max_shard_size=max_shard_size,
        extra_files=extra_files,
    )
    reason = decilm_misfit(model.config, adapter, layers)
    if reason is None and schema != "hetero":
        return write_decilm(state, model.config, adapter, layers, folder, **common)
    from hubprune.export_hetero import write_hetero

    record = write_hetero(state, model.config, layers, folder, **common)
    record["nemotron_nas_misfit"] = reason
    return record


def write_sliced_shape(
    model: nn.Module,
    adapter: ArchAdapter,
    shape: Any,
    plan_tensors: dict[str, torch.Tensor],
    tokenizer: Any,
    folder: Path,
    export_format: str,
    *,
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    extra_files: dict[str, str] | None = None,
    dense: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The export of a rotated and sliced residual stream (`shape.rotated`, bases in
    `plan_tensors`): only the heterogeneous format can hold it (per-block hidden widths and
    shortcut matrices); plain and nemotron-nas are refused. The record's `_model` is the sliced
    model (on the meta device) the weights were checked against. Each sliced tensor is computed
    just before it is written, so memory holds the dense weights and one sliced tensor, never the
    sliced model. `dense` gives the dense weights instead of `model` (a streamed model's
    :class:`~hubprune.streaming.FileStateDict`: read one tensor at a time, so memory holds one
    dense and one sliced tensor)."""
    from hubprune.export_hetero import write_hetero
    from hubprune.rotation import ATTN_SHORTCUT, MLP_SHORTCUT, Bases, SlicedWeights, sliced_shapes

    if export_format in ("plain", "nemotron-nas"):
        raise ExportError(
            f"a sliced residual stream cannot be written as {export_format} (it needs per-block hidden "
            "widths and shortcut matrices); use --format compact"
        )
    bases = Bases.from_tensors(plan_tensors, shape.dims.num_blocks)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    dtype = next(model.parameters()).dtype
    dense_shapes = shapes(model.state_dict())
    state = SlicedWeights(model.state_dict() if dense is None else dense, adapter, bases)
    sliced = sliced_shapes(dense_shapes, adapter, shape)
    head = f"{adapter.lm_head}.weight"
    shortcut_suffixes = (f"{ATTN_SHORTCUT}.weight", f"{MLP_SHORTCUT}.weight")
    slicing = {
        "hidden_sizes": bases.widths,
        "final_hidden_size": bases.final_width,
        "shortcut_params": sum(math.prod(s) for k, s in sliced.items() if k.endswith(shortcut_suffixes)),
        "lm_head_params": math.prod(sliced[head]),
        "lm_head_untied": tied,
    }
    record = write_hetero(
        state,
        model.config,
        [b.layer_config() for b in shape.blocks],
        folder,
        residual={"final_hidden_size": shape.final_hidden_size},
        dtype=dtype,
        tokenizer=tokenizer,
        generation_config=getattr(model, "generation_config", None),
        source_dir=source_dir,
        max_shard_size=max_shard_size,
        extra_files=extra_files,
        lazy_shapes=sliced,
    )
    record["slicing"] = slicing
    return record
