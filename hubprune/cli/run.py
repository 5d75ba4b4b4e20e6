"""`hubprune run RECIPE.yaml`: the whole pipeline from one recipe, resumable from the run folder.

Argument parsing, logging set-up and the final line only; the stages, their order, skipping and
resuming live in :func:`hubprune.run.run_recipe`, which Python users call directly.
"""

from __future__ import annotations

import argparse
import logging

from hubprune.recipe import STAGES


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="run a whole recipe: prune, recover, evaluate, card, publish",
        description="Run every stage a YAML recipe asks for. Stages already recorded in the run folder's "
        "hubprune.json are skipped, so an interrupted run continues where it stopped (a recovery run "
        "resumes from its last checkpoint).",
        epilog="example: hubprune run examples/smollm2-offline.yaml   (check first: hubprune validate RECIPE)",
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    parser.add_argument(
        "--redo",
        action="append",
        default=[],
        choices=STAGES,
        metavar="STAGE",
        help=f"redo this stage (and the ones after it); repeatable; one of {', '.join(STAGES)}",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from hubprune.run import run_recipe

    main = configure_logging()
    result = run_recipe(args.recipe, force=args.force, redo=args.redo)
    if main:
        print(f"done: {result['out']} (ran: {', '.join(result['ran']) or 'nothing; every stage was done'})")


def configure_logging() -> bool:
    """`hubprune: ...` INFO lines, from the main process only under `accelerate launch`.

    Returns whether this is the main process (the one that prints results).
    """
    import os

    main = int(os.environ.get("RANK", "0")) == 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="hubprune: %(message)s")
    return main
