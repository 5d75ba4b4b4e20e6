"""Architecture adapters: the only place that knows model-family names.

`adapter_for(config_or_model)` picks the adapter by `config.model_type`. A model or config in a
compact export format (nemotron-nas, hubprune's heterogeneous format; see :mod:`hubprune.formats`)
gets the adapter of the native family whose module names it keeps. An unknown family raises
:class:`~hubprune.errors.UnsupportedArchitectureError` naming the supported ones.
"""

from __future__ import annotations

from typing import Any

from hubprune.arch.adapter import ArchAdapter
from hubprune.arch.families import ALL, LLAMA
from hubprune.errors import UnsupportedArchitectureError

_BY_MODEL_TYPE: dict[str, ArchAdapter] = {}
for _adapter in ALL:
    for _model_type in _adapter.model_types:
        if _model_type in _BY_MODEL_TYPE:
            raise ValueError(f"model_type {_model_type!r} is claimed by two adapters")
        _BY_MODEL_TYPE[_model_type] = _adapter

# The native model_type whose adapter navigates a model written in a compact schema: a DeciLM
# block is a Llama block with the same module names, whichever family it was exported from.
_SCHEMA_MODEL_TYPE = {"decilm": LLAMA.model_types[0]}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def schema_model_type(schema: str) -> str:
    """The native model_type whose adapter navigates models in compact `schema` (e.g. "decilm")."""
    return _SCHEMA_MODEL_TYPE[schema]


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def adapter_for(obj: Any) -> ArchAdapter:
    """The adapter for a model, a config object, a config.json dict, or a `model_type` string;
    for a compact export format, the adapter of the native family it is navigated as."""
    config = obj if isinstance(obj, dict) else getattr(obj, "config", obj)
    model_type = obj if isinstance(obj, str) else _get(config, "model_type")
    if model_type not in _BY_MODEL_TYPE and not isinstance(obj, str):
        from hubprune.formats import format_of

        as_dict = config if isinstance(config, dict) else getattr(config, "to_dict", dict)()
        fmt = format_of(as_dict)
        if fmt.name != "plain":
            model_type = fmt.family(as_dict)
    if model_type not in _BY_MODEL_TYPE:
        raise UnsupportedArchitectureError(
            f"model type '{model_type}' is not supported; supported model types: "
            + ", ".join(supported_model_types())
        )
    return _BY_MODEL_TYPE[model_type]


__all__ = ["ArchAdapter", "adapter_for", "schema_model_type", "supported_model_types", "ALL"]
