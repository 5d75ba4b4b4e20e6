"""FinerCut (Zhang et al., arXiv 2405.18218): greedy removal of attention and MLP sublayers.

Candidates are the 2L sublayers {attn_i, mlp_i}. Removing one makes its residual contribution
zero (:mod:`hubprune.sublayers`). The objective of a candidate c, given the set P already
removed, is a divergence between the dense model's next-token distributions p and those q of
the model without P ∪ {c}, averaged over every calibration token. Greedy search removes the
argmin and repeats until the budget is met; the one-shot variant scores every candidate once
against the dense model and removes in that order.

Divergences (`divergence=`), per token, p = dense, q = pruned:

* ``js-official`` (default, as in the official code, `llm_dissect`): 0.5·[KL(m‖p) + KL(m‖q)],
  m = (p+q)/2. Note the argument order: not the textbook Jensen–Shannon divergence.
* ``js``: the textbook Jensen–Shannon divergence 0.5·[KL(p‖m) + KL(q‖m)] (Lin, 1991).
* ``kl``: KL(p‖q).
* ``angular``: arccos(cos(z_p, z_q))/π between the logit vectors z.
* ``perplexity``: the pruned model's calibration perplexity, exp(mean NLL) (no dense reference).

Cost. The naive engine is the official code's algorithm: every candidate is a full forward pass
from the embeddings, with the removed sublayers' outputs zeroed (masked, as `llm_dissect` does,
so they are still computed): Σ_{t<k}(2L − t) full passes to remove k sublayers. Its stats also
give what the same passes would cost if removed sublayers were skipped instead
(`forward_flops_if_skipping`), the stronger baseline. The cached engine (default) uses two
facts, and picks exactly the same sublayers in the same order (tested):

1. A candidate in block j changes nothing before block j: it starts from the hidden states
   entering block j of the current pruned model (kept for every block, refreshed after each
   step only from the chosen block on, and taken from the chosen candidate's own kept states
   where there are some).
2. Across steps: once c* (in block j*) is chosen, a candidate c in block j < j* sees the same
   states up to block j* as before. Each candidate's states are kept at every block boundary
   when `reuse_budget_mb` allows, else at a few speculated ones (the blocks of the previous
   step's best candidates); a kept state stays valid until a removal at or before its block,
   and the next step resumes from the deepest one ≤ j*.

On top of that, the greedy search abandons candidates early (`bound=on`, the default): every
objective is a mean over calibration tokens of a per-token quantity that is never negative (KL
and JS clamped at 0 against float rounding, angular distance, next-token NLL), so a candidate's
running sum, divided by the final token count, bounds its final value from below. Calibration is
scored in chunks of `bound_rows` sequences, those that added most to the last removal's score
first (so running sums grow fast). Every candidate scores the first chunk; then, in last step's
ranking (then lowest so far), each runs chunk by chunk until complete or until its bound is
strictly above the best complete value D*. Such a candidate cannot be the argmin, so the chosen
sublayer, the tie-break and the order are those of the full search (tested against `bound=off`
and the naive engine). Its score is recorded as a lower bound (`lower_bound`,
`abandoned_after_tokens`). Kept states of an abandoned candidate cover only the chunks it ran; the
next step resumes the others from its own block.

Ruling a candidate out does not need its exact value, and the output layer (every logit) is a
fifth of a small model's forward pass. So for KL and both JS forms (`bound_vocab=N`, default 128),
once D* is known a chunk is first scored from the logits of a vocabulary subset only: the N
likeliest tokens at any of the chunk's positions under the dense model and under the current
pruned model (candidates differ from it by one sublayer), a few thousand of 49k on SmolLM2.
Merging outcomes never increases these divergences, and q is known on the subset up to its mass
there, so the minimum over that mass is a lower bound (:mod:`hubprune.methods.vocab_bound`; it
counts 1e-4 less, `SUBSET_MARGIN`, for float rounding). A candidate whose bound is not above D*
once every chunk is in gets the full output layer on its kept final states, chunk by chunk,
until it is above D* or complete. `bound_vocab=0` bounds from full logits only.

The bound bites when the best candidate is far below the rest; after a few removals every
candidate carries the divergence of those already made, the scores bunch up and most candidates
must see most tokens. A perplexity never comes near 0, so its candidates go late or not at all.
Not used by one-shot searches (they rank every score), the naive engine, or without a budget
(`inspect`: the scores are the output).

Usage: ``hubprune prune SOURCE --method finercut --amount 0.25 [--budget-by params]
[--format plain|compact] [--method-arg divergence=js] [--method-arg protect_first_blocks=2
--method-arg protect_steps=4] [--method-arg search=one-shot] [--method-arg bound=off]
[--method-arg bound_vocab=0]``.
`--amount` counts sublayers (2L of them); with `--budget-by params` sublayers are removed until
the parameter fraction is met. The official code's `-x r` protection corresponds to
protect_first_blocks = int(L·r) + 1 and protect_steps = int(2L·r) + 1. The last attention
sublayer is never removed (a model without attention has no KV cache to generate with).

The dense reference distributions are computed once (N·T·V floats in memory). Forward FLOPs are
tallied per block, sublayer and `lm_head` from costs measured with torch's FlopCounterMode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hubprune.arch import ArchAdapter
from hubprune.cost import removal_savings
from hubprune.data import CalibrationBatch
from hubprune.errors import BudgetError, RecipeError
from hubprune.evaluation.perplexity import token_nll
from hubprune.methods import vocab_bound
from hubprune.methods.budget import BUDGET_WHAT, Budget
from hubprune.methods.registry import MethodContext, MethodSpec, register_method
from hubprune.plan import Plan, Unit
from hubprune.shape import Dims, Shape
from hubprune.size import unique_params
from hubprune.sublayers import sublayers_skipped
from hubprune.transforms import gated

DIVERGENCES = ("js-official", "js", "kl", "angular", "perplexity")
SEARCHES = ("greedy", "one-shot")
ENGINES = ("cached", "naive")
BOUNDS = ("on", "off")
# A subset-vocabulary lower bound counts for this much less: float32 logits and the minimisation's
# tolerance move it by far less, so a candidate it rules out is above D* in the full search too.
SUBSET_MARGIN = 1e-4

DIVERGENCE_MEANING = {
    "js-official": "0.5*[KL(m||p)+KL(m||q)], m=(p+q)/2 (the official FinerCut code's variant)",
    "js": "textbook Jensen-Shannon 0.5*[KL(p||m)+KL(q||m)], m=(p+q)/2",
    "kl": "KL(p||q)",
    "angular": "arccos(cos(logits_p, logits_q))/pi",
    "perplexity": "calibration perplexity of the pruned model",
}


@dataclass
class FinerCutParams:
    """FinerCut settings; pass them with `--method-arg KEY=VALUE`."""

    divergence: str = field(
        default="js-official", metadata={"help": f"objective, one of {', '.join(DIVERGENCES)}"}
    )
    search: str = field(default="greedy", metadata={"help": "greedy (iterative) or one-shot"})
    engine: str = field(
        default="cached",
        metadata={"help": "cached (fast, same result) or naive (the official code: full masked passes)"},
    )
    protect_first_blocks: int = field(
        default=0, metadata={"help": "blocks at the front that are not candidates at first"}
    )
    protect_steps: int | None = field(
        default=None,
        metadata={"help": "removals after which protected blocks become candidates (None: never)"},
    )
    reuse_budget_mb: int = field(
        default=1024, metadata={"help": "memory for cross-step reuse of candidate states (0: off)"}
    )
    candidate_batch: int = field(
        default=4, metadata={"help": "cached engine: candidates run together in one batched forward"}
    )
    bound: str = field(
        default="on",
        metadata={
            "help": "greedy search, cached engine: stop scoring a candidate once its running sum exceeds "
            "the best complete one (same result; off: every candidate scored on all tokens)"
        },
    )
    bound_rows: int = field(
        default=1, metadata={"help": "with the bound on: calibration sequences scored between two checks"}
    )
    bound_vocab: int = field(
        default=128,
        metadata={
            "help": "with the bound on (KL, JS): rule candidates out from the logits of the top-N tokens "
            "at each position, under the dense and the current pruned model, only (0: from full logits)"
        },
    )

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("divergence", self.divergence, DIVERGENCES),
            ("search", self.search, SEARCHES),
            ("engine", self.engine, ENGINES),
            ("bound", self.bound, BOUNDS),
        ):
            if value not in choices:
                raise RecipeError(f"unknown FinerCut {name} '{value}'; choose from: {', '.join(choices)}")
        if not isinstance(self.protect_first_blocks, int) or self.protect_first_blocks < 0:
            raise RecipeError(
                f"protect_first_blocks must be a whole number >= 0, got {self.protect_first_blocks!r}"
            )
        if self.protect_steps is not None and (
            not isinstance(self.protect_steps, int) or self.protect_steps < 0
        ):
            raise RecipeError(
                f"protect_steps must be a whole number >= 0 or null, got {self.protect_steps!r}"
            )
        for name, value in (("candidate_batch", self.candidate_batch), ("bound_rows", self.bound_rows)):
            if not isinstance(value, int) or value < 1:
                raise RecipeError(f"{name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.bound_vocab, int) or self.bound_vocab < 0:
            raise RecipeError(f"bound_vocab must be a whole number >= 0, got {self.bound_vocab!r}")
        if not isinstance(self.reuse_budget_mb, int) or self.reuse_budget_mb < 0:
            raise RecipeError(f"reuse_budget_mb must be a whole number >= 0, got {self.reuse_budget_mb!r}")


# -- divergences: pure tensor functions ---------------------------------------------------------


def js_official(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """0.5·[KL(m‖p) + KL(m‖q)] with m = (p+q)/2, per token, from log-probabilities [..., V].

    The divergence the official FinerCut code computes (its "JS" with swapped KL arguments).
    """
    log_m = torch.logaddexp(ref_logp, logp) - math.log(2.0)
    m = log_m.exp()
    return 0.5 * (m * (log_m - ref_logp)).sum(-1) + 0.5 * (m * (log_m - logp)).sum(-1)


def js_textbook(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence 0.5·[KL(p‖m) + KL(q‖m)], m = (p+q)/2 (Lin 1991), per token."""
    log_m = torch.logaddexp(ref_logp, logp) - math.log(2.0)
    return 0.5 * (ref_logp.exp() * (ref_logp - log_m)).sum(-1) + 0.5 * (logp.exp() * (logp - log_m)).sum(-1)


