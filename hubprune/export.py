"""Writing a pruned model as a folder that stock transformers loads.

The folder is built under a temporary name beside the target and renamed at the end, so a
failure never leaves a half-written model where a finished one is expected. Before writing,
the model's tensor names and shapes are checked against a model built from its own (pruned)
config on the meta device: a surgery that left the config and the weights disagreeing is
caught here rather than by a stranger's `from_pretrained`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubprune.errors import ExportError
from hubprune.hub import LICENSE_PATTERNS

DEFAULT_MAX_SHARD_SIZE = "2GB"


def check_consistent(model: nn.Module) -> None:
    """Raise ExportError unless the state dict matches a fresh model of the same config."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(model.config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected.keys() != actual.keys():
        missing = sorted(expected.keys() - actual.keys())[:3]
        extra = sorted(actual.keys() - expected.keys())[:3]
        raise ExportError(
            f"pruned weights do not match the pruned config (missing {missing}, unexpected {extra})"
        )
    for name, shape in expected.items():
        if actual[name] != shape:
            raise ExportError(f"tensor {name} has shape {actual[name]} but the config implies {shape}")


def prepare_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse to write into a non-empty folder unless `overwrite`."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"output folder {out} already exists and is not empty; pass --overwrite to replace it"
        )
    return out


def copy_license_files(source_dir: Path, out_dir: Path) -> list[str]:
    """Copy LICENSE / NOTICE / USE_POLICY files from the base model folder."""
    copied = []
    for pattern in LICENSE_PATTERNS:
        for path in sorted(source_dir.glob(pattern)):
            if path.is_file() and not (out_dir / path.name).exists():
                shutil.copyfile(path, out_dir / path.name)
                copied.append(path.name)
    return copied


@contextmanager
def staged_folder(out_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` in one rename,
    on failure it is removed, so a half-written model never sits where a finished one is expected."""
    out = prepare_out_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is meant to be shared
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    """Save weights (safetensors, sharded at `max_shard_size`), config, generation config,
    tokenizer files and the base model's license files; returns a record for the manifest."""
    prepare_out_dir(out_dir, overwrite)
    check_consistent(model)
    with staged_folder(out_dir, overwrite) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        licenses = write_companions(tmp, tokenizer, source_dir, extra_files)
    files = folder_files(Path(out_dir))
    return {"format": "plain", "max_shard_size": max_shard_size, "files": files, "license_files": licenses}
