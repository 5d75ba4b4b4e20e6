"""Policy-gradient search over Bernoulli keep-masks, with forward passes only (arXiv 2406.10576).

Model-free: this module knows pools of units, keep probabilities and losses, never an LLM
(:mod:`hubprune.methods.policy_gradient` supplies the masked model's loss). Every unit j of a
pool has a keep probability s_j. A step:

1. draws K masks m^(k) ~ Bernoulli(s);
2. takes the loss L_k of each masked model (the caller's objective);
3. estimates the gradient of E[L] with the score function, against a moving-average baseline
   δ of the last steps' mean losses (variance reduction):
   ``g_j = 1/(K-1) · Σ_k (L_k - δ)(m_j^(k) - s_j) / d(s_j)`` where ``d = sqrt(s(1-s))`` as the
   released code does (``normalisation="sqrt"``) or ``d = s(1-s)``, textbook REINFORCE
   (``"reinforce"``);
4. steps s with SGD (momentum as the released code's optimiser) at a cosine-scheduled rate of
   its own per pool;
5. projects s back onto the budget: ``s <- clamp(s - v, 0, 1)`` with v such that the pool keeps
   its target expected count. Done once per pool, over all blocks, so blocks end up with
   different widths.

The whole state (probabilities, momentum, baseline window, step, RNG) fits in a dict of
tensors and numbers (:meth:`PolicySearch.state_dict`), so a killed run resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

NORMALISATIONS = ("sqrt", "reinforce")
#: The smallest s(1-s) a gradient is divided by (s at 0 or 1 never draws anything else).
_VARIANCE_FLOOR = 1e-6


def project_to_budget(
    probs: torch.Tensor, keep: float, floor: float = 0.0, iterations: int = 100
) -> torch.Tensor:
    """The Euclidean projection of `probs` onto {x in [floor, 1 - floor]^N : sum(x) = keep}:
    ``clamp(probs - v, floor, 1 - floor)`` with the shift v found by bisection (the sum falls as
    v grows)."""
    n = probs.numel()
    if not floor * n <= keep <= (1 - floor) * n:
        raise ValueError(f"cannot keep {keep} of {n} units with probabilities in [{floor}, {1 - floor}]")
    low, high = float(probs.min()) - 1.0, float(probs.max()) + 1.0
    for _ in range(iterations):
        shift = (low + high) / 2
        if float((probs - shift).clamp(floor, 1 - floor).sum()) > keep:
            low = shift
        else:
            high = shift
    return (probs - (low + high) / 2).clamp(floor, 1 - floor)


def score_function_gradient(
    probs: torch.Tensor, masks: torch.Tensor, losses: torch.Tensor, baseline: float, normalisation: str
) -> torch.Tensor:
    """The policy-gradient estimate of dE[L]/ds from K sampled `masks` [K, N] and their `losses`
    [K] (see the module docstring)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    variance = (probs * (1 - probs)).clamp_min(_VARIANCE_FLOOR)
    scale = variance.sqrt() if normalisation == "sqrt" else variance
    advantage = (losses.double() - baseline).unsqueeze(1)
    return (advantage * (masks.double() - probs)).sum(0) / (masks.shape[0] - 1) / scale


def cosine_rate(rate: float, step: int, steps: int) -> float:
    """`rate` decayed along half a cosine, from `rate` at step 0 to 0 at `steps`."""
    return rate * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))


@dataclass
class Pool:
    """One kind of unit (heads, channels or blocks): its keep probabilities, the expected number
    of units kept (the budget the projection holds), its base learning rate, and the floor that
    keeps every probability in [floor, 1 - floor]. Without a floor a unit that reaches 0 or 1
    always draws the same value, its gradient is 0 from then on and it can never come back."""

    probs: torch.Tensor
    keep: float
    lr: float
    floor: float = 0.0

    def __post_init__(self) -> None:
        n = self.probs.numel()
        # A floor the budget cannot honour (removing 1 of 30 blocks at 0.05) shrinks to what it can.
        self.floor = min(self.floor, self.keep / n / 2, (n - self.keep) / n / 2)
        self.probs = self.project(self.probs.double().flatten())
        self.velocity = torch.zeros_like(self.probs)

    def project(self, probs: torch.Tensor) -> torch.Tensor:
        return project_to_budget(probs, self.keep, self.floor)
        self.velocity = torch.zeros_like(self.probs)


