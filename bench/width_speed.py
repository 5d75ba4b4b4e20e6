"""Does a width-pruned compact export run faster in proportion to the FLOPs it saves?

Prunes SmolLM2-135M-Instruct (the offline default) with ``wanda-sp`` to about 25% fewer FLOPs
per token (``--budget-by flops``), writes the compact export, then measures prefill and decode
tokens/s of the dense model and the compact export, alternating them round by round (each
measurement in a fresh process, so neither model inherits the other's allocator state) so both
see the same machine load, and reports the medians. FLOPs per token come
from ``hubprune.cost.model_cost`` on the two loaded models (at the prompt length used).

Target (issue: width pruning): measured speedup >= 0.8 x the FLOPs ratio, for prefill and decode.

``--method slicegpt`` (or ``dynamic-slicing``) slices the residual stream instead: ``--amount`` is
then the share of the hidden width to slice (25% by default), and the target is to run faster than
dense at all (SliceGPT's own sliced models generate slower than dense, its issue #115); the ratio
of the speedup to the FLOPs saving is reported the same way.

    python bench/width_speed.py                       # defaults: 256-token prompt, 32 new tokens
    python bench/width_speed.py --amount 0.25 --rounds 7 --threads 2
    python bench/width_speed.py --method slicegpt     # 25% of the hidden width sliced
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hubprune.arch import adapter_for  # noqa: E402
from hubprune.cost import model_cost  # noqa: E402
from hubprune.methods import Budget  # noqa: E402
from hubprune.pipeline import CalibrationOptions, SourceOptions, prune  # noqa: E402
from hubprune.source import load_model, resolve_source  # noqa: E402
from hubprune.speed import device_name, measure_speed  # noqa: E402

SOURCE = "offline:smollm2-135m-instruct"
SLICING = ("slicegpt", "dynamic-slicing")


def measure_in_child(spec: str, args: argparse.Namespace) -> dict[str, float]:
    """Load `spec` in a fresh Python process and measure it there: two models in one process
    share an allocator, and the second one loaded was measured paying about 3x as much for
    the KV cache's concatenations (torch.profiler, 16 decode steps), whichever model it was."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", spec]
    command += ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
    command += ["--threads", str(args.threads)] if args.threads else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(spec: str, args: argparse.Namespace) -> None:
    model, _ = load_model(resolve_source(spec), dtype="float32", device="cpu")
    model.eval()
    result = measure_speed(
        model, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, warmup=1, repeats=1
    )
    cost = model_cost(model, adapter=adapter_for(model), context=args.prompt_tokens)
    keys = ("prefill_tokens_per_s", "decode_tokens_per_s")
    print(json.dumps({**{k: result[k] for k in keys}, "flops_per_token": cost["flops_per_token"]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="wanda-sp", choices=["wanda-sp", *SLICING])
    parser.add_argument(
        "--amount",
        type=float,
        default=0.25,
        help="wanda-sp: share of FLOPs per token to remove; slicing: share of the hidden width to slice",
    )
    parser.add_argument("--base", type=float, default=0.1, help="dynamic-slicing: SB, the base slice")
    parser.add_argument(
        "--slice-head", action="store_true", help="slicing: lm_head reads the sliced width too"
    )
    parser.add_argument("--scope", default="global", choices=["global", "uniform"])
    parser.add_argument("--multiple-of", type=int, default=64, help="MLP widths rounded to this multiple")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating dense/compact rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{args.method}-compact"
        slicing = args.method in SLICING
        manifest = prune(
            SourceOptions(SOURCE, dtype="float32"),
            args.method,
            Budget(args.amount) if slicing else Budget(args.amount, "flops"),
            out,
            calibration=CalibrationOptions(dataset="offline:lee-background", samples=8, seq_len=128),
            method_params=(
                {
                    "slice_head": args.slice_head,
                    **({"base": args.base} if args.method == "dynamic-slicing" else {}),
                }
                if slicing
                else {"scope": args.scope, "multiple_of": args.multiple_of}
            ),
            export_format="compact",
        )
        print(f"export: {manifest.export['schema']}")
        specs = {"dense": SOURCE, "compact": str(out)}
        flops: dict[str, float] = {}
        samples: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in specs}
        for _ in range(args.rounds):
            for label, spec in specs.items():
                result = measure_in_child(spec, args)
                flops[label] = result["flops_per_token"]
                samples[label]["prefill"].append(result["prefill_tokens_per_s"])
                samples[label]["decode"].append(result["decode_tokens_per_s"])

    flops_ratio = flops["dense"] / flops["compact"]
    print(f"device: {device_name('cpu')}")
    print(f"FLOPs per token at {args.prompt_tokens} tokens: dense {flops['dense']:.4g}, compact "
          f"{flops['compact']:.4g} (ratio {flops_ratio:.3f}, {1 - 1 / flops_ratio:.1%} fewer)")  # fmt: skip
    ok = True
    for phase in ("prefill", "decode"):
        dense = statistics.median(samples["dense"][phase])
        compact = statistics.median(samples["compact"][phase])
        speedup = compact / dense
        share = speedup / flops_ratio
        ok &= speedup > 1 if slicing else share >= 0.8
        target = "target: speedup > 1" if slicing else "target >= 0.8"
        print(
            f"{phase}: dense {dense:.1f} tok/s, compact {compact:.1f} tok/s, speedup {speedup:.3f} "
            f"= {share:.2f} x the FLOPs ratio ({target}) "
            f"[samples dense {[round(x, 1) for x in samples['dense'][phase]]}, "
            f"compact {[round(x, 1) for x in samples['compact'][phase]]}]"
        )
    print("target met" if ok else "target NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
