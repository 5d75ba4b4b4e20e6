"""Per-model result cache under ``hubprune.offline.cache_dir()/eval``, keyed by the model's Hub
sha (or a fingerprint of its weight files) and every setting that changes a number."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hubprune import offline
from hubprune.evaluation.settings import EvalSettings
from hubprune.tasks import ResolvedTasks

#: Bump when anything that changes a cached number changes in this package.
CACHE_VERSION = 1
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")


def folder_fingerprint(folder: Path) -> str:
    """SHA-256 over the names, sizes and mtimes of a model folder's config and weight files:
    cheap, and it changes whenever the weights are rewritten."""
    digest = hashlib.sha256()
    files = {folder / "config.json", *(p for g in WEIGHT_GLOBS for p in folder.glob(g))}
    for path in sorted(p for p in files if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def settings_key(settings: EvalSettings, resolved: ResolvedTasks, text: Any) -> dict[str, Any]:
    """The part of the settings that changes cached numbers, plus the task and data fingerprints."""
    task_files = {}
    for name, src in sorted(resolved.sources.items()):
        path = Path(src)
        task_files[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else src
    key = asdict(settings)
    key.pop("tasks")
    key.pop("tasks_path")
    for name in ("device", "allow_pickle", "trust_remote_code"):
        key.pop(name)
    key.update(
        tasks=resolved.names,
        task_files=task_files,
        perplexity_file_sha256=getattr(text, "file_sha256", None),
        lm_eval=importlib.metadata.version("lm-eval"),
        transformers=importlib.metadata.version("transformers"),
        torch=importlib.metadata.version("torch"),
        cache_version=CACHE_VERSION,
    )
    return key


def cache_path(fingerprint: str | None, key: dict[str, Any], device: str) -> Path:
    """Where one model's numbers under `key` on `device` are cached."""
    blob = json.dumps({"model": fingerprint, "settings": key, "device": device}, sort_keys=True)
    return offline.cache_dir() / "eval" / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json"


def read_cached(path: Path) -> dict[str, Any] | None:
    """A cached result, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_cached(path: Path, result: dict[str, Any]) -> None:
    """Store a result without speed (always measured anew), via a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
    tmp.write_text(json.dumps({**result, "speed": None}, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