class Checkpointer(Protocol):
    """Where a search keeps its state between runs (:class:`hubprune.checkpoint.Checkpoint`)."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class PolicySearch:
    """The optimisation state of a policy-gradient search and its update rule."""

    def __init__(
        self,
        pools: Mapping[str, Pool],
        *,
        steps: int,
        samples: int = 2,
        normalisation: str = "sqrt",
        momentum: float = 0.9,
        baseline_window: int = 10,
        seed: int = 0,
    ) -> None:
        if samples < 2:
            raise ValueError("the estimator needs at least 2 masks per step")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        self.pools = dict(pools)
        self.steps, self.samples = steps, samples
        self.normalisation, self.momentum = normalisation, momentum
        self.baseline_window = baseline_window
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.recent: list[float] = []  # mean losses of the last steps: the moving-average baseline
        self.curve: list[dict[str, float]] = []
        self.resumed_from = 0  # the step the last `run` started at (0 unless it resumed)

    def sample(self) -> dict[str, torch.Tensor]:
        """K masks per pool, {pool: [K, N] of 0/1}, drawn from the current probabilities."""
        return {
            name: torch.bernoulli(pool.probs.expand(self.samples, -1), generator=self.generator)
            for name, pool in self.pools.items()
        }

    def update(self, masks: Mapping[str, torch.Tensor], losses: torch.Tensor) -> None:
        """One step from the losses [K] of the sampled `masks`: estimate, SGD step, projection."""
        losses = losses.detach().double().cpu()
        mean = float(losses.mean())
        baseline = sum(self.recent) / len(self.recent) if self.recent else mean
        for name, pool in self.pools.items():
            grad = score_function_gradient(pool.probs, masks[name], losses, baseline, self.normalisation)
            pool.velocity = self.momentum * pool.velocity + grad
            rate = cosine_rate(pool.lr, self.step, self.steps)
            pool.probs = pool.project(pool.probs - rate * pool.velocity)
        self.recent = (self.recent + [mean])[-self.baseline_window :]
        self.curve.append({"step": self.step + 1, "loss": mean, "baseline": baseline})
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: probabilities, momentum, baseline, step, RNG."""
        return {
            "step": self.step,
            "probs": {name: pool.probs.clone() for name, pool in self.pools.items()},
            "velocity": {name: pool.velocity.clone() for name, pool in self.pools.items()},
            "recent": list(self.recent),
            "curve": [dict(point) for point in self.curve],
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, pool in self.pools.items():
            pool.probs = state["probs"][name].double()
            pool.velocity = state["velocity"][name].double()
        self.step = int(state["step"])
        self.recent = [float(x) for x in state["recent"]]
        self.curve = [dict(point) for point in state["curve"]]
        self.generator.set_state(state["rng"])

    def run(
        self,
        objective: Callable[[dict[str, torch.Tensor], int], torch.Tensor],
        *,
        checkpoint: Checkpointer | None = None,
        checkpoint_every: int = 0,
        desc: str = "Policy gradient",
        after_checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        """Optimise until `steps`: `objective(masks, step)` returns the loss [K] of each mask set.
        With a `checkpoint`, resume from its state if it has one and save every
        `checkpoint_every` steps (then call `after_checkpoint(step)`, a test hook)."""
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            self.load_state_dict(saved)
        self.resumed_from = self.step
        bar = tqdm(total=self.steps, initial=self.step, desc=desc, unit="step", leave=False)
        try:
            while self.step < self.steps:
                masks = self.sample()
                losses = objective(masks, self.step)
                self.update(masks, losses)
                bar.update(1)
                kept = ", ".join(
                    f"{n} {float(p.probs.sum()):.0f}/{p.probs.numel()}" for n, p in self.pools.items()
                )
                bar.set_postfix_str(f"loss {self.curve[-1]['loss']:.3f}, keep {kept}")
                due = checkpoint_every and self.step % checkpoint_every == 0 and self.step < self.steps
                if checkpoint is not None and due:
                    checkpoint.save(self.state_dict())
                    if after_checkpoint is not None:
                        after_checkpoint(self.step)
        finally:
            bar.close()
