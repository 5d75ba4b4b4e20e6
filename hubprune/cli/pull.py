"""`hubprune pull SOURCE`: download (or convert) a model and print where it is."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pull",
        help="download or convert a model without loading it",
        description="Fetch SOURCE into the local cache (Hub snapshot, converted GGUF or offline model) and "
        "print its folder and commit.",
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="Hub repo id[@revision], local folder, .gguf file or offline:NAME"
    )
    parser.add_argument("--allow-pickle", action="store_true", help="also download pickled .bin weights")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from hubprune.source import resolve_source

    source = resolve_source(args.source, allow_pickle=args.allow_pickle)
    print(f"{source.spec}: {source.local_dir}" + (f" (commit {source.sha})" if source.sha else ""))
