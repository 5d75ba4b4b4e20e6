"""FinerCut search cost on the real SmolLM2-135M-Instruct: official, full and bounded; and a quality check.

Search mode (default) runs the searches named by `--runs` in one process on the same calibration
tokens and prints the removal orders (they must be identical), the wall time and the forward
FLOPs of each, and the ratios:

* `naive`: the official code's algorithm (every candidate a full pass from the embeddings,
  removed sublayers masked); hours at 16 x 128 on a 2-core CPU, so not run by default: its FLOPs
  are then computed from the measured per-sublayer costs (every candidate of every step, a full
  pass over every sequence: exactly what the naive engine tallies when it runs);
* `full`: the cached engine with the bound off (every candidate scored on every token);
* `bounded`: the cached engine with early abandoning (the default).

    python bench/finercut_search.py --samples 16 --seq-len 128 --amount 0.25 --threads 1

prints official / bounded and full / bounded (FLOPs and wall time; wall time against the
official search only when `naive` ran).

Quality mode compares FinerCut with a parameter budget of `--blocks` blocks' worth against
block influence removing that many whole blocks, same calibration text, perplexity on different
text (`--eval-text`, default offline:xsum):

    python bench/finercut_search.py --quality --blocks 4 --samples 8 --seq-len 128

FLOPs are forward FLOPs tallied by the engine from per-sublayer costs measured with
torch.utils.flop_counter.FlopCounterMode (matmuls and attention; norms and softmax are not
counted). Wall times on a shared machine are noisy; FLOPs are exact.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubprune import data as data_mod  # noqa: E402
from hubprune import offline  # noqa: E402
from hubprune.arch import adapter_for  # noqa: E402
from hubprune.card import naive_search_flops  # noqa: E402
from hubprune.evaluation.perplexity import perplexity  # noqa: E402
from hubprune.methods import Budget, MethodContext, get_method  # noqa: E402
from hubprune.methods.finercut import FinerCutParams, finercut_search, plan_finercut  # noqa: E402
from hubprune.plan import Unit  # noqa: E402
from hubprune.size import block_params, unique_params  # noqa: E402
from hubprune.surgery import apply_plan  # noqa: E402


def load_model() -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = offline.model_folder("offline:smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def calibration(
    tokenizer: object, spec: str, samples: int, seq_len: int, seed: int
) -> data_mod.CalibrationBatch:
    texts = data_mod.load_texts(spec)
    return data_mod.build_calibration(tokenizer, texts, samples=samples, seq_len=seq_len, seed=seed)


RUNS = {  # name -> (engine, bound)
    "naive": ("naive", "off"),
    "full": ("cached", "off"),
    "bounded": ("cached", "on"),
}


def search_mode(args: argparse.Namespace) -> dict:
    model, tokenizer = load_model()
    adapter = adapter_for(model)
    batch = calibration(tokenizer, args.calibration, args.samples, args.seq_len, args.seed)
    count = Budget.parse(args.amount).unit_count(2 * adapter.num_blocks(model), "sublayers")
    results = {}
    for name in args.runs:
        engine, bound = RUNS[name]
        params = FinerCutParams(
            divergence=args.divergence,
            engine=engine,
            reuse_budget_mb=args.reuse_budget_mb,
            bound=bound,
            bound_rows=args.bound_rows,
            bound_vocab=args.bound_vocab,
        )
        torch.manual_seed(0)
        res = finercut_search(
            model,
            adapter,
            batch,
            params,
            lambda removed: len(removed) >= count,
            batch_size=args.batch_size,
            keep_token_values=name == "full",  # for the ceilings below
        )
        results[name] = res
        print(
            f"{name:>7}: {res.stats['wall_s']:8.1f} s  {res.stats['forward_flops'] / 1e12:8.3f} TFLOP  "
            f"order: {' '.join(u.name.replace(' ', '') for u in res.order)}",
            flush=True,
        )
    first = next(iter(results.values()))
    # The official search's FLOPs: every candidate a full masked pass over every sequence (what the
    # naive engine tallies; computed from the measured per-sublayer costs when it did not run).
    official = naive_search_flops(
        first.stats["flops_per_row"], first.stats["candidate_evaluations"], args.samples
    )
    out: dict = {
        "model": "SmolLM2-135M-Instruct (offline GGUF, fp32)",
        "calibration": f"{args.calibration} {args.samples}x{args.seq_len} seed {args.seed}",
        "sublayers_removed": count,
        "divergence": args.divergence,
        "torch_threads": torch.get_num_threads(),
        "official_flops_computed": official,
        "runs": {
            k: {
                kk: v.stats[kk]
                for kk in (
                    "wall_s",
                    "forward_flops",
                    "forward_flops_if_skipping",
                    "full_forward_calls",
                    "block_evaluations",
                    "candidate_evaluations",
                    "abandoned",
                )
            }
            for k, v in results.items()
        },
        "orders": {k: [u.name for u in v.order] for k, v in results.items()},
    }
    out["same_order"] = len({tuple(v.order) for v in results.values()}) == 1
    print(f"same order in every run: {out['same_order']}")
    if "naive" in results:
        measured = results["naive"].stats["forward_flops"]
        print(f"official FLOPs: measured {measured:.4g}, computed {official:.4g}")
        official = measured
    if "bounded" in results:
        bounded = results["bounded"].stats
        out["flops_ratio_official_over_bounded"] = official / bounded["forward_flops"]
        out["abandoned"] = (
            f"{bounded['abandoned']} of {bounded['candidate_evaluations']} candidate evaluations"
        )
        print(f"abandoned early: {out['abandoned']}")
        print(f"forward-FLOPs ratio official / bounded: {out['flops_ratio_official_over_bounded']:.2f}")
    if "full" in results:
        out["flops_ratio_official_over_full"] = official / results["full"].stats["forward_flops"]
        print(f"forward-FLOPs ratio official / full (cached): {out['flops_ratio_official_over_full']:.2f}")
    for slow, fast in (("full", "bounded"), ("naive", "bounded"), ("naive", "full")):
        if {slow, fast} <= results.keys():
            a, b = results[slow], results[fast]
            if slow != "naive":
                out[f"flops_ratio_{slow}_over_{fast}"] = a.stats["forward_flops"] / b.stats["forward_flops"]
                print(f"forward-FLOPs ratio {slow} / {fast}: {out[f'flops_ratio_{slow}_over_{fast}']:.2f}")
            out[f"wall_ratio_{slow}_over_{fast}"] = a.stats["wall_s"] / b.stats["wall_s"]
            print(f"wall-time ratio {slow} / {fast}: {out[f'wall_ratio_{slow}_over_{fast}']:.2f}")
            out[f"max_score_diff_{slow}_{fast}"] = max(
                abs(a.step_scores[i][u] - b.step_scores[i][u])
                for i in range(min(len(a.step_scores), len(b.step_scores)))
                for u in a.step_scores[i].keys() & b.step_scores[i].keys()
            )
    if "naive" in results:
        # Removed sublayers are masked (computed, output zeroed) in the official algorithm; its stats
        # also hold what the same passes cost if they were skipped instead: a stronger baseline.
        best = "bounded" if "bounded" in results else "full"
        if best in results:
            skipping = results["naive"].stats["forward_flops_if_skipping"]
            out[f"flops_ratio_skipping_naive_over_{best}"] = skipping / results[best].stats["forward_flops"]
            print(
                f"forward-FLOPs ratio if the naive search skipped removed sublayers, over {best}: "
                f"{out[f'flops_ratio_skipping_naive_over_{best}']:.2f}"
            )
    if "bounded" in results:
        out["share_of_candidate_tokens_scored"] = scored_share(results["bounded"])
        print(
            f"share of candidate x token pairs the bounded search scored: {out['share_of_candidate_tokens_scored']:.3f}"
        )
    if "full" in results:
        out["ceiling_share"] = ceiling_share(results["full"])
        print(
            "share an ideal bound would score (best value known first, token by token, every "
            f"candidate's divergence spread evenly): {out['ceiling_share']:.3f}"
        )
        ideal = ideal_bound_flops(results["full"], args.samples // args.bound_rows)
        out["flops_ratio_official_over_ideal_bound"] = official / ideal
        out["flops_ratio_official_over_head_only"] = official / head_only_flops(results["full"])
        print(
            "forward-FLOPs ratio official / an ideal bound on this engine (the best candidate known "
            "first, every other one scored on whole sequences until its running sum passes the best, "
            f"its divergence spread evenly over them): {out['flops_ratio_official_over_ideal_bound']:.2f}"
        )
        print(
            "forward-FLOPs ratio official / every candidate paying only the output layer on every "
            f"token: {out['flops_ratio_official_over_head_only']:.2f}"
        )
        full = results["full"]
        ceilings = {
            "own_sequence_order": (
                oracle_order_flops(full, args.samples),
                "every candidate's sequences in the order of its own (foreknown) per-sequence "
                "divergences, largest first",
            ),
            "causal_prefixes": (
                causal_prefix_ceiling_flops(full, args.samples),
                "any prefixes of any sequences, chosen with every per-token divergence foreknown, "
                "fractional (a relaxation: nothing that scores running sums can do better)",
            ),
            "output_layer_free_for_losers": (
                head_free_flops(full, args.samples // args.bound_rows),
                "as the ideal bound, but a candidate that loses never pays the output layer",
            ),
        }
        for key, (flops, what) in ceilings.items():
            out[f"flops_ratio_official_over_oracle_{key}"] = official / flops
            print(f"forward-FLOPs ratio official / an oracle bound, {what}: {official / flops:.2f}")
    per_row = first.stats["flops_per_row"]
    dense_row = sum(per_row["attn"]) + sum(per_row["mlp"]) + per_row["head"]
    out["head_share_of_dense_forward"] = per_row["head"] / dense_row
    return out


def scored_share(result: object) -> float:
    """The share of (candidate, calibration token) pairs a bounded search scored."""
    tokens = result.stats["calibration_tokens"]
    scored = sum(
        len(exact) * tokens + sum(t for _, t in dropped.values())
        for exact, dropped in zip(result.step_scores, result.step_bounds, strict=True)
    )
    return scored / (result.stats["candidate_evaluations"] * tokens)


def ceiling_share(full: object) -> float:
    """From a full search's exact scores: the share of (candidate, token) pairs that even an ideal
    running-sum bound must score: a candidate scoring s against the step's best D* can only be
    ruled out once it has seen a share D*/s of the tokens (if its divergence is spread evenly)."""
    pairs = [
        min(1.0, min(scores.values()) / value) if value > 0 else 1.0
        for scores in full.step_scores
        for value in scores.values()
    ]
    return sum(pairs) / len(pairs)


def _resume_cost(per_row: dict, unit: Unit, removed: list[Unit]) -> float:
    """Forward FLOPs per sequence of scoring `unit` on top of `removed` in the cached engine: from
    its own block, or from the block of the last removal when it lies before it (the states its
    own model had there are kept from the step before), to the output layer."""
    last = removed[-1].block if removed else 0
    start = max(unit.block, last) if unit.block < last else unit.block
    gone = {*removed, unit}
    cost = per_row["head"]
    for b in range(start, len(per_row["attn"])):
        cost += sum(per_row[kind][b] for kind in ("attn", "mlp") if Unit(kind, b) not in gone)
    return cost


def ideal_bound_flops(full: object, chunks: int) -> float:
    """From a full search's exact scores, the forward FLOPs of an ideal early-abandoning search on
    the same engine: at every step the best candidate is scored first and in full; every other
    one, its divergence spread evenly over the `chunks` calibration chunks, gets chunks until its
    running sum passes the best full score (at least one)."""
    per_row = full.stats["flops_per_row"]
    rows = full.stats["calibration_rows"]
    total = 0.0
    for step, scores in enumerate(full.step_scores):
        removed = full.order[:step]
        best = min(scores.values())
        for unit, value in scores.items():
            if unit == full.order[step] or value <= 0:
                share = 1.0
            else:
                share = min(chunks, math.floor(chunks * best / value) + 1) / chunks
            total += share * rows * _resume_cost(per_row, unit, removed)
    return total


def _candidate_values(full: object, rows: int) -> Iterator[tuple[torch.Tensor, float, bool, float]]:
    """For every candidate of every step of a full search: its per-token divergences (one row per
    calibration sequence), the step's best total D*, whether it is the step's winner, and its
    forward FLOPs per sequence on this engine."""
    per_row = full.stats["flops_per_row"]
    for step, values in enumerate(full.step_token_values):
        winner = full.order[step]
        best = float(values[winner].sum())
        for unit, v in values.items():
            yield v.view(rows, -1), best, unit == winner, _resume_cost(per_row, unit, full.order[:step])


def oracle_order_flops(full: object, rows: int) -> float:
    """Forward FLOPs of a bounded search that knew the best score D* and scored every other
    candidate's sequences in the order of its own per-sequence divergences (largest first), one
    sequence at a time, until its running sum passes D*: the most any sequence order could save."""
    total = 0.0
    for v, best, won, cost in _candidate_values(full, rows):
        count = rows
        if not won:
            running = torch.cumsum(v.sum(1).sort(descending=True).values, 0)
            past = torch.nonzero(running > best)
            count = int(past[0]) + 1 if len(past) else rows
        total += count * cost
    return total


def _concave_steps(values: torch.Tensor) -> list[tuple[int, float]]:
    """(tokens, divergence) of the segments of the upper concave hull of a sequence's cumulative
    per-token divergence: the best divergence any prefix of each length can reach, linearised."""
    points = [(0, 0.0)] + [(i + 1, float(c)) for i, c in enumerate(torch.cumsum(values, 0))]
    hull: list[tuple[int, float]] = []
    for x, y in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (x - x1) <= (y - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append((x, y))
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(hull, hull[1:], strict=False)]


def causal_prefix_ceiling_flops(full: object, rows: int) -> float:
    """A lower bound on the forward FLOPs of any exact running-sum bound: knowing D* and every
    per-token divergence, each losing candidate scores the cheapest set of sequence prefixes (a
    model is causal: a token costs its whole prefix) whose divergences sum past D*, taken
    fractionally (the linear relaxation of that choice, which can only cost less)."""
    total = 0.0
    for v, best, won, cost in _candidate_values(full, rows):
        if won:
            total += rows * cost
            continue
        steps = sorted((s for row in v for s in _concave_steps(row)), key=lambda s: -s[1] / s[0])
        need, tokens = best, 0.0
        for length, gain in steps:
            if gain >= need:
                tokens += length * need / gain
                break
            need -= gain
            tokens += length
        total += tokens * cost / v.shape[1]
    return total


def head_free_flops(full: object, chunks: int) -> float:
    """`ideal_bound_flops`, with the output layer paid by the winner only: what a bound that
    could rule candidates out without their logits would cost at most."""
    per_row = full.stats["flops_per_row"]
    rows = full.stats["calibration_rows"]
    total = 0.0
    for step, scores in enumerate(full.step_scores):
        best = min(scores.values())
        for unit, value in scores.items():
            cost = _resume_cost(per_row, unit, full.order[:step])
            if unit == full.order[step] or value <= 0:
                total += rows * cost
            else:
                share = min(chunks, math.floor(chunks * best / value) + 1) / chunks
                total += share * rows * (cost - per_row["head"])
    return total


def head_only_flops(full: object) -> float:
    """The forward FLOPs if every candidate of every step cost only the output layer on every
    calibration token: what scoring every candidate on every token costs even with every block
    for free."""
    per_row = full.stats["flops_per_row"]
    rows = full.stats["calibration_rows"]
    return sum(rows * per_row["head"] for scores in full.step_scores for _ in scores)


def quality_mode(args: argparse.Namespace) -> dict:
    model, tokenizer = load_model()
    adapter = adapter_for(model)
    batch = calibration(tokenizer, args.calibration, args.samples, args.seq_len, args.seed)
    eval_batch = calibration(tokenizer, args.eval_text, args.eval_samples, args.eval_seq_len, args.seed + 1)
    eval_batches = eval_batch.batches(args.batch_size)
    total = unique_params([model])
    per_block = block_params(model, adapter)
    fraction = args.blocks * (sum(per_block) / len(per_block)) / total
    out: dict = {
        "calibration": f"{args.calibration} {args.samples}x{args.seq_len}",
        "evaluation": f"{args.eval_text} {args.eval_samples}x{args.eval_seq_len}",
        "param_fraction_target": fraction,
    }
    start = time.perf_counter()
    out["dense_ppl"] = perplexity(model, eval_batches)
    print(f"dense perplexity: {out['dense_ppl']:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)

    ctx = MethodContext(model, adapter, Budget(args.blocks), batch, batch_size=args.batch_size)
    bi_plan = get_method("block-influence").plan_fn(ctx, get_method("block-influence").make_params())
    with torch.no_grad():
        pruned, _ = load_model()
        apply_plan(pruned, adapter, bi_plan)
    out["block_influence"] = {
        "removed": [u.name for u in bi_plan.removed],
        "params_fraction": bi_plan.budget["reached"]["params_fraction"],
        "ppl": perplexity(pruned, eval_batches),
    }
    print(f"block influence: {out['block_influence']}", flush=True)
    del pruned

    start = time.perf_counter()
    ctx = MethodContext(model, adapter, Budget(fraction, "params"), batch, batch_size=args.batch_size)
    fc_plan = plan_finercut(ctx, FinerCutParams(divergence=args.divergence))
    reached = fc_plan.budget["reached"]
    pruned, _ = load_model()
    apply_plan(pruned, adapter, fc_plan)
    out["finercut"] = {
        "removed_in_order": [t["name"] for t in fc_plan.trace],
        "params_fraction": reached["params_fraction"],
        "sublayers_removed": reached["sublayers_removed"],
        "attn_removed": reached["attn_removed"],
        "mlp_removed": reached["mlp_removed"],
        "search_s": time.perf_counter() - start,
        "ppl": perplexity(pruned, eval_batches),
    }
    print(f"finercut: {out['finercut']}", flush=True)
    assert all(isinstance(u, Unit) for u in fc_plan.removed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quality", action="store_true", help="run the quality comparison instead")
    parser.add_argument("--calibration", default="offline:lee-background")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amount", default="0.25", help="sublayers to remove (count or fraction)")
    parser.add_argument("--divergence", default="js-official")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reuse-budget-mb", type=int, default=1024)
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=list(RUNS),
        default=["full", "bounded"],
        help="naive: the official algorithm; full: cached engine, bound off; bounded: cached, bound on",
    )
    parser.add_argument("--bound-rows", type=int, default=1, help="sequences between two checks of the bound")
    parser.add_argument(
        "--bound-vocab",
        type=int,
        default=FinerCutParams.bound_vocab,
        help="top dense tokens per position whose logits rule candidates out (0: full logits)",
    )
    parser.add_argument("--blocks", type=int, default=4, help="quality: blocks' worth of parameters")
    parser.add_argument("--eval-text", default="offline:xsum")
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is far faster on a busy shared machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = quality_mode(args) if args.quality else search_mode(args)
    print(json.dumps(out, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
