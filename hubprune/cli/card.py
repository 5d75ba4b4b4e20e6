"""`hubprune card RUN_DIR`: render (or re-render) the run folder's README.md."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "card",
        help="render the model card (README.md) of a run folder",
        description="Render RUN_DIR/README.md from hubprune.json, eval/results.json and the recovery record, "
        "and draw layer_map.svg (and search_trace.svg for a search with a trace). Sections without data are left out. Safe to re-run.",
        epilog="example: hubprune card out/smollm2-bi6 --repo my-name/smollm2-bi6",
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run folder written by `hubprune prune` or `run`"
    )
    parser.add_argument(
        "--repo",
        default=None,
        metavar="OWNER/NAME",
        help="the Hub repo the quick start loads from (default: the repo of an earlier publish, "
        "else the local folder)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from hubprune.card import render_card
    from hubprune.layer_map import PICTURE_NAMES

    path = render_card(args.run_dir, repo_id=args.repo)
    # Rendering removes stale plots, so the pictures present are the ones just written.
    pictures = [path.parent / name for name in PICTURE_NAMES]
    for written in [path, *(p for p in pictures if p.is_file())]:
        print(f"wrote {written}")
