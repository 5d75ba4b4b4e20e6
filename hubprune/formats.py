"""Export formats: how a pruned model is written, and how hubprune loads it back.

Each format is one :class:`ExportFormat` in :data:`FORMATS`:

* ``plain``: the native architecture (fewer blocks; removed sublayers zero-filled), which
  stock transformers and vLLM load as the base family;
* ``nemotron-nas``: NVIDIA's DeciLM `block_configs` schema with our remote code
  (:mod:`hubprune.export_compact`), where removed attention / MLP sublayers are really gone.

:func:`format_of` tells a folder's format from its `config.json`. A compact folder is loaded with
hubprune's OWN copy of the remote code (``templates/remote/``, :func:`remote_code_module`), never
by executing the copy shipped in the folder, so evaluating or recovering a downloaded compact
model runs no code from it. The model is navigated with the adapter of the native family whose
module names it keeps (:meth:`ExportFormat.family`, asked by :func:`hubprune.arch.adapter_for`).
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hubprune.resources import templates_dir

#: The package hubprune's shipped remote-code files are imported under.
REMOTE_PACKAGE = "hubprune._remote_code"


@dataclass(frozen=True)
class ExportFormat:
    """One way a pruned model is stored: how to recognise, load, navigate and write it.

    `detect(config_dict)` says whether a `config.json` is in this format; `load(folder, *, dtype,
    device, **from_pretrained_options)` returns the model in eval mode on `device`;
    `family(config_dict)` is the native model_type whose adapter navigates it;
    `write(model, adapter, tokenizer, folder, *, source_dir, max_shard_size, extra_files)` writes
    it into a (staging) folder and returns the manifest's export record. `vllm_servable` says
    whether vLLM serves it as written.
    """

    name: str
    detect: Callable[[dict[str, Any]], bool]
    load: Callable[..., nn.Module]
    family: Callable[[dict[str, Any]], str]
    write: Callable[..., dict[str, Any]]
    vllm_servable: bool


# -- plain ----------------------------------------------------------------------------------------

#: `--device auto`: accelerate's big-model placement (``device_map="auto"``) for a model that needs
#: several GPUs; native checkpoints only.
DEVICE_MAP_AUTO = "auto"


def _is_native(config: dict[str, Any]) -> bool:
    from hubprune.arch import supported_model_types

    return config.get("model_type") in supported_model_types()


def _load_plain(folder: Path, *, dtype: Any, device: str, **options: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if device == DEVICE_MAP_AUTO:  # accelerate spreads the blocks over every GPU (then CPU)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map="auto", **options).eval()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **options)
    return model.to(device).eval()


def _write_plain(
    model: nn.Module, adapter: Any, tokenizer: Any, folder: Path, **where: Any
) -> dict[str, Any]:
    from hubprune.export import write_plain

    return write_plain(model, tokenizer, folder, **where)


PLAIN = ExportFormat(
    name="plain",
    detect=_is_native,
    load=_load_plain,
    family=lambda config: str(config.get("model_type")),
    write=_write_plain,
    vllm_servable=True,
)


# -- nemotron-nas (DeciLM) --------------------------------------------------------------------------


def remote_code_module(stem: str) -> types.ModuleType:
    """hubprune's own copy of a remote-code file (``templates/remote/<stem>.py``), imported as a
    submodule of :data:`REMOTE_PACKAGE` so its relative imports (``from .configuration_decilm
    import ...``) resolve to hubprune's copies too."""
    if REMOTE_PACKAGE not in sys.modules:
        package = types.ModuleType(REMOTE_PACKAGE)
        package.__path__ = [str(templates_dir() / "remote")]
        sys.modules[REMOTE_PACKAGE] = package
    return importlib.import_module(f"{REMOTE_PACKAGE}.{stem}")


def _is_nemotron_nas(config: dict[str, Any]) -> bool:
    return config.get("model_type") == "nemotron-nas"


def _load_nemotron_nas(folder: Path, *, dtype: Any, device: str, **options: Any) -> nn.Module:
    """The DeciLM model in `folder`, built by hubprune's copy of the remote code."""
    options.pop("trust_remote_code", None)  # nothing from the folder runs, so there is nothing to trust
    config = remote_code_module("configuration_decilm").DeciLMConfig.from_pretrained(folder)
    model_cls = remote_code_module("modeling_decilm").DeciLMForCausalLM
    model = model_cls.from_pretrained(folder, config=config, dtype=dtype, **options)
    return model.to(device).eval()


def _nemotron_nas_family(config: dict[str, Any]) -> str:
    from hubprune.arch import schema_model_type

    return schema_model_type("decilm")


def _decilm_layers(config: Any) -> list[dict[str, Any]]:
    """Per block of a loaded DeciLM model, the widths its `block_configs` give (KV heads and MLP
    width may differ per block after width pruning), as :func:`hubprune.export_compact.write_decilm`
    takes them."""
    out = []
    for i, block in enumerate(config.block_configs):
        attention, mlp = not block.attention.no_op, not block.ffn.no_op
        out.append(
            {
                "attention": attention,
                "num_attention_heads": config.num_attention_heads if attention else 0,
                "num_key_value_heads": config.num_key_value_heads_of(i),
                "mlp": mlp,
                "intermediate_size": config.intermediate_size_of(i),
            }
        )
    return out


