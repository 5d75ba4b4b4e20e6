"""`hubprune publish RUN_DIR --repo OWNER/NAME --private|--public`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "publish",
        help="validate a run folder and push it to a Hub model repo in one commit",
        description="Reload RUN_DIR with transformers (one forward pass), check its model card, then upload the "
        "whole folder to the Hub repo in one commit: card and weights together, shards that no longer exist "
        "deleted. The token comes from HF_TOKEN, `hf auth login` or OIDC and is never printed.",
        epilog="example: hubprune publish out/smollm2-bi6 --repo my-name/smollm2-bi6 --private --dry-run",
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run folder written by `hubprune prune` or `run`"
    )
    parser.add_argument(
        "--repo", required=True, metavar="OWNER/NAME", help="the Hub model repo to publish to"
    )
    visibility = parser.add_mutually_exclusive_group(required=True)
    visibility.add_argument(
        "--private", dest="private", action="store_true", help="a new repo is private (say one of the two)"
    )
    visibility.add_argument(
        "--public", dest="private", action="store_false", help="a new repo is public (say one of the two)"
    )
    parser.add_argument(
        "--revision",
        default=None,
        metavar="BRANCH",
        help="publish to this branch (created from main if missing) or to refs/pr/N (default: main)",
    )
    parser.add_argument(
        "--create-pr",
        action="store_true",
        help="open a pull request against main instead of committing to it",
    )
    parser.add_argument("--commit-message", default=None, help="commit title (default: says what was cut)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the files that would be uploaded and deleted, the commit and the card metadata, and what "
        "was checked on the Hub; change nothing (works offline, saying which remote checks it skipped)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from hubprune.publish import publish

    result = publish(
        args.run_dir,
        args.repo,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
    )
    if result.dry_run:
        print("dry run: nothing was uploaded")
