"""The heterogeneous compact export: any per-block widths, for every supported family.

config.json is the source model's own config (its model_type kept as `base_model_type`) plus
transformers 5.24's `per_layer_config`: per block, the `num_attention_heads`,
`num_key_value_heads` and `intermediate_size` that differ from the global values, and
`skip: ["attention"]` / `["mlp"]` for removed sublayers. `model_type` is "hubprune" and
`auto_map` names our configuration and modeling files in `templates/remote/`, copied into the
folder, so stock transformers loads it with `trust_remote_code=True`. Why the config goes
through transformers' heterogeneity mixin is written in `configuration_hubprune.py`.

A sliced residual stream (SliceGPT) adds `rotated_residual: true`, `final_hidden_size` and a
per-block `hidden_size`, with untied embeddings; its norms hold no weights (their scales are folded
into the layers that read them) and each block holds two shortcut matrices
(`model.layers.i.attn_shortcut.weight`, `model.layers.i.mlp_shortcut.weight`); the contract is
written in `configuration_hubprune.py` and `modeling_hubprune.py`.

Weight names are the native checkpoint's minus removed modules. Before writing, the tensors are
checked name by name and shape by shape against a model built (on the meta device) from the
written config. hubprune itself loads such folders with its own copy of the remote code
(:func:`load_hetero`), never with code from a downloaded folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from hubprune.arch.families import ALL
from hubprune.errors import ExportError, UnsupportedArchitectureError
from hubprune.export import (
    DEFAULT_MAX_SHARD_SIZE,
    check_tensors,
    folder_files,
    shapes,
    write_with_remote_code,
)

MODEL_TYPE = "hubprune"
ARCHITECTURE = "HubpruneForCausalLM"
REMOTE_FILES = ("configuration_hubprune.py", "modeling_hubprune.py")
AUTO_MAP = {
    "AutoConfig": "configuration_hubprune.HubpruneConfig",
    "AutoModelForCausalLM": "modeling_hubprune.HubpruneForCausalLM",
}
SCHEMA = "hubprune heterogeneous (per_layer_config)"
# Keys of the native config that name the native class or the machine it was saved on, and the
# residual stream's keys (a loaded export's config has them; `residual` decides them).
_DROPPED_KEYS = (
    "architectures",
    "model_type",
    "auto_map",
    "_name_or_path",
    "transformers_version",
    "rotated_residual",
    "final_hidden_size",
)


def _native_dict(native_config: Any) -> dict[str, Any]:
    return dict(native_config) if isinstance(native_config, dict) else native_config.to_dict()


def is_hetero(config_dict: dict[str, Any]) -> bool:
    """Whether a config.json dict is one of our heterogeneous exports."""
    return config_dict.get("model_type") == MODEL_TYPE


def _block_overrides(
    native: dict[str, Any], index: int, layer: dict[str, Any], rotated: bool
) -> dict[str, Any]:
    """The `per_layer_config` entry of one block: what differs from the global config."""
    heads, kv_heads = (
        native["num_attention_heads"],
        native.get("num_key_value_heads") or native["num_attention_heads"],
    )
    out: dict[str, Any] = {}
    skip = []
    dense = native["hidden_size"]
    width = layer.get("hidden_size", dense)
    if width != dense and not rotated:
        raise ExportError(
            f"block {index} has a residual width of {width}; only a rotated residual stream is sliced"
        )
    if not 1 <= width <= dense:
        raise ExportError(f"block {index} has a residual width of {width}, outside [1, {dense}]")
    if width != dense:
        out["hidden_size"] = width
    if layer["attention"]:
        q, kv = layer["num_attention_heads"], layer["num_key_value_heads"]
        if kv <= 0 or q != kv * (heads // kv_heads):
            raise ExportError(
                f"block {index} keeps {q} query heads for {kv} KV heads; every block must keep "
                f"{heads // kv_heads} query heads per KV head"
            )
        if (q, kv) != (heads, kv_heads):
            out.update(num_attention_heads=q, num_key_value_heads=kv)
    else:
        skip.append("attention")
    if layer["mlp"]:
        if layer["intermediate_size"] <= 0:
            raise ExportError(f"block {index} keeps an MLP of width {layer['intermediate_size']}")
        if layer["intermediate_size"] != native["intermediate_size"]:
            out["intermediate_size"] = layer["intermediate_size"]
    else:
        skip.append("mlp")
    if skip:
        out["skip"] = skip
    return out


def _residual_keys(native: dict[str, Any], layers: list[dict[str, Any]], residual: dict[str, Any]) -> dict:
    """The config keys of a rotated residual stream; what cannot be rotated is refused (a Gemma
    family: UnsupportedArchitectureError; a removed sublayer or a bad final width: ExportError)."""
    from hubprune.formats import remote_code_module

    base, dense = native["model_type"], native["hidden_size"]
    if base not in remote_code_module("configuration_hubprune").ROTATABLE:
        raise UnsupportedArchitectureError(
            f"a {base} model cannot be exported with a rotated residual stream: Gemma normalises each "
            "sublayer's output and scales its norms by 1 + weight, so a rotation does not commute with its norms"
        )
    partial = [i for i, layer in enumerate(layers) if not (layer["attention"] and layer["mlp"])]
    if partial:
        raise ExportError(
            f"block {partial[0]} removes a sublayer; a rotated residual stream needs every sublayer"
        )
    final = residual["final_hidden_size"]
    if not 1 <= final <= dense:
        raise ExportError(f"final_hidden_size {final} is outside [1, {dense}]")
    return {"rotated_residual": True, "final_hidden_size": final, "tie_word_embeddings": False}


def hetero_config(
    native_config: Any, layers: list[dict[str, Any]], residual: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The config.json of a heterogeneous export of `native_config` (object or dict, with the
    kept number of blocks) with one `layers` entry per block and the `residual` stream's
    description (see :func:`write_hetero`)."""
    native = _native_dict(native_config)
    base = native.get("model_type")
    if not any(base in adapter.model_types for adapter in ALL):
        raise UnsupportedArchitectureError(f"the heterogeneous format has no modeling code for '{base}'")
    if len(layers) != native["num_hidden_layers"]:
        raise ExportError(
            f"{len(layers)} block shapes for a config with {native['num_hidden_layers']} blocks"
        )
    rotated = residual is not None
    residual_keys = _residual_keys(native, layers, residual) if rotated else {}
    per_layer = {i: o for i, layer in enumerate(layers) if (o := _block_overrides(native, i, layer, rotated))}
    # transformers writes the keys zero-padded so they sort numerically; so do we, and the file
    # stays the same when the config is saved again.
    width = len(str(max(per_layer))) if per_layer else 1
    config = {k: v for k, v in native.items() if k not in _DROPPED_KEYS}
    config.update(
        model_type=MODEL_TYPE,
        base_model_type=base,
        architectures=[ARCHITECTURE],
        auto_map=dict(AUTO_MAP),
        # Pruned blocks keep their head size; Qwen2 and Phi-3 configs only imply it.
        head_dim=native.get("head_dim") or native["hidden_size"] // native["num_attention_heads"],
        per_layer_config={str(i).zfill(width): o for i, o in per_layer.items()},
    )
    config.update(residual_keys)
    return config