def kl_divergence(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ p·(log p − log q), per token; p is the dense model."""
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def angular_logits(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """arccos(cos(z_p, z_q))/π between logit vectors, per token, in [0, 1]."""
    cos = F.cosine_similarity(ref_logits.float(), logits.float(), dim=-1, eps=1e-8)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


_TOKEN_DIVERGENCE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "js-official": js_official,
    "js": js_textbook,
    "kl": kl_divergence,
    "angular": angular_logits,
}


class _Objective:
    """Accumulates one candidate's objective over calibration chunks.

    Every per-token quantity is >= 0 (a divergence, or a next-token NLL), and each chunk adds a
    sum of them, so `total` never decreases: part-way, it bounds the final value from below. A
    chunk may first be scored from part of the vocabulary (`add_lower`: a lower bound of what it
    adds, :mod:`hubprune.methods.vocab_bound`); `add` later replaces that with the exact sum."""

    def __init__(self, name: str, keep_tokens: bool = False, keep_top: int = 0) -> None:
        self.name = name
        self.total = 0.0
        self.count = 0
        self.parts: dict[int, float] = {}  # chunk -> what it added to `total`
        # chunk -> (lower bound of what it adds, its tokens, the final hidden states to score it exactly)
        self.lower: dict[int, tuple[float, int, torch.Tensor]] = {}
        # chunk -> the per-token values it added (only when asked: for analyses of the bound)
        self.token_values: dict[int, torch.Tensor] | None = {} if keep_tokens else None
        # chunk -> the candidate's `keep_top` likeliest tokens at each scored position
        self.keep_top = keep_top
        self.top: dict[int, torch.Tensor] = {}

    @staticmethod
    def reference(name: str, logits: torch.Tensor) -> torch.Tensor | None:
        """What to keep of the dense logits: log-probs, raw logits (angular) or nothing."""
        if name == "perplexity":
            return None
        if name == "angular":
            return logits.float()
        return torch.log_softmax(logits.float(), dim=-1)

    @staticmethod
    def tokens(name: str, mask: torch.Tensor) -> int:
        """How many tokens of a chunk with attention mask `mask` the objective averages over."""
        return int(mask[:, 1:].sum()) if name == "perplexity" else int(mask.bool().sum())

    def add(
        self,
        chunk: int,
        ref: torch.Tensor | None,
        logits: torch.Tensor,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        """Add calibration chunk `chunk` (its logits under the candidate, its ids and mask)."""
        if self.name == "perplexity":
            part, count = token_nll(logits, input_ids, mask)  # -log q >= 0 per token, in floats too
            if self.token_values is not None:
                raise NotImplementedError("per-token values are kept for the divergence objectives only")
        else:
            assert ref is not None
            other = logits.float() if self.name == "angular" else torch.log_softmax(logits.float(), dim=-1)
            # KL and JS are >= 0, but float32 rounding leaves about -1e-8 on a token whose two
            # distributions agree: clamped, so that a running sum is a lower bound in floats too.
            values = _TOKEN_DIVERGENCE[self.name](ref, other).clamp_min(0.0)
            keep = mask.bool()
            part, count = float(values[keep].sum()), int(keep.sum())
            if self.token_values is not None:
                self.token_values[chunk] = values[keep].double().cpu()
            if self.keep_top:
                self.top[chunk] = logits[keep].topk(min(self.keep_top, logits.shape[-1]), dim=-1).indices
        self.lower.pop(chunk, None)
        self.parts[chunk] = part
        self.total += part
        self.count += count

    def add_lower(self, chunk: int, part: float, count: int, final_states: torch.Tensor) -> None:
        """Chunk `chunk` adds at least `part` over `count` tokens; `final_states` score it exactly."""
        self.lower[chunk] = (part, count, final_states)

    @property
    def running(self) -> float:
        """The running sum: exact parts plus the lower bounds of chunks not yet scored exactly."""
        return self.total + sum(part for part, _, _ in self.lower.values())

    @property
    def seen(self) -> int:
        """Tokens scored so far, exactly or with a lower bound."""
        return self.count + sum(count for _, count, _ in self.lower.values())

    def estimate(self) -> float:
        """The mean so far, lower bounds counted as values: to rank candidates, not a score."""
        return self._finish(self.running / max(self.seen, 1))

    def _finish(self, mean: float) -> float:
        return math.exp(mean) if self.name == "perplexity" else mean

    def value(self) -> float:
        """The objective over the tokens scored exactly so far (all of them: the score)."""
        return self._finish(self.total / max(self.count, 1))

    def bound(self, tokens: int) -> float:
        """A lower bound of the final value over all `tokens`: the running sum, divided by the same
        count as the final mean (both steps are monotone, so final >= bound in floats too)."""
        return self._finish(self.running / max(tokens, 1))


# -- the search -----------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """Removed sublayers in order, with the per-step record and the engine's cost."""

    order: list[Unit]
    step_divergence: list[float]
    step_scores: list[dict[Unit, float]]
    stats: dict[str, Any]
    # Per step, the candidates the bound dropped: (lower bound of the score, tokens scored).
    step_bounds: list[dict[Unit, tuple[float, int]]] = field(default_factory=list)
    # Per step, every candidate's per-token values in calibration order (`keep_token_values`).
    step_token_values: list[dict[Unit, torch.Tensor]] = field(default_factory=list)


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def _unit_key(unit: Unit) -> tuple[int, int]:
    return (unit.block, 0 if unit.kind == "attn" else 1)


class _Engine:
    """Runs candidate evaluations for one model and calibration set (naive or cached)."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        calibration: CalibrationBatch,
        batch_size: int,
        divergence: str,
        cached: bool,
        reuse_budget_mb: int,
        candidate_batch: int = 1,
        keep_token_values: bool = False,
        bound_vocab: int = 0,
    ) -> None:
        self.model, self.adapter, self.divergence, self.cached = model, adapter, divergence, cached
        # Every candidate's per-token values, in calibration order, after each `evaluate_many`.
        self.keep_token_values = keep_token_values
        self.token_values: dict[Unit, torch.Tensor] = {}
        self.bound_vocab = bound_vocab if divergence in vocab_bound.BOUNDED else 0
        self.device = next(model.parameters()).device
        self.chunks = [
            (ids.to(self.device), mask.to(self.device)) for ids, mask in calibration.batches(batch_size)
        ]
        self.blocks = adapter.blocks(model)
        self.num_blocks = len(self.blocks)
        self.final_norm = model.get_submodule(adapter.final_norm)
        self.lm_head = model.get_submodule(adapter.lm_head)
        self.flops = 0.0
        self.flops_if_skipping = 0.0
        self.forward_calls = 0
        self.block_evals = 0
        self._capture_dense()
        self._measure_costs()
        self.tokens = sum(_Objective.tokens(divergence, mask) for _, mask in self.chunks)
        # Bounded search: the order chunks are scored in, and what each chunk added to the score
        # of each candidate scored in full at this step (the chosen one's order the next chunks).
        self.chunk_order = list(range(len(self.chunks)))
        self.parts: dict[Unit, dict[int, float]] = {}
        self.tops: dict[Unit, dict[int, torch.Tensor]] = {}  # the same candidates' likeliest tokens
        self.removed: list[Unit] = []
        self.base: list[list[torch.Tensor]] = []
        # Kept states of each candidate's model: unit -> block boundary -> chunk -> state.
        self.stash: dict[Unit, dict[int, dict[int, torch.Tensor]]] = {}
        self.stash_next: dict[Unit, dict[int, dict[int, torch.Tensor]]] = {}
        self.speculate: set[int] = set()
        itemsize = next(model.parameters()).element_size()
        state_bytes = sum(ids.numel() for ids, _ in self.chunks) * model.config.hidden_size * itemsize
        self.state_bytes = state_bytes
        self.reuse_budget = reuse_budget_mb * 2**20 if cached else 0
        self.candidate_batch = candidate_batch
        if cached:
            self._refresh_base(0)

    # -- setup ------------------------------------------------------------------------------
    @torch.no_grad()
    def _capture_dense(self) -> None:
        """One dense pass per chunk: block kwargs, h_0 and the reference distributions."""
        self.kwargs: list[list[dict[str, Any]]] = []
        self.h0: list[torch.Tensor] = []
        self.reference: list[torch.Tensor | None] = []
        records: list[tuple[torch.Tensor, dict[str, Any]]] = []

        def pre_hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            h = args[0] if args else kwargs["hidden_states"]
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            records.append((h, kw))

        hooks = [b.register_forward_pre_hook(pre_hook, with_kwargs=True) for b in self.blocks]
        try:
            for ids, mask in self.chunks:
                records.clear()
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                self.forward_calls += 1
                self.h0.append(records[0][0])
                self.kwargs.append([kw for _, kw in records])
                self.reference.append(_Objective.reference(self.divergence, logits))
        finally:
            for h in hooks:
                h.remove()
        # per chunk: (token ids, their output-layer rows and biases, dense log-probs, log-mass outside)
        self.subsets: list[
            tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]
        ] = []
        self._choose_subsets({})

    def _choose_subsets(self, current_top: dict[int, torch.Tensor]) -> None:
        """Bounded search from part of the vocabulary: per chunk, the dense model's `bound_vocab`
        likeliest tokens at any position and the current pruned model's (`current_top`, by chunk:
        candidates differ from it by one sublayer, so their mass lies there too), their rows of
        the output layer, the dense log-probs there and the dense mass outside."""
        if not self.bound_vocab:
            return
        weight, bias = self.lm_head.weight, getattr(self.lm_head, "bias", None)
        self.subsets = []
        for c, ((_, mask), ref) in enumerate(zip(self.chunks, self.reference, strict=True)):
            assert ref is not None
            ids, inside, outside = vocab_bound.vocab_subset(ref, mask, self.bound_vocab, current_top.get(c))
            self.subsets.append((ids, weight[ids], None if bias is None else bias[ids], inside, outside))

    @torch.no_grad()
    def _measure_costs(self) -> None:
        """Forward FLOPs per row of each attention / MLP sublayer and of the head (FlopCounterMode)."""
        from torch.utils.flop_counter import FlopCounterMode

        def count(fn: Callable[[], Any]) -> int:
            with FlopCounterMode(display=False) as counter:
                fn()
            return counter.get_total_flops()

        rows = self.chunks[0][0].shape[0]
        h = self.h0[0]
        kw = self.kwargs[0]
        self.attn_cost, self.mlp_cost = [], []
        for b, block in enumerate(self.blocks):
            full = count(lambda b=b, block=block: block(h, **kw[b]))
            with sublayers_skipped(self.model, self.adapter, [Unit("attn", b)]):
                no_attn = count(lambda b=b, block=block: block(h, **kw[b]))
            with sublayers_skipped(self.model, self.adapter, [Unit("mlp", b)]):
                no_mlp = count(lambda b=b, block=block: block(h, **kw[b]))
            self.attn_cost.append((full - no_attn) / rows)
            self.mlp_cost.append((full - no_mlp) / rows)
        self.head_cost = count(lambda: self._head(h)) / rows
        self.vocab_size = self.lm_head.weight.shape[0]

    # -- running --------------------------------------------------------------------------------
    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.adapter.final_logits(self.model.config, self.lm_head(self.final_norm(h)))

    def _subset_head(self, h: torch.Tensor, chunk: int) -> torch.Tensor:
        """The logits of chunk `chunk`'s subset of the vocabulary only (soft-capping is per logit)."""
        _, weight, bias, _, _ = self.subsets[chunk]
        return self.adapter.final_logits(self.model.config, F.linear(self.final_norm(h), weight, bias))

    def _tally(
        self,
        rows: int,
        start: int,
        removed: set[Unit],
        *,
        head: float = 1.0,
        masked: bool = False,
        last: int | None = None,
        gated: Unit | None = None,
    ) -> None:
        """Count blocks `start`..`last`-1 (default: to the end) and `head` (a share) of the output
        layer for `rows` rows;
        `masked`: removed sublayers ran (their outputs zeroed), so they count in `flops` but not
        in `flops_if_skipping`; `gated`: a removed sublayer that ran all the same (its output
        zeroed for these rows of a batch), counted in both."""
        for b in range(start, self.num_blocks if last is None else last):
            for kind, cost in (("attn", self.attn_cost[b]), ("mlp", self.mlp_cost[b])):
                if Unit(kind, b) not in removed or Unit(kind, b) == gated:
                    self.flops += rows * cost
                    self.flops_if_skipping += rows * cost
                elif masked:
                    self.flops += rows * cost
            self.block_evals += 1
        self.flops += rows * self.head_cost * head
        self.flops_if_skipping += rows * self.head_cost * head

    @torch.no_grad()
    def _refresh_base(self, start: int, known: dict[int, dict[int, torch.Tensor]] | None = None) -> None:
        """Hidden states entering every block of the current pruned model, recomputed from `start`
        (states before the block of the latest removal cannot have changed). `known`: states of
        the current model already computed (the chosen candidate's kept ones), by block, per chunk."""
        known = known or {}
        with sublayers_skipped(self.model, self.adapter, self.removed):
            for c in range(len(self.chunks)):
                rows = self.chunks[c][0].shape[0]
                fresh = len(self.base) <= c
                begin = 0 if fresh else start
                states = [self.h0[c]] if fresh else self.base[c][: begin + 1]
                h = states[-1]
                for b in range(begin + 1, self.num_blocks):  # the state after the last block is unused
                    if c in known.get(b, {}):
                        h = known[b][c]
                    else:
                        h = _first_tensor(self.blocks[b - 1](h, **self.kwargs[c][b - 1]))
                        self._tally(rows, b - 1, set(self.removed), head=0.0, last=b)
                    states.append(h)
                if fresh:
                    self.base.append(states)
                else:
                    self.base[c] = states

    @torch.no_grad()
    def evaluate_naive(self, unit: Unit) -> float:
        """The official code's evaluation of removing `unit` on top of the current removals: a full
        pass from the embeddings per chunk, removed sublayers computed and their outputs zeroed."""
        removal = set(self.removed) | {unit}
        objective = _Objective(self.divergence, self.keep_token_values)
        with _outputs_zeroed(self.model, self.adapter, [*self.removed, unit]):
            for c, (ids, mask) in enumerate(self.chunks):
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                self.forward_calls += 1
                self._tally(ids.shape[0], 0, removal, masked=True)
                objective.add(c, self.reference[c], logits, ids, mask)
        if objective.token_values is not None:
            self.token_values[unit] = torch.cat([objective.token_values[c] for c in range(len(self.chunks))])
        return objective.value()

    def evaluate_many(self, units: list[Unit], last_choice: Unit | None) -> dict[Unit, float]:
        """The objective of each of `units` on every calibration token."""
        self.token_values = {}
        if not self.cached:
            return {u: self.evaluate_naive(u) for u in units}
        objectives = {u: _Objective(self.divergence, self.keep_token_values) for u in units}
        for c in range(len(self.chunks)):
            self._advance(units, c, last_choice, objectives)
        for unit, objective in objectives.items():
            if objective.token_values is not None:
                self.token_values[unit] = torch.cat(
                    [objective.token_values[c] for c in range(len(self.chunks))]
                )
        return {u: objectives[u].value() for u in units}

    def evaluate_bounded(
        self, units: list[Unit], last_choice: Unit | None, ranking: list[Unit]
    ) -> tuple[dict[Unit, float], dict[Unit, tuple[float, int]]]:
        """Find the argmin of `units` with early abandoning: the exact objective of each candidate
        it could not rule out, and (lower bound, tokens scored) of each one it dropped.

        Chunks go in `chunk_order` (the sequences the last removal moved most first, so running
        sums grow fast), those a candidate can resume deepest in first (`_chunk_sequence`). Every
        candidate scores its first chunk (batched); then, in last step's ranking (then lowest
        value so far), each runs chunk by chunk until it is complete or its running bound is
        strictly above the best complete value D*: it cannot be the minimum then, so the argmin
        and its tie-break are the full search's.

        With `bound_vocab`, a chunk is first scored from the logits of its vocabulary subset (a
        lower bound of what it adds); a candidate still not above D* once every chunk is in gets
        the full output layer on its kept final states, chunk by chunk, until it is ruled out or
        complete. The first candidate to complete, while D* is unknown, is scored in full."""
        subset = bool(self.bound_vocab)
        objectives = {u: _Objective(self.divergence, keep_top=self.bound_vocab) for u in units}
        sequence = {u: self._chunk_sequence(u, last_choice) for u in units}
        for chunk in self.chunk_order:  # each candidate's first chunk, batched by chunk
            group = [u for u in units if sequence[u][0] == chunk]
            if group:
                self._advance(group, chunk, last_choice, objectives, exact=not subset)
        prior = {u: i for i, u in enumerate(ranking)}
        order = sorted(
            units, key=lambda u: (prior.get(u, len(prior)), objectives[u].estimate(), _unit_key(u))
        )
        best = math.inf
        exact: dict[Unit, float] = {}
        dropped: dict[Unit, tuple[float, int]] = {}
        for unit in order:
            objective = objectives[unit]
            for chunk in sequence[unit][1:]:
                if objective.bound(self.tokens) > best:
                    break
                self._advance([unit], chunk, last_choice, objectives, exact=not subset or best == math.inf)
            # Chunks scored from the subset, largest bound first: the full output layer while it can win.
            for chunk in sorted(objective.lower, key=lambda c: -objective.lower[c][0]):
                if objective.bound(self.tokens) > best:
                    break
                self._score_exactly(objective, chunk)
            if len(objective.parts) < len(self.chunks):
                dropped[unit] = (objective.bound(self.tokens), objective.seen)
            else:
                exact[unit] = objective.value()
                best = min(best, exact[unit])
        self.parts = {u: objectives[u].parts for u in exact}
        self.tops = {u: objectives[u].top for u in exact}
        return exact, dropped

    def _chunk_sequence(self, unit: Unit, last_choice: Unit | None) -> list[int]:
        """The chunks in the order `unit` scores them: those where it resumes deepest (its own
        kept states, from the step before) first, then `chunk_order`. Any order gives the same
        bound; resuming deep costs least, and those chunks led the order last step too."""
        rank = {c: i for i, c in enumerate(self.chunk_order)}
        start = {c: self._resume_start(unit, last_choice, c) for c in self.chunk_order}
        return sorted(self.chunk_order, key=lambda c: (-start[c], rank[c]))

    @torch.no_grad()
    def _score_exactly(self, objective: _Objective, chunk: int) -> None:
        """Replace chunk `chunk`'s lower bound by its exact sum: the output layer on its kept states."""
        ids, mask = self.chunks[chunk]
        states = objective.lower[chunk][2]
        self._tally(ids.shape[0], self.num_blocks, set())  # no blocks: the output layer only
        objective.add(chunk, self.reference[chunk], self._head(states), ids, mask)

    @torch.no_grad()
    def _advance(
        self,
        units: list[Unit],
        chunk: int,
        last_choice: Unit | None,
        objectives: dict[Unit, _Objective],
        exact: bool = True,
    ) -> None:
        """Score `units` on one chunk (`exact`: with the full output layer, else a lower bound from
        the chunk's vocabulary subset); up to `candidate_batch` of them that resume at the same
        block run as one batch (rows stacked, each candidate's own sublayer zeroed for its rows
        only), which gives the same values as one at a time."""
        by_start: dict[int, list[tuple[Unit, torch.Tensor]]] = {}
        for unit in units:
            start, state = self._resume(unit, last_choice, chunk)
            by_start.setdefault(start, []).append((unit, state))
        with sublayers_skipped(self.model, self.adapter, self.removed):
            for start, members in sorted(by_start.items()):
                for i in range(0, len(members), self.candidate_batch):
                    self._run_group(start, members[i : i + self.candidate_batch], chunk, objectives, exact)

    def _run_group(
        self,
        start: int,
        members: list[tuple[Unit, torch.Tensor]],
        chunk: int,
        objectives: dict[Unit, _Objective],
        exact: bool = True,
    ) -> None:
        """One batched pass on chunk `chunk` for candidates that all resume at block `start` (each
        with its state entering that block). A candidate of block `start` has its own sublayer
        skipped when it is alone in the batch, else zeroed for its rows (it still runs: counted)."""
        ids, mask = self.chunks[chunk]
        rows = ids.shape[0]
        group = [u for u, _ in members]
        h = torch.cat([state for _, state in members]) if len(members) > 1 else members[0][1]
        kwargs = [_expand_rows(kw, rows, len(group)) for kw in self.kwargs[chunk]]
        own = {kind: [u.kind == kind and u.block == start for u in group] for kind in ("attn", "mlp")}
        skipped = [Unit(kind, start) for kind, flags in own.items() if all(flags)]
        gates = {
            Unit(kind, start): torch.tensor(
                [0.0 if g else 1.0 for g in flags for _ in range(rows)], dtype=h.dtype, device=h.device
            ).view(-1, 1, 1)
            for kind, flags in own.items()
            if any(flags) and not all(flags)
        }
        wanted = {k for k in self.speculate if k > start}
        stored: dict[int, torch.Tensor] = {}
        with sublayers_skipped(self.model, self.adapter, skipped), gated(self.model, self.adapter, gates):
            for b in range(start, self.num_blocks):
                if b in wanted:
                    stored[b] = h
                h = _first_tensor(self.blocks[b](h, **kwargs[b]))
        for i, unit in enumerate(group):
            rows_i = slice(i * rows, (i + 1) * rows)
            for k, state in stored.items():
                self.stash_next.setdefault(unit, {}).setdefault(k, {})[chunk] = state[rows_i]
            removal, gate = set(self.removed) | {unit}, unit if unit in gates else None
            if exact:
                self._tally(rows, start, removal, gated=gate)
                objectives[unit].add(chunk, self.reference[chunk], self._head(h[rows_i]), ids, mask)
                continue
            _, weight, _, ref, ref_outside = self.subsets[chunk]
            self._tally(rows, start, removal, gated=gate, head=weight.shape[0] / self.vocab_size)
            keep = mask.bool()
            logits = self._subset_head(h[rows_i], chunk)[keep]
            bound = vocab_bound.lower_bound(self.divergence, ref, ref_outside, logits)
            # Less a margin for float rounding (float32 logits, the golden-section tolerance).
            part = float(bound.sum()) * (1.0 - SUBSET_MARGIN)
            objectives[unit].add_lower(chunk, part, int(keep.sum()), h[rows_i])

    def _resume(self, unit: Unit, last_choice: Unit | None, chunk: int) -> tuple[int, torch.Tensor]:
        """Where `unit`'s evaluation on `chunk` can start: its own block (from the current model's
        state), or the deepest boundary where a state of its own model is still valid."""
        start = self._resume_start(unit, last_choice, chunk)
        if start != unit.block:
            return start, self.stash[unit][start][chunk]
        return unit.block, self.base[chunk][unit.block]

    def _resume_start(self, unit: Unit, last_choice: Unit | None, chunk: int) -> int:
        """The block `_resume` starts `unit` from on `chunk`."""
        if last_choice is not None and unit.block < last_choice.block:
            kept = self.stash.get(unit, {})
            usable = [
                k for k, states in kept.items() if unit.block < k <= last_choice.block and chunk in states
            ]
            if usable:
                return max(usable)
        return unit.block

    def begin_step(self, ranking: list[Unit], candidates: list[Unit]) -> None:
        """Choose the boundaries to stash this step (the blocks of last step's best candidates).

        Each candidate keeps states at most at the chosen boundaries (older kept states at other
        boundaries are dropped), so the stash stays within `reuse_budget_mb`."""
        self.speculate = self._boundaries(ranking, candidates)
        if self.speculate != set(range(1, self.num_blocks)):
            self.stash = {
                u: {k: v for k, v in kept.items() if k in self.speculate} for u, kept in self.stash.items()
            }

    def _boundaries(self, ranking: list[Unit], candidates: list[Unit]) -> set[int]:
        """As many of the likeliest boundaries as the budget holds. A state entering block k is kept
        only for the candidates before it (a candidate in block j resumes there at the next step
        only if the removal lands at or after k > j), so boundary k costs one state per such one."""
        if not self.cached or self.reuse_budget == 0 or not candidates:
            return set()

        def cost(boundaries: Iterable[int]) -> int:
            return sum(sum(1 for u in candidates if u.block < k) for k in boundaries) * self.state_bytes

        every = range(1, self.num_blocks)
        if cost(every) <= self.reuse_budget:  # memory for every boundary: no need to guess
            return set(every)
        if not ranking:  # first step: the densest even grid over the blocks that fits
            for slots in range(self.num_blocks - 2, 0, -1):
                grid = {self.num_blocks * (i + 1) // (slots + 1) for i in range(slots)}
                if cost(grid) <= self.reuse_budget:
                    return grid
            return set()
        chosen: set[int] = set()
        spent = 0
        for unit in ranking:  # where the next removal most likely lands, likeliest first
            if unit.block == 0 or unit.block in chosen:
                continue
            extra = cost([unit.block])
            if spent + extra <= self.reuse_budget:
                chosen.add(unit.block)
                spent += extra
        return chosen

    def commit(self, unit: Unit) -> None:
        """Record the removal of `unit`, refresh the base states from its block on (from its own
        kept states where there are some), drop kept states that the removal makes stale, and
        order the next step's chunks by how much each added to `unit`'s score (bounded search)."""
        self.removed.append(unit)
        if unit in self.parts:  # its most moved sequences will likely move the next candidates most
            parts = self.parts[unit]
            self.chunk_order = sorted(parts, key=lambda c: (-parts[c], c))
        if unit in self.tops:  # the pruned model now: the next candidates' mass lies near its own
            self._choose_subsets(self.tops[unit])
        self.parts, self.tops = {}, {}
        kept: dict[Unit, dict[int, dict[int, torch.Tensor]]] = {}
        for source in (self.stash, self.stash_next):  # this step's states replace older ones
            for u, states in source.items():
                for k, per_chunk in states.items():
                    kept.setdefault(u, {}).setdefault(k, {}).update(per_chunk)
        chosen = kept.pop(unit, {})
        # A state entering block k does not depend on a removal in block j* >= k.
        self.stash = {u: {k: v for k, v in states.items() if k <= unit.block} for u, states in kept.items()}
        self.stash_next = {}
        if self.cached:
            self._refresh_base(unit.block, chosen)


def _outputs_zeroed(
    model: nn.Module, adapter: ArchAdapter, units: list[Unit]
) -> AbstractContextManager[None]:
    """The official code's masking: `units` still run, their outputs are multiplied by zero."""
    weight = next(model.parameters())
    zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
    return gated(model, adapter, {unit: zero for unit in units})


def _expand_rows(value: Any, rows: int, times: int) -> Any:
    """Repeat the batch dimension of per-row tensors in block kwargs (masks) for stacked candidates;
    tensors with batch dimension 1 broadcast and are left alone."""
    if times == 1:
        return value
    if isinstance(value, dict):
        return {k: _expand_rows(v, rows, times) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_expand_rows(v, rows, times) for v in value)
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows and rows > 1:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    return value


def _allowed(unit: Unit, step: int, params: FinerCutParams) -> bool:
    if unit.block >= params.protect_first_blocks:
        return True
    return params.protect_steps is not None and step >= params.protect_steps


def _candidates(all_units: list[Unit], removed: list[Unit], step: int, params: FinerCutParams) -> list[Unit]:
    attn_left = sum(1 for u in all_units if u.kind == "attn" and u not in removed)
    out = []
    for unit in all_units:
        if unit in removed or not _allowed(unit, step, params):
            continue
        if unit.kind == "attn" and attn_left <= 1:
            continue  # keep one attention: a model without any has no KV cache to generate with
        out.append(unit)
    return out


def _bound_off_reason(params: FinerCutParams, every_score: bool) -> str | None:
    """Why early abandoning does not apply to this search, or None when it does."""
    if params.bound == "off":
        return "off as asked (bound=off): every candidate scored on every token"
    if params.search == "one-shot":
        return "not used by a one-shot search, which ranks every candidate by its full score"
    if params.engine == "naive":
        return "not used by the naive engine, which runs the official code's algorithm as it is"
    if every_score:
        return "not used: the scores are the output here, so every candidate is scored on every token"
    return None


def finercut_search(
    model: nn.Module,
    adapter: ArchAdapter,
    calibration: CalibrationBatch,
    params: FinerCutParams,
    done: Callable[[list[Unit]], bool],
    *,
    batch_size: int = 8,
    progress: bool = True,
    every_score: bool = False,
    keep_token_values: bool = False,
) -> SearchResult:
    """Remove sublayers (greedy or one-shot) until `done(removed)` holds.

    Returns the removal order, the objective of each chosen removal, every candidate's score at
    every step (lower bounds apart, for those the bound dropped), and the engine's cost (wall
    time, forward FLOPs, forward calls). `every_score`: no early abandoning, whatever `params`.
    `keep_token_values`: also every candidate's per-token values (divergence objectives, no early
    abandoning: for analyses of what a bound could save, `bench/finercut_search.py`).
    """
    start_time = time.perf_counter()
    off_reason = _bound_off_reason(params, every_score or keep_token_values)
    engine = _Engine(
        model,
        adapter,
        calibration,
        batch_size if off_reason else params.bound_rows,
        params.divergence,
        params.engine == "cached",
        params.reuse_budget_mb,
        params.candidate_batch,
        keep_token_values,
        0 if off_reason else params.bound_vocab,
    )
    num_blocks = engine.num_blocks
    all_units = [Unit(kind, b) for b in range(num_blocks) for kind in ("attn", "mlp")]
    order: list[Unit] = []
    step_div: list[float] = []
    step_scores: list[dict[Unit, float]] = []
    step_bounds: list[dict[Unit, tuple[float, int]]] = []
    step_token_values: list[dict[Unit, torch.Tensor]] = []
    ranking: list[Unit] = []
    bar = tqdm(desc="FinerCut", unit="removal", disable=not progress, leave=False)
    try:
        if params.search == "one-shot":
            candidates = _candidates(all_units, [], 0, params)
            engine.begin_step([], [])
            scores = engine.evaluate_many(candidates, None)
            step_scores.append(scores)
            step_bounds.append({})
            step_token_values.append(engine.token_values)
            ranked = sorted(scores, key=lambda u: (scores[u], _unit_key(u)))
            for unit in ranked:
                if done(order):
                    break
                if unit not in _candidates(all_units, order, len(order), params):
                    continue
                order.append(unit)
                step_div.append(scores[unit])
                bar.update()
            if not done(order):
                raise BudgetError("the budget would remove every sublayer that may be removed")
        else:
            while not done(order):
                candidates = _candidates(all_units, order, len(order), params)
                if not candidates:
                    raise BudgetError(
                        f"the budget would remove every sublayer that may be removed ({len(order)} removed so far)"
                    )
                engine.begin_step(ranking, candidates)
                last = order[-1] if order else None
                if off_reason:
                    scores, bounds = engine.evaluate_many(candidates, last), {}
                else:
                    scores, bounds = engine.evaluate_bounded(candidates, last, ranking)
                best = min(scores, key=lambda u: (scores[u], _unit_key(u)))
                known = {**{u: b for u, (b, _) in bounds.items()}, **scores}
                ranking = sorted((u for u in candidates if u != best), key=lambda u: (known[u], _unit_key(u)))
                order.append(best)
                step_div.append(scores[best])
                step_scores.append(scores)
                step_bounds.append(bounds)
                step_token_values.append(engine.token_values)
                engine.commit(best)
                bar.update()
    finally:
        bar.close()
    stats = {
        "engine": params.engine,
        "wall_s": time.perf_counter() - start_time,
        "forward_flops": engine.flops,
        "forward_flops_if_skipping": engine.flops_if_skipping,
        "full_forward_calls": engine.forward_calls,
        "block_evaluations": engine.block_evals,
        "flops_per_row": {
            "attn": engine.attn_cost,
            "mlp": engine.mlp_cost,
            "head": engine.head_cost,
        },
        "bound": "off" if off_reason else "on",
        "bound_note": off_reason
        or f"a candidate stops being scored once its running sum over chunks of {params.bound_rows} "
        "calibration sequence(s) exceeds the best complete score: it cannot be the minimum"
        + (
            f"; chunks are first bounded from the logits of the {engine.bound_vocab} likeliest tokens at each "
            "position under the dense and the current pruned model"
            if engine.bound_vocab
            else ""
        ),
        "calibration_tokens": engine.tokens,
        "calibration_rows": sum(ids.shape[0] for ids, _ in engine.chunks),
        "candidate_evaluations": sum(len(s) + len(b) for s, b in zip(step_scores, step_bounds, strict=True)),
        "abandoned": sum(len(b) for b in step_bounds),
    }
    return SearchResult(order, step_div, step_scores, stats, step_bounds, step_token_values)


# -- the plan ---------------------------------------------------------------------------------------


def _stop_rule(
    budget: Budget, savings: dict[Unit, float], total: float, num_units: int
) -> Callable[[list[Unit]], bool]:
    """When the search has removed enough: a unit count, or `savings` (per sublayer, in the
    budget's kind) adding up to the budget's share of `total`."""
    if budget.by == "units":
        count = budget.unit_count(num_units, "sublayers")
        return lambda removed: len(removed) >= count
    target = budget.amount * total
    if target >= sum(savings.values()) - min(savings.values()):
        raise BudgetError(
            f"removing {budget.amount:.0%} of {BUDGET_WHAT[budget.by]} would take every attention and MLP sublayer"
        )
    return lambda removed: sum(savings[u] for u in removed) >= target


def plan_finercut(ctx: MethodContext, params: FinerCutParams) -> Plan:
    """Run the search under `ctx.budget` (one step of scores only when there is no budget)."""
    assert ctx.calibration is not None
    model, adapter = ctx.model, ctx.adapter
    blocks = adapter.blocks(model)
    sub_params: dict[Unit, int] = {}
    for b, block in enumerate(blocks):
        counts = adapter.sublayer_params(block)
        sub_params[Unit("attn", b)] = counts["attn"]
        sub_params[Unit("mlp", b)] = counts["mlp"]
    total = unique_params([model])
    if ctx.budget is None:
        done: Callable[[list[Unit]], bool] = lambda removed: len(removed) >= 1  # noqa: E731
    else:
        units = list(sub_params)
        dims = Dims.from_config(model.config)
        shapes = [Shape.from_units([u], dims) for u in units]
        costs, dense = removal_savings(model, adapter, shapes, ctx.budget.by)
        done = _stop_rule(ctx.budget, dict(zip(units, costs, strict=True)), dense, len(sub_params))
    result = finercut_search(
        model,
        adapter,
        ctx.calibration,
        params,
        done,
        batch_size=ctx.batch_size,
        every_score=ctx.budget is None,
    )
    chosen = result.order if ctx.budget is not None else []
    removed_params = sum(sub_params[u] for u in chosen)
    attn_removed = sum(1 for u in chosen if u.kind == "attn")
    first, first_bounds = result.step_scores[0], result.step_bounds[0]
    step_of = {u: i for i, u in enumerate(chosen)}
    scores = [
        {
            "unit": u,
            **_score_record(u, first, first_bounds),
            "params": sub_params[u],
            "removed_at_step": step_of.get(u),
        }
        for u in sorted(sub_params, key=_unit_key)
    ]
    trace = []
    cumulative = 0
    for step, unit in enumerate(chosen):
        cumulative += sub_params[unit]
        step_scores = result.step_scores[step] if params.search == "greedy" else {}
        step_bounds = result.step_bounds[step] if params.search == "greedy" else {}
        trace.append(
            {
                "step": step,
                "removed": unit.to_dict(),
                "name": unit.name,
                "divergence": result.step_divergence[step],
                "params_removed": cumulative,
                "params_fraction": cumulative / total,
                "candidates": [
                    {"unit": u.name, **_score_record(u, step_scores, step_bounds)}
                    for u in sorted([*step_scores, *step_bounds], key=_unit_key)
                ],
            }
        )
    budget = {
        "requested": ctx.budget.to_dict() if ctx.budget else None,
        "reached": {
            "units_removed": len(chosen),
            "units_total": len(sub_params),
            "sublayers_removed": len(chosen),
            "sublayers_total": len(sub_params),
            "sublayers_fraction": len(chosen) / len(sub_params),
            "attn_removed": attn_removed,
            "mlp_removed": len(chosen) - attn_removed,
            "params_removed": removed_params,
            "params_total": total,
            "params_fraction": removed_params / total,
            "kv_cache_fraction": attn_removed / len(blocks),
        },
    }
    method_params = asdict(params)
    return Plan(
        method="finercut",
        unit_kind="sublayer",
        removed=sorted(chosen, key=_unit_key),
        scores=scores,
        score_meaning=(
            f"{params.divergence}: mean over calibration tokens of {DIVERGENCE_MEANING[params.divergence]} "
            "between the dense (p) and pruned (q) next-token distributions; `score` is the one-shot score "
            "against the dense model, the trace holds every candidate's score at every greedy step; "
            "lowest is removed first"
            + (
                "; a null `score` with a `lower_bound` is a candidate the search stopped scoring early, "
                "after `abandoned_after_tokens` tokens, once its running sum showed it could not be the "
                "lowest: its score is at least `lower_bound`"
                if result.stats["bound"] == "on"
                else ""
            )
        ),
        params=method_params,
        budget=budget,
        trace=trace,
        calibration=ctx.calibration.info,
        seed=ctx.seed,
        search_cost=result.stats,
    )


def _score_record(
    unit: Unit, scores: dict[Unit, float], bounds: dict[Unit, tuple[float, int]]
) -> dict[str, Any]:
    """A candidate's `score`, or for one the bound dropped, a null score, the lower bound and the
    tokens it was scored on."""
    if unit in bounds:
        bound, tokens = bounds[unit]
        return {"score": None, "lower_bound": bound, "abandoned_after_tokens": tokens}
    return {"score": scores.get(unit)}


def iter_trace(plan: Plan) -> Iterator[tuple[int, str, float]]:
    """(step, removed sublayer, divergence) for each greedy step: the data of the card's plot."""
    for entry in plan.trace:
        yield entry["step"], entry["name"], entry["divergence"]


SPEC = register_method(
    MethodSpec(
        name="finercut",
        title="FinerCut: attention and MLP sublayer pruning",
        reference_url="https://arxiv.org/abs/2405.18218",
        params_cls=FinerCutParams,
        plan_fn=plan_finercut,
        needs_calibration=True,
        unit_kind="sublayer",
        citation="@article{zhang2024finercut, title={FinerCut: Finer-grained Interpretable Layer Pruning for "
        "Large Language Models}, author={Zhang, Yang and Li, Yawei and Wang, Xinpeng and Shen, Qianli and "
        "Plank, Barbara and Bischl, Bernd and Rezaei, Mina and Kawaguchi, Kenji}, "
        "journal={arXiv preprint arXiv:2405.18218}, year={2024}}",
    )
)
