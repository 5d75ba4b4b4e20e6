"""Option groups shared by several verbs, so every verb spells them the same way."""

from __future__ import annotations

import argparse
from typing import Any


def add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="Hub repo id (owner/name or owner/name@revision), a local model folder, a .gguf file, "
        "or a bundled offline model such as offline:smollm2-135m-instruct",
    )
    group = parser.add_argument_group("loading")
    group.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype; auto = float32 on CPU, the checkpoint's dtype on GPU (default: auto)",
    )
    group.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, ... (default: cuda if available); auto: spread over every GPU (accelerate)",
    )
    group.add_argument(
        "--allow-pickle", action="store_true", help="also download and load pickled .bin weights"
    )
    group.add_argument(
        "--trust-remote-code", action="store_true", help="run modeling code shipped in the repo"
    )
    group.add_argument(
        "--base-model",
        default=None,
        help="Hub id of the base model for the card when SOURCE is a local folder or GGUF file",
    )


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models larger than memory")
    group.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score one block at a time, read from the checkpoint (default: for slicegpt and dynamic-slicing, "
        "and when the model does not fit in the device's free memory); methods that need the whole model refuse it",
    )
    group.add_argument(
        "--resumable",
        action="store_true",
        help="with streaming: save the activations after every block, so that a killed run resumes there",
    )


def add_method_options(
    parser: argparse.ArgumentParser, *, amount_required: bool, or_plan: bool = False
) -> None:
    """--method, --amount and their settings; with `or_plan`, --method and --amount are required
    unless a saved plan (--plan) is given instead, which the verb checks."""
    group = parser.add_argument_group("method and budget")
    group.add_argument(
        "--method",
        required=not or_plan,
        help="pruning method (see `hubprune ls methods`)" + ("; or give --plan" if or_plan else ""),
    )
    if or_plan:
        note = "; or give --plan"
    else:
        note = "" if amount_required else "; optional here, marks which units would go"
    group.add_argument(
        "--amount",
        required=amount_required and not or_plan,
        default=None,
        help="how much to remove: a whole count (6) or a fraction below 1 (0.25) of the units" + note,
    )
    group.add_argument(
        "--budget-by",
        default="units",
        choices=["units", "params", "flops", "kv"],  # methods.budget.BUDGET_KINDS (import is slow)
        help="read --amount as a share of units (blocks, sublayers, heads, channels), parameters, FLOPs per "
        "token or KV-cache bytes per token (default: units)",
    )
    group.add_argument(
        "--batch-size", type=int, default=8, help="calibration sequences per forward pass (default: 8)"
    )
    group.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method parameter, repeatable; VALUE is read as JSON when it parses (3, 0.5, true, null), "
        "else as text, e.g. --method-arg divergence=kl --method-arg protect_first_blocks=2",
    )


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration data (methods that need data)")
    group.add_argument(
        "--calibration",
        default=None,
        metavar="PATH_OR_DATASET",
        help="Hub dataset id, local .txt/.jsonl/.parquet, or offline:NAME "
        "(default: offline:lee-background for an offline: source, else wikitext / wikitext-2-raw-v1 from the Hub)",
    )
    group.add_argument("--calibration-config", default=None, help="dataset configuration name")
    group.add_argument("--calibration-split", default="train", help="dataset split (default: train)")
    group.add_argument(
        "--text-column", default=None, help="column or JSON field holding the text (default: text)"
    )
    group.add_argument(
        "--samples", type=int, default=32, help="number of calibration sequences (default: 32)"
    )
    group.add_argument(
        "--seq-len", type=int, default=256, help="tokens per calibration sequence (default: 256)"
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed for sampling and random choices (default: 0)"
    )


def source_options(args: Any) -> Any:
    from hubprune.pipeline import SourceOptions

    return SourceOptions(
        spec=args.source,
        dtype=args.dtype,
        device=args.device,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        base_model=args.base_model,
        stream=getattr(args, "stream", None),
        resumable=getattr(args, "resumable", False),
    )


def calibration_options(args: Any) -> Any:
    from hubprune.pipeline import CalibrationOptions

    return CalibrationOptions(
        dataset=args.calibration,
        config=args.calibration_config,
        split=args.calibration_split,
        text_column=args.text_column,
        samples=args.samples,
        seq_len=args.seq_len,
        seed=args.seed,
    )


def budget(args: Any) -> Any:
    from hubprune.methods import Budget

    return None if args.amount is None else Budget.parse(args.amount, args.budget_by)


def method_params(args: Any) -> dict[str, Any]:
    """`--method-arg KEY=VALUE` pairs as a dict (VALUE read as JSON where possible), checked
    against `--method`'s parameters so a wrong one fails before any model is loaded."""
    import json

    from hubprune.errors import RecipeError
    from hubprune.methods import get_method

    out: dict[str, Any] = {}
    for item in getattr(args, "method_arg", None) or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise RecipeError(f"--method-arg expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    get_method(args.method).make_params(out)
    return out