def remote_code() -> ModuleType:
    """hubprune's own copy of `modeling_hubprune` (never the copy in a model folder)."""
    from hubprune.formats import remote_code_module

    return remote_code_module("modeling_hubprune")


def _build_hetero(folder: Path, state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """The model built from `folder`'s config.json with `state_dict` loaded strictly; an
    ExportError names the first tensor that the config does not imply. It runs: only its
    parameters are built empty, its buffers (rope frequencies) are computed."""
    from accelerate import init_empty_weights

    code = remote_code()
    config = code.HubpruneConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = code.HubpruneForCausalLM._from_config(config, dtype=dtype)
    expected, actual = shapes(model.state_dict()), shapes(state_dict)
    if config.tie_word_embeddings:  # one tensor, whether or not the state dict names it twice
        expected.pop("lm_head.weight", None)
        actual.pop("lm_head.weight", None)
    check_tensors(expected, actual, "heterogeneous")
    weights = {k: v.to(dtype) for k, v in state_dict.items() if k in expected}
    model.load_state_dict(weights, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _hetero_skeleton(folder: Path, actual: dict[str, tuple[int, ...]], dtype: torch.dtype) -> nn.Module:
    """The model of `folder`'s config.json on the meta device, once `actual` (the names and
    shapes of the weights about to be written) is checked against it: the weights are made one
    at a time as they are written (:func:`_save_lazily`), never loaded into it."""
    code = remote_code()
    config = code.HubpruneConfig.from_pretrained(folder)
    if config.tie_word_embeddings:
        raise ExportError("tensors made one at a time are written for untied embeddings only")
    with torch.device("meta"):
        model = code.HubpruneForCausalLM._from_config(config, dtype=dtype)
    check_tensors(shapes(model.state_dict()), actual, "heterogeneous")
    return model.eval()


def _save_lazily(
    model: nn.Module, folder: Path, tensors: Mapping[str, torch.Tensor], max_shard_size: str | int
) -> list[str]:
    """Write `tensors` (each computed when read) as ``save_pretrained`` would write the meta
    `model` holding them: same names, order, shards, index and bytes, one tensor in memory."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    from hubprune.tensor_writer import write_sharded

    meta = remove_tied_weights_from_state_dict(model.state_dict(), model)
    return write_sharded(
        meta,
        lambda name: tensors[name].to(meta[name].dtype),
        folder,
        max_shard_size=max_shard_size,
        total_parameters=model.num_parameters(),
    )


def write_hetero(
    state_dict: Mapping[str, torch.Tensor],
    native_config: Any,
    layers: list[dict[str, Any]],
    folder: Path,
    *,
    dtype: torch.dtype,
    tokenizer: Any = None,
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    extra_files: dict[str, str] | None = None,
    generation_config: Any = None,
    residual: dict[str, Any] | None = None,
    lazy_shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """Write the compact tensors `state_dict` (native names, removed modules left out, widths
    sliced) into the (staging) `folder` as a heterogeneous checkpoint with our remote code.

    `layers` holds one dict per kept block: `attention` (bool), `num_attention_heads`,
    `num_key_value_heads`, `mlp` (bool), `intermediate_size`, and on a rotated residual stream
    `hidden_size` (the block's residual width; absent: the dense one). `residual` is None (the
    native residual stream) or `{"final_hidden_size": int}` for a rotated, sliced one (SliceGPT:
    norm scales folded, shortcut tensors, no norm tensors, an untied `lm_head`). Returns the
    manifest's export record (its `_model` is the model the weights were checked against).
    `lazy_shapes`: `state_dict` computes each tensor when it is read (a sliced model's
    :class:`~hubprune.rotation.SlicedWeights`), these are their shapes; they are written one at a
    time and `_model` is a meta-device model.
    """
    config = hetero_config(native_config, layers, residual)
    save = None
    if lazy_shapes is None:

        def build(f: Path) -> nn.Module:
            return _build_hetero(f, dict(state_dict), dtype)

    else:

        def build(f: Path) -> nn.Module:
            return _hetero_skeleton(f, lazy_shapes, dtype)

        def save(m: nn.Module, f: Path) -> list[str]:
            return _save_lazily(m, f, state_dict, max_shard_size)

    model, licenses = write_with_remote_code(
        folder,
        config,
        REMOTE_FILES,
        build,
        tokenizer=tokenizer,
        generation_config=generation_config,
        source_dir=source_dir,
        max_shard_size=max_shard_size,
        extra_files=extra_files,
        save=save,
    )
    record = {
        "format": "compact",
        "schema": SCHEMA,
        "architectures": config["architectures"],
        "base_model_type": config["base_model_type"],
        "trust_remote_code": True,
        "vllm_servable": False,
        "how_to_load": "AutoModelForCausalLM.from_pretrained(REPO, trust_remote_code=True)",
        "remote_code": list(REMOTE_FILES),
        "attention_blocks": sum(1 for layer in layers if layer["attention"]),
        "mlp_blocks": sum(1 for layer in layers if layer["mlp"]),
        "zero_filled": False,
        "max_shard_size": max_shard_size,
        "files": folder_files(folder),
        "license_files": licenses,
        "_model": model,
    }
    if residual is not None:
        dense = config["hidden_size"]
        record.update(
            rotated_residual=True,
            hidden_sizes=[layer.get("hidden_size", dense) for layer in layers],
            final_hidden_size=config["final_hidden_size"],
        )
    return record


def load_hetero(
    folder: str | Path, *, dtype: torch.dtype | str = "auto", device: str | None = None
) -> nn.Module:
    """Load a heterogeneous export with hubprune's own copy of the modeling code (the folder's
    Python files are not run), in eval mode."""
    code = remote_code()
    config_path = Path(folder) / "config.json"
    if not config_path.is_file() or not is_hetero(json.loads(config_path.read_text(encoding="utf-8"))):
        raise ExportError(
            f"{folder} is not a hubprune heterogeneous export (config.json model_type '{MODEL_TYPE}')"
        )
    model = code.HubpruneForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device)
    return model.eval()
