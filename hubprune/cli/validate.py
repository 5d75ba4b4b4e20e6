"""`hubprune validate RECIPE.yaml ...`: check recipes without loading any model."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "validate",
        help="check run recipes without running them",
        description="Validate each recipe: unknown or misspelt fields, wrong types and impossible values are "
        "all reported at once, with the field path and what was expected; evaluation tasks are looked up in lm-eval's index and local files checked. No model is loaded or downloaded.",
        epilog="example: hubprune validate examples/*.yaml",
    )
    parser.add_argument("recipes", metavar="RECIPE.yaml", nargs="+")
    parser.add_argument(
        "--resolved", action="store_true", help="print each recipe with its defaults filled in"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from hubprune.errors import RecipeError
    from hubprune.recipe import check_resources, read_recipe, resolved_yaml

    failed = []
    for path in args.recipes:
        try:
            recipe, _ = read_recipe(path)
            check_resources(recipe)
        except RecipeError as err:
            print(f"{path}: invalid\n{err}", file=sys.stderr)
            failed.append(path)
            continue
        print(f"{path}: ok (stages: {' -> '.join(recipe.stages())}; run folder {recipe.out})")
        if args.resolved:
            print(resolved_yaml(recipe))
    if failed:
        raise RecipeError(f"{len(failed)} of {len(args.recipes)} recipes are invalid: {', '.join(failed)}")
