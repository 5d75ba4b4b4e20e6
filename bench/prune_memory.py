"""Peak memory of `hubprune prune` divided by the peak memory of merely loading the same model.

Target: <= 1.3, i.e. pruning never holds a second full copy of the weights. Each measurement
runs in a fresh Python process and reports its own peak resident set size (ru_maxrss), so the
two figures are taken the same way in the same run. "Loading" includes one 8-token forward pass:
safetensors weights are memory-mapped and only become resident when read, so a bare
`from_pretrained` would count almost none of them.

    python bench/prune_memory.py                       # SmolLM2-135M offline, block influence, 6 blocks
    python bench/prune_memory.py --source owner/name --method angular --amount 0.25
    python bench/prune_memory.py --method policy-gradient --amount 0.2 --budget-by params \
        --method-arg granularity=heads,channels --method-arg steps=3 --samples 4
    python bench/prune_memory.py --method slicegpt --amount 0.25 --format compact [--no-stream]

A method that keeps no weight copy but evaluates several masks per forward (policy gradient)
is held to <= 1.5 instead: its activations and logits scale with K x batch rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def child(mode: str, args: argparse.Namespace) -> None:
    from hubprune.pipeline import SourceOptions, load

    if mode == "load":
        import torch

        loaded = load(SourceOptions(args.source))
        with torch.no_grad():
            loaded.model(torch.arange(8).unsqueeze(0))
    else:
        from hubprune.cli import main

        with tempfile.TemporaryDirectory() as tmp:
            argv = [
                "prune",
                args.source,
                "--method",
                args.method,
                "--amount",
                args.amount,
                "--out",
                f"{tmp}/out",
            ]
            if args.budget_by:
                argv += ["--budget-by", args.budget_by]
            if args.format:
                argv += ["--format", args.format]
            if args.stream is not None:
                argv += ["--stream" if args.stream else "--no-stream"]
            for item in args.method_arg:
                argv += ["--method-arg", item]
            argv += [
                "--calibration",
                args.calibration,
                "--samples",
                str(args.samples),
                "--seq-len",
                str(args.seq_len),
            ]
            if main(argv) != 0:
                raise SystemExit("prune failed")
    print(
        json.dumps({"mode": mode, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    )


def measure(mode: str, argv: list[str]) -> float:
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", mode, *argv],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])["max_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="offline:smollm2-135m-instruct")
    parser.add_argument("--method", default="block-influence")
    parser.add_argument("--amount", default="6")
    parser.add_argument("--budget-by", default=None, help="passed to prune (default: prune's own)")
    parser.add_argument(
        "--method-arg", action="append", default=[], metavar="KEY=VALUE", help="passed to prune; repeatable"
    )
    parser.add_argument("--format", default=None, help="passed to prune (slicing needs compact)")
    parser.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="passed to prune: score one block at a time, or not (default: prune's own choice)",
    )
    parser.add_argument("--calibration", default="offline:lee-background")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--child", choices=["load", "prune"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    forwarded = sys.argv[1:]
    measure("load", forwarded)  # warm the conversion cache so neither run pays for it
    load_mib = measure("load", forwarded)
    prune_mib = measure("prune", forwarded)
    budget = f" by {args.budget_by}" if args.budget_by else ""
    extra = f"  method args: {' '.join(args.method_arg)}" if args.method_arg else ""
    extra += {True: "  --stream", False: "  --no-stream", None: ""}[args.stream]
    print(
        f"source: {args.source}  method: {args.method}  amount: {args.amount}{budget}  "
        f"calibration: {args.samples}x{args.seq_len}{extra}"
    )
    print(f"peak RSS, load only : {load_mib:8.1f} MiB")
    print(f"peak RSS, prune     : {prune_mib:8.1f} MiB")
    target = 1.5 if args.method == "policy-gradient" else 1.3
    print(f"ratio prune / load  : {prune_mib / load_mib:8.2f}  (target <= {target})")


if __name__ == "__main__":
    main()
