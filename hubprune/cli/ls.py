"""`hubprune ls methods|families|offline`: what this installation supports."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ls", help="list methods, model families or offline material")
    parser.add_argument("what", choices=["methods", "families", "offline"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.what == "methods":
        from hubprune.methods import available_methods

        for spec in available_methods():
            data = "needs calibration text" if spec.needs_calibration else "no data"
            print(f"{spec.name:<18} {spec.unit_kind:<8} {data:<22} {spec.title}  {spec.reference_url}")
    elif args.what == "families":
        from hubprune.arch import ALL

        for adapter in ALL:
            print(f"{adapter.family:<10} model_type: {', '.join(adapter.model_types)}  {adapter.notes}")
    else:
        from hubprune import offline

        for name, model in offline.MODELS.items():
            print(f"offline:{name:<24} model  {model.base_model} (package {model.distribution})")
        for name, text in offline.TEXTS.items():
            print(f"offline:{name:<24} text   {text.description} (package {text.distribution})")
