"""`hubprune recover RUN_DIR --mode partial|lora --data PATH_OR_DATASET --out DIR`."""

from __future__ import annotations

import argparse
from typing import Any

# flag destination -> RecoverySettings field, for flags whose names differ
_RENAMED = {"epochs_": "epochs"}
_LORA_FLAGS = {
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "target_modules",
}
_NOT_SETTINGS = {"run_dir", "out", "overwrite", "restart", "run", "verb", "save_adapter"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "recover",
        help="heal a pruned model with LoRA or partial fine-tuning",
        description="Fine-tune the pruned model in RUN_DIR and write a new run folder (RUN_DIR is never "
        "modified). partial trains lm_head, the final norm and the last --last-k blocks; lora trains a LoRA "
        "adapter and merges it into the weights. Re-running the same command resumes from the last "
        "checkpoint. Under `accelerate launch` the same command trains on many GPUs or machines.",
        epilog="example: hubprune recover out/smollm2-r6 --mode partial --data offline:lee-background "
        "--max-steps 40 --lr 1e-4 --out out/smollm2-r6-partial",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `hubprune prune`")
    parser.add_argument("--mode", required=True, choices=["partial", "lora"])
    parser.add_argument("--out", required=True, help="the new run folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument(
        "--restart", action="store_true", help="discard checkpoints of an earlier attempt instead of resuming"
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        required=True,
        metavar="PATH_OR_DATASET",
        help="Hub dataset id (e.g. yahma/alpaca-cleaned), local .txt/.jsonl/.json/.parquet, or offline:NAME",
    )
    data.add_argument("--data-config", default=None, help="dataset configuration name")
    data.add_argument("--data-revision", default=None, help="dataset revision (branch, tag or commit)")
    data.add_argument("--split", default=None, help="training split (default: train)")
    data.add_argument("--eval-split", default=None, help="held-out split (default: hold out --eval-fraction)")
    data.add_argument("--eval-fraction", type=float, default=None, help="share held out (default: 0.05)")
    data.add_argument(
        "--format",
        default=None,
        choices=["auto", "text", "instruction", "chat"],
        help="auto: a messages column -> chat, instruction+output -> instruction (chat template), else text",
    )
    data.add_argument("--text-column", default=None, help="plain-text column (default: text)")
    data.add_argument("--seq-len", type=int, default=None, help="tokens per example (default: 256)")
    train = parser.add_argument_group("training")
    steps = train.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    steps.add_argument(
        "--epochs", dest="epochs_", type=float, default=None, help="passes over the data (default: 1)"
    )
    train.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: 1e-5 partial, 1e-4 lora)"
    )
    train.add_argument(
        "--batch-size", type=int, default=None, help="examples per device per step (default: 8)"
    )
    train.add_argument(
        "--grad-accum", type=int, default=None, help="gradient accumulation steps (default: 1)"
    )
    train.add_argument("--last-k", type=int, default=None, help="partial: final blocks to train (default: 3)")
    train.add_argument(
        "--tied-embeddings",
        default=None,
        choices=["freeze", "untie", "train"],
        help="when lm_head is tied to the input embeddings: freeze it (default), untie it, or train both",
    )
    train.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: 8)")
    train.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: 16)")
    train.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout (default: 0.05)")
    train.add_argument(
        "--target-modules",
        default=None,
        help="comma-separated LoRA targets (default: the family's projections)",
    )
    train.add_argument(
        "--save-adapter", action="store_true", help="also keep the LoRA adapter in <out>/adapter"
    )
    train.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"])
    train.add_argument("--gradient-checkpointing", action="store_true", default=None)
    train.add_argument("--save-steps", type=int, default=None, help="checkpoint every N steps (default: 50)")
    train.add_argument("--checkpoint-dir", default=None, help="default: <out>.checkpoints")
    train.add_argument("--keep-checkpoints", action="store_true", default=None)
    train.add_argument("--device", default=None, help="cpu to train on the CPU even with a GPU")
    train.add_argument("--seed", type=int, default=None)
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """RecoverySettings from the flags that were given; the rest keep their defaults."""
    from hubprune.recipe import recovery_settings

    values: dict[str, Any] = {}
    lora: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in _NOT_SETTINGS or value is None:
            continue
        if key in _LORA_FLAGS:
            lora[_LORA_FLAGS[key]] = value.split(",") if key == "target_modules" else value
        else:
            values[_RENAMED.get(key, key)] = value
    if args.save_adapter:
        lora["save_adapter"] = True
    if lora:
        values["lora"] = lora
    return recovery_settings(**values)


def run(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)  # validate every flag before loading anything
    from hubprune.cli.run import configure_logging
    from hubprune.recover import recover

    main = configure_logging()
    manifest = recover(args.run_dir, args.out, settings, overwrite=args.overwrite, restart=args.restart)
    if not main:
        return
    curve = manifest.stages["recover"]["curve"]
    print(
        f"held-out loss {curve['eval_loss_before']:.4f} -> {curve['eval_loss_after']:.4f} "
        f"({manifest.stages['recover']['steps']} steps, {settings.mode})"
    )
    print(f"wrote {args.out} (manifest: {args.out}/hubprune.json)")
