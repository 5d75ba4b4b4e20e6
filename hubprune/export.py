"""Writing a pruned model as a folder that stock transformers loads.

The folder is built in a staging folder beside the target and renamed at the end
(:mod:`hubprune.rundir`), so a failure never leaves a half-written model where a finished one is
expected; callers that add a manifest write the model with :func:`write_plain` into
:func:`~hubprune.rundir.staged_folder` and save the manifest there before the rename. Before writing,
the model's tensor names and shapes are checked against a model built from its own (pruned)
config on the meta device: a surgery that left the config and the weights disagreeing is
caught here rather than by a stranger's `from_pretrained`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubprune.errors import ExportError
from hubprune.hub import LICENSE_PATTERNS
from hubprune.resources import templates_dir
from hubprune.rundir import fault_point, staged_folder

DEFAULT_MAX_SHARD_SIZE = "2GB"


def check_tensors(
    expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Raise ExportError, naming the first difference, unless the weights (`actual` names and
    shapes) are exactly what a model built from the written config holds (`expected`)."""
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    if missing or extra:
        first = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ExportError(
            f"{what} weights do not match the {what} config ({first}; {len(missing)} missing, {len(extra)} unexpected)"
        )
    for name, shape in expected.items():
        if actual[name] != shape:
            raise ExportError(f"tensor {name} has shape {actual[name]} but the {what} config implies {shape}")


def shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor, what :func:`check_tensors` compares."""
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def check_consistent(model: nn.Module) -> None:
    """Raise ExportError unless the state dict matches a fresh model of the same config."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(model.config)
    check_tensors(shapes(reference.state_dict()), shapes(model.state_dict()), "pruned")


def write_with_remote_code(
    folder: Path,
    config: dict[str, Any],
    remote_files: Sequence[str],
    build: Callable[[Path], nn.Module],
    *,
    tokenizer: Any = None,
    generation_config: Any = None,
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    extra_files: dict[str, str] | None = None,
    save: Callable[[nn.Module, Path], Any] | None = None,
) -> tuple[nn.Module, list[str]]:
    """Write a compact export into the (staging) `folder`: `config` as config.json, the model code
    `remote_files` from templates/remote/ beside it, then the weights of `build(folder)` (which
    builds the model from those files and checks the weights against it; `save(model, folder)`
    writes them instead of ``save_pretrained`` when the model is only a meta-device skeleton), the
    generation config, tokenizer and license files. Returns the built model and the license
    files copied."""
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    (folder / "config.json").write_text(text, encoding="utf-8")
    for name in remote_files:
        shutil.copyfile(templates_dir() / "remote" / name, folder / name)
    model = build(folder)
    if save is None:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    else:
        save(model, folder)
    # save_pretrained rewrites config.json from the loaded config object; keep the file exactly as
    # written (the schema vLLM and the remote code read), not transformers' re-serialisation.
    (folder / "config.json").write_text(text, encoding="utf-8")
    if generation_config is not None:
        generation_config.save_pretrained(folder)
    return model, write_companions(folder, tokenizer, source_dir, extra_files)


def copy_license_files(source_dir: Path, out_dir: Path) -> list[str]:
    """Copy LICENSE / NOTICE / USE_POLICY files from the base model folder."""
    copied = []
    for pattern in LICENSE_PATTERNS:
        for path in sorted(source_dir.glob(pattern)):
            if path.is_file() and not (out_dir / path.name).exists():
                shutil.copyfile(path, out_dir / path.name)
                copied.append(path.name)
    return copied


def write_companions(
    folder: Path, tokenizer: Any, source_dir: Path | None, extra_files: dict[str, str] | None
) -> list[str]:
    """Tokenizer files, the base model's license files and any extra text files; returns the
    license files copied."""
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    licenses = copy_license_files(source_dir, folder) if source_dir is not None else []
    for name, text in (extra_files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return licenses


def folder_files(folder: Path) -> list[str]:
    """Every file below `folder`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def write_plain(
    model: nn.Module,
    tokenizer: Any,
    folder: Path,
    *,
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    extra_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Save weights (safetensors, sharded at `max_shard_size`), config, generation config,
    tokenizer files and the base model's license files into the (staging) `folder`; returns a
    record for the manifest."""
    check_consistent(model)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return finish_plain(
        folder, tokenizer, source_dir=source_dir, max_shard_size=max_shard_size, extra_files=extra_files
    )


def finish_plain(
    folder: Path,
    tokenizer: Any,
    *,
    source_dir: Path | None,
    max_shard_size: str | int,
    extra_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """After the weights and configs of a plain export are in `folder` (written from a model, or
    streamed from the source shards): tokenizer and license files, and the manifest's record."""
    fault_point("during-stage")
    licenses = write_companions(folder, tokenizer, source_dir, extra_files)
    files = folder_files(folder)
    return {"format": "plain", "max_shard_size": max_shard_size, "files": files, "license_files": licenses}


def export_plain(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    source_dir: Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`write_plain` into a staged folder that becomes `out_dir` (a model folder without a
    manifest; :func:`hubprune.pipeline.prune` writes run folders)."""
    with staged_folder(out_dir, overwrite, source=source_dir) as tmp:
        return write_plain(
            model,
            tokenizer,
            tmp,
            source_dir=source_dir,
            max_shard_size=max_shard_size,
            extra_files=extra_files,
        )
