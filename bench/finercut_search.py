"""FinerCut search cost, naive vs cached, on the real SmolLM2-135M-Instruct; and a quality check.

Search mode (default) runs both engines in one process on the same calibration tokens and
prints the removal orders (they must be identical), the wall time and the forward FLOPs of each,
and the ratios naive / cached. The naive engine is the official code's algorithm (every
candidate a full pass from the embeddings, removed sublayers masked); the ratio against a naive
search that skips removed sublayers instead is printed too:

    python bench/finercut_search.py --samples 16 --seq-len 128 --amount 0.25

(On a 2-core CPU the naive search at 16 x 128 takes hours; 4 x 64 with one thread took 43 min.)

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
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubprune import data as data_mod  # noqa: E402
from hubprune import offline  # noqa: E402
from hubprune.arch import adapter_for  # noqa: E402
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


def search_mode(args: argparse.Namespace) -> dict:
    model, tokenizer = load_model()
    adapter = adapter_for(model)
    batch = calibration(tokenizer, args.calibration, args.samples, args.seq_len, args.seed)
    count = Budget.parse(args.amount).unit_count(2 * adapter.num_blocks(model), "sublayers")
    results = {}
    for engine in args.engines:
        params = FinerCutParams(
            divergence=args.divergence, engine=engine, reuse_budget_mb=args.reuse_budget_mb
        )
        torch.manual_seed(0)
        res = finercut_search(
            model, adapter, batch, params, lambda removed: len(removed) >= count, batch_size=args.batch_size
        )
        results[engine] = res
        print(
            f"{engine:>6}: {res.stats['wall_s']:8.1f} s  {res.stats['forward_flops'] / 1e12:8.3f} TFLOP  "
            f"order: {' '.join(u.name.replace(' ', '') for u in res.order)}",
            flush=True,
        )
    out = {
        "model": "SmolLM2-135M-Instruct (offline GGUF, fp32)",
        "calibration": f"{args.calibration} {args.samples}x{args.seq_len} seed {args.seed}",
        "sublayers_removed": count,
        "divergence": args.divergence,
        "torch_threads": torch.get_num_threads(),
        "engines": {
            k: {
                kk: v.stats[kk]
                for kk in (
                    "wall_s",
                    "forward_flops",
                    "forward_flops_if_skipping",
                    "full_forward_calls",
                    "block_evaluations",
                )
            }
            for k, v in results.items()
        },
    }
    if {"naive", "cached"} <= results.keys():
        naive, cached = results["naive"], results["cached"]
        same = naive.order == cached.order
        out["same_order"] = same
        out["wall_ratio"] = naive.stats["wall_s"] / cached.stats["wall_s"]
        out["flops_ratio"] = naive.stats["forward_flops"] / cached.stats["forward_flops"]
        out["max_score_diff"] = max(
            abs(naive.step_scores[i][u] - cached.step_scores[i][u])
            for i in range(len(naive.step_scores))
            for u in naive.step_scores[i]
        )
        print(f"same order: {same}; max |score difference|: {out['max_score_diff']:.3g}")
        # The naive engine is the official algorithm: removed sublayers are masked (computed, output
        # zeroed), so every evaluation is a full pass. Its stats also hold what the same passes cost
        # if removed sublayers were skipped instead: a stronger baseline, reported alongside.
        out["flops_ratio_vs_skipping_naive"] = (
            naive.stats["forward_flops_if_skipping"] / cached.stats["forward_flops"]
        )
        per_row = naive.stats["flops_per_row"]
        dense_row = sum(per_row["attn"]) + sum(per_row["mlp"]) + per_row["head"]
        out["head_share_of_dense_forward"] = per_row["head"] / dense_row
        print(f"wall-time ratio naive/cached: {out['wall_ratio']:.2f}")
        print(f"forward-FLOPs ratio naive/cached: {out['flops_ratio']:.2f}")
        print(
            "forward-FLOPs ratio if the naive search skipped removed sublayers instead of masking them: "
            f"{out['flops_ratio_vs_skipping_naive']:.2f}"
        )
    return out


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
    parser.add_argument("--engines", nargs="+", default=["naive", "cached"])
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
