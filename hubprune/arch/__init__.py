"""Architecture adapters: the only place that knows model-family names.

`adapter_for(config_or_model)` picks the adapter by `config.model_type`; an unknown family raises
:class:`~hubprune.errors.UnsupportedArchitectureError` naming the supported ones.
"""

from __future__ import annotations

from typing import Any

from hubprune.arch.adapter import ArchAdapter
from hubprune.arch.families import ALL
from hubprune.errors import UnsupportedArchitectureError

_BY_MODEL_TYPE: dict[str, ArchAdapter] = {}
for _adapter in ALL:
    for _model_type in _adapter.model_types:
        if _model_type in _BY_MODEL_TYPE:
            raise ValueError(f"model_type {_model_type!r} is claimed by two adapters")
        _BY_MODEL_TYPE[_model_type] = _adapter


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def adapter_for(obj: Any) -> ArchAdapter:
    """The adapter for a model, a config, or a `model_type` string."""
    config = getattr(obj, "config", obj)
    model_type = obj if isinstance(obj, str) else getattr(config, "model_type", None)
    if model_type not in _BY_MODEL_TYPE:
        raise UnsupportedArchitectureError(
            f"model type '{model_type}' is not supported; supported model types: "
            + ", ".join(supported_model_types())
        )
    return _BY_MODEL_TYPE[model_type]


__all__ = ["ArchAdapter", "adapter_for", "supported_model_types", "ALL"]
