"""Pruning methods. Each module holds a params dataclass and a function returning a Plan, and
registers itself once; `get_method(name)` finds it, with the choices listed on a typo."""

from hubprune.methods import (  # noqa: F401
    angular,
    block_influence,
    finercut,
    perplexity,
    policy_gradient,
    random_blocks,
    reverse_order,
    slicing,
    wanda_sp,
)
from hubprune.methods.budget import Budget, parse_amount
from hubprune.methods.registry import (
    MethodContext,
    MethodSpec,
    available_methods,
    get_method,
    register_method,
)

__all__ = [
    "Budget",
    "MethodContext",
    "MethodSpec",
    "available_methods",
    "get_method",
    "parse_amount",
    "register_method",
]
