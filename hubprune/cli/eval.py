"""`hubprune eval MODEL_OR_RUN_DIR --tasks ... [--compare-to BASE]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hubprune.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a model before and after pruning",
        description="Evaluate a run folder (against the base model named in its hubprune.json, and the "
        "pruned model a recovered one came from) or any model (against --compare-to): lm-eval tasks, "
        "perplexity on real text, size and cost, and with --speed measured tokens/s. A run folder gets "
        "eval/results.json and a summary in hubprune.json; the table is printed.",
        epilog="example: hubprune eval out/smollm2-bi6 --tasks offline:piqa,offline:boolq,offline:openbookqa "
        "--limit 100 --perplexity-data offline:xsum",
    )
    options.add_source_options(parser)  # SOURCE: a run folder or any model
    group = parser.add_argument_group("tasks")
    group.add_argument(
        "--tasks",
        action="append",
        default=[],
        help="comma-separated lm-eval task names (arc_easy, piqa, ...), names from --tasks-path, or the "
        "offline pack: offline:piqa, offline:boolq, offline:openbookqa, offline:commonsense_qa, "
        "offline:siqa, offline:mmlu, offline:all (none: perplexity, size and speed only)",
    )
    group.add_argument(
        "--tasks-path",
        action="append",
        default=None,
        metavar="PATH",
        help="a task YAML file or folder in lm-eval's format (repeatable); relative data paths in it are "
        "read from the file's folder",
    )
    group.add_argument("--limit", type=float, default=None, help="items per task (default: all)")
    group.add_argument(
        "--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)"
    )
    group.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: 8)")
    group.add_argument("--seed", type=int, default=0, help="seed for lm-eval's samplers (default: 0)")
    group = parser.add_argument_group("comparison")
    group.add_argument(
        "--compare-to",
        default=None,
        metavar="BASE",
        help="the model to compare with (default for a run folder: the source in its hubprune.json)",
    )
    group.add_argument(
        "--no-cache", action="store_true", help="recompute the base model's results even if cached"
    )
    group = parser.add_argument_group("perplexity")
    group.add_argument(
        "--perplexity-data",
        default=None,
        metavar="DATA",
        help="offline:xsum, offline:wikitext2-sentences, offline:lee-background, a local "
        ".txt/.jsonl/.json/.parquet/.csv, or a Hub dataset id (default: offline:xsum when the model is an "
        "offline: one, else wikitext, WikiText-2 raw test split, from the Hub)",
    )
    group.add_argument("--perplexity-config", default=None, help="dataset configuration name")
    group.add_argument("--perplexity-split", default=None, help="dataset split (default: test)")
    group.add_argument("--text-column", default=None, help="column or JSON field with the text")
    group.add_argument("--seq-len", type=int, default=512, help="tokens per perplexity window (default: 512)")
    group.add_argument("--stride", type=int, default=None, help="window stride (default: --seq-len)")
    group.add_argument(
        "--max-tokens", type=int, default=16384, help="tokens of text scored for perplexity (default: 16384)"
    )
    group.add_argument("--no-perplexity", action="store_true", help="skip perplexity")
    group = parser.add_argument_group("speed (a benchmark: slow, machine-dependent)")
    group.add_argument("--speed", action="store_true", help="measure prefill and decode tokens/s")
    group.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (default: 128)")
    group.add_argument("--new-tokens", type=int, default=32, help="decode steps (default: 32)")
    group.add_argument("--repeats", type=int, default=5, help="timed repetitions (default: 5)")
    group = parser.add_argument_group("output")
    group.add_argument(
        "--output",
        default=None,
        help="where to write the JSON report (default for a run folder: eval/results.json)",
    )
    group.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(run=run)


def _limit(value: float | None) -> int | float | None:
    """lm-eval reads a limit below 1 as a fraction of the items; a whole number stays an int."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def run(args: argparse.Namespace) -> None:
    from hubprune.evaluation import evaluate_model_spec, evaluate_run, format_table, write_report
    from hubprune.plan import MANIFEST_NAME

    common = dict(
        tasks=args.tasks,
        tasks_path=args.tasks_path,
        limit=_limit(args.limit),
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        perplexity_data=args.perplexity_data,
        speed=args.speed,
        compare_to=args.compare_to,
        seed=args.seed,
        perplexity=not args.no_perplexity,
        speed_options={
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
        },
        use_cache=not args.no_cache,
        dtype=args.dtype,
        device=args.device,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        perplexity_config=args.perplexity_config,
        perplexity_split=args.perplexity_split,
        text_column=args.text_column,
        perplexity_seq_len=args.seq_len,
        perplexity_stride=args.stride,
        perplexity_max_tokens=args.max_tokens,
    )
    target = Path(args.source).expanduser()
    if target.is_dir() and (target / MANIFEST_NAME).is_file():
        report = evaluate_run(target, **common)
        written = target / "eval" / "results.json"
        if args.output:
            written = write_report(report, args.output)
    else:
        report = evaluate_model_spec(args.source, output=args.output, base_model=args.base_model, **common)
        written = Path(args.output) if args.output else None
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_table(report))
    data = (report.get("perplexity") or {}).get("data", {})
    if data.get("chosen") and not args.json:
        print(f"perplexity text: {data['spec']}, the {data['chosen']}")
    if written is not None and not args.json:
        print(f"wrote {written}")
