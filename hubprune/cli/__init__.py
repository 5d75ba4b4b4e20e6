"""The `hubprune` command: one module per verb, each with `add_parser` and `run`.

Verb modules are imported only when their verb runs... except for building `--help`, which
imports them all; none of them imports torch at module level, so `hubprune --help` is instant.
Errors a user can fix (`HubpruneError`) print one sentence and exit 1, and nothing else; anything
else is a bug and keeps its traceback. `HUBPRUNE_DEBUG=1` re-raises in every case, so the traceback
shows the whole cause chain (hubprune's errors are raised `from` the library error behind them).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

# In the order `--help` lists them: the pipeline's stages, then the helpers.
VERBS = ("pull", "inspect", "prune", "recover", "eval", "card", "publish", "run", "validate", "ls")


def build_parser() -> argparse.ArgumentParser:
    from hubprune import __version__

    parser = argparse.ArgumentParser(
        prog="hubprune",
        description="Prune a causal language model from the Hugging Face Hub, heal it, evaluate it and publish it.",
    )
    parser.add_argument("--version", action="version", version=f"hubprune {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        if importlib.util.find_spec(f"hubprune.cli.{verb}") is None:
            continue  # verb not part of this installation
        importlib.import_module(f"hubprune.cli.{verb}").add_parser(sub)
    return parser


def _error_message(err: BaseException) -> str | None:
    """The one-sentence message for an error a user can fix, or None for a bug."""
    from hubprune.errors import HubpruneError

    if isinstance(err, HubpruneError):
        return " ".join(str(err).split())  # one line, even when it quotes a multi-line library message
    return None


def _debugging() -> bool:
    """Whether HUBPRUNE_DEBUG asks for tracebacks (set, and not "0")."""
    return os.environ.get("HUBPRUNE_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit status (1 with one `hubprune: error:` line for a user mistake)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("hubprune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = _error_message(err)
        if message is None or _debugging():
            raise
        print(f"hubprune: error: {message}", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())
