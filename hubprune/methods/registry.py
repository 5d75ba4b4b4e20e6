"""One registry of pruning methods. Each method module registers itself in one call."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from hubprune.arch import ArchAdapter
from hubprune.checkpoint import Checkpoint
from hubprune.data import CalibrationBatch
from hubprune.errors import BudgetError, RecipeError
from hubprune.methods.budget import Budget
from hubprune.plan import Plan


@dataclass
class MethodContext:
    """Everything a method may use. Methods never see the Hub, file paths or the CLI."""

    model: nn.Module
    adapter: ArchAdapter
    budget: Budget | None
    calibration: CalibrationBatch | None = None
    seed: int = 0
    batch_size: int = 8
    #: Where a long search saves its state to resume after a crash (:class:`hubprune.checkpoint.Checkpoint`).
    checkpoint: Checkpoint | None = None
    #: Calibration windows (same count, length and seed) cut from another text source, for a
    #: method that measures something on a second text (dynamic slicing's layer redundancy).
    calibrate_on: Callable[[str], CalibrationBatch] | None = None
    #: When the model is streamed (:class:`hubprune.streaming.StreamedWeights`), `model` is an empty
    #: skeleton and blocks are read from the checkpoint one at a time (:func:`capture.run_blocks`).
    weights: Any = None


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its CLI name, title, paper, parameter dataclass and plan function.

    `needs_calibration` decides whether calibration text is loaded at all.
    """

    name: str
    title: str
    reference_url: str
    params_cls: type
    plan_fn: Callable[[MethodContext, Any], Plan]
    needs_calibration: bool
    unit_kind: str = "block"
    citation: str = ""
    #: The `--budget-by` kinds this method can meet (see :mod:`hubprune.methods.budget`).
    budget_kinds: tuple[str, ...] = ("units", "params", "flops", "kv")
    #: Whether its plans rotate and slice the residual stream (only the compact format holds them).
    slices_residual: bool = False
    #: Whether it can score a streamed model, one block resident at a time (`--stream`); methods
    #: that need every block at once (searches over the whole model) cannot.
    streams: bool = False

    def check_budget(self, budget: Budget | None) -> None:
        """Refuse a budget kind this method cannot meet, naming the ones it can."""
        if budget is not None and budget.by not in self.budget_kinds:
            raise BudgetError(
                f"method '{self.name}' cannot budget by {budget.by}; it supports --budget-by "
                + ", ".join(self.budget_kinds)
            )

    def make_params(self, values: dict[str, Any] | None = None) -> Any:
        """Build the params dataclass, refusing unknown keys with the accepted ones."""
        values = dict(values or {})
        accepted = {f.name for f in fields(self.params_cls)}
        unknown = sorted(set(values) - accepted)
        if unknown:
            named = "', '".join(unknown)
            raise RecipeError(
                f"method '{self.name}' has no parameter '{named}'; its parameters: {', '.join(sorted(accepted)) or 'none'}"
            )
        return self.params_cls(**values)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, _REGISTRY, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise RecipeError(
            f"unknown method '{name}'{did_you_mean}; choose from: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def available_methods() -> list[MethodSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
