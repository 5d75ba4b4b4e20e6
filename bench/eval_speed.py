"""Measured prefill and decode tokens/s of models as exported, side by side, on this machine.

Speed is a benchmark, not a test: it depends on the device and on whatever else runs on it.
Each model is loaded the way `hubprune eval` loads it, then `hubprune.speed.measure_speed` runs
`--warmup` discarded runs and `--repeats` timed ones and reports the median (every sample is
printed too, so the spread is visible). With a run folder, its base model (hubprune.json
`source.spec`) is measured first, so the two numbers come from the same session.

    python bench/eval_speed.py out/smollm2-bi6                  # base vs pruned
    python bench/eval_speed.py offline:smollm2-135m-instruct out/smollm2-bi6 --repeats 9
    python bench/eval_speed.py out/smollm2-bi6 --prompt-tokens 512 --new-tokens 64 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubprune.plan import MANIFEST_NAME, Manifest  # noqa: E402
from hubprune.source import load_model, resolve_source  # noqa: E402
from hubprune.speed import measure_speed  # noqa: E402


def _specs(targets: list[str]) -> list[tuple[str, str]]:
    """(label, spec) pairs; a run folder brings its base model along, once."""
    out: list[tuple[str, str]] = []
    for target in targets:
        path = Path(target)
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            base = Manifest.load(path).source.get("spec")
            if base and all(spec != base for _, spec in out):
                out.append(("base", base))
            out.append((path.name, str(path)))
        else:
            out.append((target, target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="run folders or model sources")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object per model")
    args = parser.parse_args()

    results = []
    for label, spec in _specs(args.models):
        model, _ = load_model(resolve_source(spec), dtype=args.dtype, device=args.device)
        result = measure_speed(
            model,
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
            batch_size=args.batch_size,
            warmup=args.warmup,
            repeats=args.repeats,
        )
        result.update(label=label, spec=spec, num_blocks=int(model.config.num_hidden_layers))
        results.append(result)
        del model
        gc.collect()
        if args.json:
            print(json.dumps(result, sort_keys=True))

    if args.json:
        return
    first = results[0]
    print(
        f"device: {first['device_name']} ({first['device']}), {first['dtype']}, batch {first['batch_size']}, "
        f"prompt {first['prompt_tokens']} tokens, {first['new_tokens']} decode steps, "
        f"median of {first['repeats']} after {first['warmup']} warm-up"
    )
    print(f"{'model':<32} {'blocks':>6} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode vs first':>16}")
    for r in results:
        ratio = r["decode_tokens_per_s"] / first["decode_tokens_per_s"]
        print(
            f"{r['label']:<32} {r['num_blocks']:>6} {r['prefill_tokens_per_s']:>14.1f} "
            f"{r['decode_tokens_per_s']:>13.1f} {ratio:>15.2f}x"
        )
        samples = ", ".join(f"{s:.0f}" for s in r["decode_samples"])
        print(f"{'':<32} decode samples: {samples}")


if __name__ == "__main__":
    main()
