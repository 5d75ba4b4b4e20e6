"""Peak memory of `hubprune prune` divided by the peak memory of merely loading the same model.

Target: <= 1.3, i.e. pruning never holds a second full copy of the weights. Each measurement
runs in a fresh Python process and reports its own peak resident set size (ru_maxrss), so the
two figures are taken the same way in the same run. "Loading" includes one 8-token forward pass:
safetensors weights are memory-mapped and only become resident when read, so a bare
`from_pretrained` would count almost none of them.

    python bench/prune_memory.py                       # SmolLM2-135M offline, block influence, 6 blocks
    python bench/prune_memory.py --source owner/name --method angular --amount 0.25
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
    print(
        f"source: {args.source}  method: {args.method}  amount: {args.amount}  calibration: {args.samples}x{args.seq_len}"
    )
    print(f"peak RSS, load only : {load_mib:8.1f} MiB")
    print(f"peak RSS, prune     : {prune_mib:8.1f} MiB")
    print(f"ratio prune / load  : {prune_mib / load_mib:8.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