def _write_nemotron_nas(model: nn.Module, adapter: Any, tokenizer: Any, folder: Path, **where: Any) -> dict:
    """A model with sublayers removed in memory through :func:`hubprune.export_compact.write_compact`;
    a model loaded from a nemotron-nas folder (recovered, say) with the widths of its own
    `block_configs`, which the native config's single KV-head count and MLP width cannot give."""
    from hubprune.export_compact import write_compact, write_decilm

    if getattr(model.config, "block_configs", None) is None:
        return write_compact(model, adapter, tokenizer, folder, **where)
    state = dict(model.state_dict())
    record = write_decilm(
        state,
        model.config,
        adapter,
        _decilm_layers(model.config),
        folder,
        **_as_loaded(model, tokenizer),
        **where,
    )
    record.pop("_model")
    return record


def _as_loaded(model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """The writer arguments that keep a loaded model as it is: its dtype, tokenizer and
    generation config."""
    return {
        "dtype": next(model.parameters()).dtype,
        "tokenizer": tokenizer,
        "generation_config": getattr(model, "generation_config", None),
    }


NEMOTRON_NAS = ExportFormat(
    name="nemotron-nas",
    detect=_is_nemotron_nas,
    load=_load_nemotron_nas,
    family=_nemotron_nas_family,
    write=_write_nemotron_nas,
    vllm_servable=True,
)


# -- hubprune heterogeneous ----------------------------------------------------------------------


def _is_hetero(config: dict[str, Any]) -> bool:
    from hubprune.export_hetero import is_hetero

    return is_hetero(config)


def _load_hetero(folder: Path, *, dtype: Any, device: str, **options: Any) -> nn.Module:
    """The heterogeneous model in `folder`, built by hubprune's copy of the remote code."""
    options.pop("trust_remote_code", None)  # nothing from the folder runs, so there is nothing to trust
    model_cls = remote_code_module("modeling_hubprune").HubpruneForCausalLM
    return model_cls.from_pretrained(folder, dtype=dtype, **options).to(device).eval()


def _hetero_layers(config: Any) -> list[dict[str, Any]]:
    """Per block of a loaded heterogeneous model, its widths (from transformers' per-layer view
    of `per_layer_config`; its residual width too), as :func:`hubprune.export_hetero.write_hetero`
    takes them."""
    out = []
    for i in range(config.num_hidden_layers):
        layer = config.per_layer_config[i]
        skip = set(getattr(layer, "skip", None) or ())
        attention, mlp = "attention" not in skip, "mlp" not in skip
        out.append(
            {
                "attention": attention,
                "num_attention_heads": layer.num_attention_heads if attention else 0,
                "num_key_value_heads": layer.num_key_value_heads if attention else 0,
                "mlp": mlp,
                "intermediate_size": layer.intermediate_size if mlp else 0,
                "hidden_size": layer.hidden_size,
            }
        )
    return out


def _write_hetero(model: nn.Module, adapter: Any, tokenizer: Any, folder: Path, **where: Any) -> dict:
    """A model loaded from a heterogeneous folder (recovered, say), written again with its own
    per-block widths and residual stream: the native fields of its config, `base_model_type` as
    the model type."""
    from hubprune.export_hetero import write_hetero

    config = model.config
    native = {k: v for k, v in config.to_dict().items() if k not in ("per_layer_config", "auto_map")}
    native["model_type"] = native.pop("base_model_type")
    residual = {"final_hidden_size": config.final_hidden_size} if config.rotated_residual else None
    state = dict(model.state_dict())
    record = write_hetero(
        state,
        native,
        _hetero_layers(config),
        folder,
        residual=residual,
        **_as_loaded(model, tokenizer),
        **where,
    )
    record.pop("_model")
    return record


HETERO = ExportFormat(
    name="hetero",
    detect=_is_hetero,
    load=_load_hetero,
    family=lambda config: str(config.get("base_model_type")),
    write=_write_hetero,
    vllm_servable=False,
)


# -- the registry -------------------------------------------------------------------------------------

FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Add `fmt` to :data:`FORMATS`; a name already taken is a bug (ValueError)."""
    if fmt.name in FORMATS:
        raise ValueError(f"export format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


for _fmt in (PLAIN, NEMOTRON_NAS, HETERO):
    register_format(_fmt)


def format_of(config: dict[str, Any]) -> ExportFormat:
    """The format a `config.json` dict is written in: the first compact format that claims it,
    else plain."""
    return next((f for f in FORMATS.values() if f is not PLAIN and f.detect(config)), PLAIN)


def folder_format(folder: str | Path) -> ExportFormat:
    """The format of the model folder `folder`, from its `config.json`."""
    from hubprune.source import read_model_config

    return format_of(read_model_config(Path(folder), str(folder)))


def load_folder(folder: str | Path, *, dtype: Any, device: str, **options: Any) -> nn.Module:
    """Load the model in `folder`, whatever its format, in eval mode on `device`; `options` go to
    `from_pretrained` (plain: `trust_remote_code`, `use_safetensors`)."""
    return folder_format(folder).load(Path(folder), dtype=dtype, device=device, **options)
