"""Pruning budgets: how much to remove, as a unit count, or a fraction of units, parameters,
FLOPs per token or KV-cache bytes per token.

`--amount 6` removes 6 units; `--amount 0.25` removes 25% of the units (rounded to the nearest
whole unit); with `--budget-by params` (or `flops`, `kv`), `--amount 0.1` removes units in the
method's order until at least 10% of the model's parameters (FLOPs per token, KV cache) are gone.
Costs come from :func:`hubprune.cost.plan_cost` (tied embeddings counted once; FLOPs at the
default context). Each method says which kinds it supports (:attr:`MethodSpec.budget_kinds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hubprune.errors import BudgetError, RecipeError

BUDGET_KINDS = ("units", "params", "flops", "kv")
#: How a budget kind reads in a sentence.
BUDGET_WHAT = {
    "units": "the units",
    "params": "the parameters",
    "flops": "the FLOPs per token",
    "kv": "the KV cache",
}


def parse_amount(text: str | float | int) -> float | int:
    """`"6"` -> 6 (a count), `"0.25"` -> 0.25 (a fraction); anything else is a RecipeError."""
    if isinstance(text, bool):
        raise RecipeError(f"amount must be a number, got {text!r}")
    if isinstance(text, int):
        value: float | int = text
    else:
        try:
            value = float(text)
        except (TypeError, ValueError) as err:
            raise RecipeError(
                f"amount must be a number (a count like 6 or a fraction like 0.25), got {text!r}"
            ) from err
        if not math.isfinite(value):
            raise RecipeError(f"amount must be a finite number, got {text!r}")
        if value.is_integer() and value >= 1:
            value = int(value)
    if value <= 0:
        raise BudgetError(f"amount must be positive, got {text}")
    if isinstance(value, float) and value >= 1:
        raise BudgetError(f"amount {text} is neither a whole count nor a fraction below 1")
    return value


@dataclass(frozen=True)
class Budget:
    """How much to remove. `amount` is an int (count) or a float in (0, 1) (fraction)."""

    amount: float | int
    by: str = "units"

    def __post_init__(self) -> None:
        if self.by not in BUDGET_KINDS:
            raise RecipeError(f"budget-by must be one of {', '.join(BUDGET_KINDS)}, got {self.by!r}")
        if self.by != "units" and not isinstance(self.amount, float):
            raise BudgetError(
                f"a budget by {self.by} is a fraction below 1, e.g. --amount 0.1 --budget-by {self.by}"
            )
        parse_amount(self.amount)

    @classmethod
    def parse(cls, amount: str | float | int, by: str = "units") -> Budget:
        return cls(parse_amount(amount), by)

    def to_dict(self) -> dict[str, Any]:
        return {"amount": self.amount, "by": self.by}

    def unit_count(self, num_units: int, unit_name: str = "blocks") -> int:
        """The number of units a units-budget removes; refuses none or all."""
        count = self.amount if isinstance(self.amount, int) else round(self.amount * num_units)
        if count < 1:
            raise BudgetError(f"amount {self.amount} of {num_units} {unit_name} removes nothing")
        if count >= num_units:
            raise BudgetError(
                f"amount {self.amount} would remove all {num_units} {unit_name}; at least one must remain"
            )
        return count

    def select(
        self, order: Sequence[int], unit_costs: Sequence[float], total: float, unit_name: str = "blocks"
    ) -> list[int]:
        """Take units from `order` (most removable first) until the budget is met; `unit_costs`
        are what removing each unit saves, in the budget's kind, of `total`."""
        if self.by == "units":
            return list(order[: self.unit_count(len(unit_costs), unit_name)])
        target = self.amount * total
        chosen: list[int] = []
        removed = 0.0
        for unit in order:
            if removed >= target:
                break
            chosen.append(unit)
            removed += unit_costs[unit]
        if removed < target or len(chosen) >= len(unit_costs):
            raise BudgetError(
                f"removing {self.amount:.0%} of {BUDGET_WHAT[self.by]} would take all {len(unit_costs)} {unit_name}"
            )
        return chosen

    def count_for_uniform(self, unit_costs: Sequence[float], total: float, unit_name: str = "blocks") -> int:
        """How many units the budget means when any units may be chosen (for contiguous searches)."""
        if self.by == "units":
            return self.unit_count(len(unit_costs), unit_name)
        per_unit = sum(unit_costs) / len(unit_costs)
        count = math.ceil(self.amount * total / per_unit) if per_unit else len(unit_costs)
        if count >= len(unit_costs):
            raise BudgetError(
                f"removing {self.amount:.0%} of {BUDGET_WHAT[self.by]} would take all {len(unit_costs)} {unit_name}"
            )
        return max(count, 1)
