"""Model sources: a Hub repo id (`owner/name[@revision]`), a local folder, a `.gguf` file, or a
bundled offline model (`offline:NAME`). `resolve_source` turns any of them into a local folder
plus provenance; `load_model` loads it with the chosen dtype and device."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from hubprune import hub, offline
from hubprune.errors import RecipeError, SourceError

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ResolvedSource:
    """A source ready to load, and what the manifest and card say about it.

    `base_model` is the Hub id the card names (never a local path); None for local folders
    unless the user gives one.
    """

    spec: str
    kind: str  # "hub", "local", "gguf", "offline"
    local_dir: Path
    base_model: str | None = None
    revision: str | None = None
    sha: str | None = None
    license: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """For the manifest, which is published: the local folder (a cache or home path) is left out."""
        out = asdict(self)
        del out["local_dir"]
        return out


def split_revision(spec: str) -> tuple[str, str | None]:
    """`owner/name@rev` -> (`owner/name`, `rev`)."""
    if "@" in spec:
        repo_id, _, revision = spec.partition("@")
        if not revision:
            raise SourceError(f"'{spec}' has an empty revision after '@'")
        return repo_id, revision
    return spec, None


def is_local(spec: str) -> bool:
    """Whether `spec` names something on this machine (a folder, a GGUF file or bundled offline
    material) rather than a Hub repo, so resolving it downloads nothing."""
    return spec.startswith(offline.PREFIX) or _looks_local(spec)


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def resolve_source(
    spec: str, *, allow_pickle: bool = False, base_model: str | None = None, weights: bool = True
) -> ResolvedSource:
    """Find or download the model behind `spec` without loading any weights. `weights=False`
    downloads a Hub model's config, index, tokenizer and license files only: a caller that knows
    which shards it needs fetches them with :func:`fetch_weights`."""
    if spec.startswith(offline.PREFIX):
        folder, info = offline.model_folder(spec)
        return ResolvedSource(spec, "offline", folder, base_model or info.base_model, license=info.license)
    if spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SourceError(f"GGUF file {spec} does not exist")
        key = hashlib.sha256(
            f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()
        ).hexdigest()[:16]
        folder = offline.convert_gguf(path, offline.cache_dir() / "gguf" / f"{path.stem}-{key}")
        return ResolvedSource(spec, "gguf", folder, base_model)
    if _looks_local(spec):
        path = Path(spec).expanduser()
        if path.is_file():
            raise SourceError(f"{spec} is a file; give the model's folder (or a .gguf file)")
        if not path.is_dir():
            raise SourceError(f"local model folder {spec} does not exist")
        if not (path / "config.json").is_file():
            raise SourceError(f"{spec} is not a model folder (it has no config.json)")
        return ResolvedSource(spec, "local", path, base_model)
    repo_id, revision = split_revision(spec)
    pulled = hub.pull(repo_id, revision, allow_pickle=allow_pickle, weight_files=None if weights else ())
    return ResolvedSource(
        spec, "hub", pulled.local_dir, base_model or repo_id, revision=revision, sha=pulled.sha
    )


def fetch_weights(
    source: ResolvedSource, files: Collection[str] | None, *, allow_pickle: bool = False
) -> ResolvedSource:
    """Download weight `files` (None: all weights, as :func:`resolve_source` fetches them) of a
    Hub source resolved without weights, from the commit resolved then, so the shards match the
    index already read. Other sources are on this machine already."""
    if source.kind != "hub":
        return source
    repo_id, _ = split_revision(source.spec)
    pulled = hub.pull(repo_id, source.sha, allow_pickle=allow_pickle, weight_files=files)
    return replace(source, local_dir=pulled.local_dir)


def resolve_dtype(dtype: str, device: str) -> Any:
    """`auto` means fp32 on CPU (bf16 matmuls are slow there) and the checkpoint's dtype elsewhere."""
    import torch

    if dtype not in DTYPES:
        raise RecipeError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    if dtype == "auto":
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, dtype)


def read_model_config(folder: Path, spec: str) -> dict[str, Any]:
    """A model folder's `config.json` as a dict; a file that is not JSON is the user's to fix."""
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SourceError(
            f"the config.json of {spec} is not valid JSON ({err}); fix or re-download it"
        ) from err


def _weights_corrupt(folder: Path) -> bool:
    """Whether any .safetensors file in `folder` fails to open (truncated, or not safetensors)."""
    from safetensors import safe_open

    for path in Path(folder).glob("*.safetensors"):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception:
            return True
    return False


def check_device(device: str) -> str:
    """`device` if torch knows it (or it is "auto", several GPUs), else a RecipeError."""
    import torch

    from hubprune.formats import DEVICE_MAP_AUTO

    try:
        torch.device(device if device != DEVICE_MAP_AUTO else "cpu")
    except RuntimeError as err:
        raise RecipeError(
            f"'{device}' is not a device torch knows (cpu, cuda, cuda:1, mps, ..., or auto for several GPUs)"
        ) from err
    return device


def unreadable_weights(spec: str) -> SourceError:
    """The error for a source whose safetensors files cannot be read."""
    return SourceError(
        f"the weights of {spec} cannot be read (a truncated or corrupt .safetensors file); "
        "download or export the model again"
    )


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    source: ResolvedSource,
    *,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) in eval mode, in any registered export format (a compact folder
    is built by hubprune's own copy of its remote code, :mod:`hubprune.formats`). Architecture
    support is checked from the config first, so an unsupported family fails before any weights
    are read; pickled weights load only with `allow_pickle` (unpickling can run arbitrary code)."""
    from transformers import AutoTokenizer

    from hubprune.arch import adapter_for
    from hubprune.formats import DEVICE_MAP_AUTO, PLAIN, format_of

    device = check_device(device or default_device())
    config = read_model_config(source.local_dir, source.spec)
    adapter_for(config)
    if device == DEVICE_MAP_AUTO and format_of(config) is not PLAIN:
        raise RecipeError(f"--device auto loads native checkpoints only; {source.spec} is a compact export")
    if not allow_pickle and not any(source.local_dir.glob("*.safetensors")):
        raise SourceError(
            f"{source.spec} has no safetensors weights (pickled .bin weights load only with --allow-pickle)"
        )
    try:
        model = format_of(config).load(
            source.local_dir,
            dtype=resolve_dtype(dtype, device),
            device=device,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, SafetensorError) as err:
        if not _weights_corrupt(source.local_dir):
            raise
        raise unreadable_weights(source.spec) from err
    # The model's config: read again, a compact folder's config.json (with its `auto_map`) would
    # make transformers ask whether to run the folder's code.
    tokenizer = AutoTokenizer.from_pretrained(
        source.local_dir, config=model.config, trust_remote_code=trust_remote_code
    )
    return model, tokenizer
