"""The plan (what a method decided to remove, and why) and the manifest (`hubprune.json`).

A method never edits a model: it returns a :class:`Plan`, a JSON-serialisable description that
surgery applies and the card renders. The :class:`Manifest` is the machine-readable truth about
a run folder; every later stage reads it instead of re-deriving anything from weights.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubprune import __version__
from hubprune.errors import HubpruneError, RecipeError, SourceError

if TYPE_CHECKING:
    from hubprune.shape import Shape

SCHEMA_VERSION = 1
MANIFEST_NAME = "hubprune.json"
#: Beside the manifest, never published: the source spec and recipe text with their local paths.
LOCAL_RECORD_NAME = ".hubprune-local.json"
#: Beside the manifest: the plan's tensors (:attr:`Plan.tensors`).
PLAN_TENSORS_NAME = "hubprune-plan.safetensors"

UNIT_KINDS = ("block", "attn", "mlp", "heads", "channels", "width")


@dataclass(frozen=True)
class Unit:
    """One prunable unit: a whole block, the attention or MLP sublayer of a block, heads/channels
    of a block (`indices`), or a per-block hidden width (`width`)."""

    kind: str
    block: int
    indices: tuple[int, ...] | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise RecipeError(f"unknown unit kind '{self.kind}'; expected one of: {', '.join(UNIT_KINDS)}")

    @property
    def name(self) -> str:
        """A short label: `block 3`, `attn 12`, `mlp 7`; `heads 2[1]` (KV group 1 of block 2),
        `channels 5 (384)` (384 channels of block 5); `width 4 (432)` (block 4 reads a residual
        stream sliced to 432 dimensions; `width L` is the final norm's input)."""
        if self.width is not None:
            return f"{self.kind} {self.block} ({self.width})"
        if self.indices is None:
            return f"{self.kind} {self.block}"
        if len(self.indices) == 1:
            return f"{self.kind} {self.block}[{self.indices[0]}]"
        return f"{self.kind} {self.block} ({len(self.indices)})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "block": self.block}
        if self.indices is not None:
            out["indices"] = list(self.indices)
        if self.width is not None:
            out["width"] = self.width
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Unit:
        indices = data.get("indices")
        return cls(
            data["kind"],
            int(data["block"]),
            tuple(indices) if indices is not None else None,
            data.get("width"),
        )


@dataclass
class Calibration:
    """Where calibration tokens came from, enough to reproduce them bit for bit."""

    source: str
    kind: str  # "hub-dataset", "file" or "offline"
    samples: int
    seq_len: int
    seed: int
    token_ids_sha256: str
    total_tokens_available: int
    bos_prepended: bool
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    text_column: str | None = None
    file_sha256: str | None = None


@dataclass
class Plan:
    """What to remove and why.

    `scores` holds every candidate's score (not only the removed ones) with `score_meaning`
    saying how to read it; `trace` holds the steps of iterative searches and `search_cost` what
    the search spent (JSON-safe; FinerCut: FLOPs, forward passes, seconds).
    """

    method: str
    unit_kind: str
    removed: list[Unit]
    scores: list[dict[str, Any]] = field(default_factory=list)
    score_meaning: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)
    calibration: Calibration | None = None
    seed: int | None = None
    search_cost: dict[str, Any] | None = None  # what a search method spent (FinerCut: FLOPs, passes, time)
    #: An optimisation's objective per step (policy gradient: ``{"step", "loss", "baseline"}``).
    curve: list[dict[str, float]] = field(default_factory=list)
    #: The dense model's widths (:class:`hubprune.shape.Dims`): what unit indices refer to.
    dims: dict[str, int] | None = None
    #: Tensors a method produces (per-channel scores, rotations): saved beside the manifest in
    #: ``hubprune-plan.safetensors`` by :meth:`Manifest.save`, never in JSON.
    tensors: dict[str, Any] = field(default_factory=dict, repr=False)

    def removed_blocks(self) -> list[int]:
        return sorted(u.block for u in self.removed if u.kind == "block")

    def shape(self) -> Shape:
        """What the plan leaves of each block (:class:`hubprune.shape.Shape`)."""
        from hubprune.shape import Dims, Shape

        if self.dims is None:
            raise RecipeError(
                "this plan does not record the model's widths (it was written by an older hubprune); re-run prune"
            )
        return Shape.from_units(self.removed, Dims(**self.dims))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, tensors={}))
        del out["tensors"]
        if self.dims is not None:  # derived, for readers of the manifest; rebuilt from `removed` on load
            out["shape"] = self.shape().to_dict()["blocks"]
        out["removed"] = [u.to_dict() for u in self.removed]
        out["scores"] = [
            {**s, "unit": s["unit"].to_dict()} if isinstance(s["unit"], Unit) else s for s in self.scores
        ]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["removed"] = [Unit.from_dict(u) for u in data["removed"]]
        data["scores"] = [{**s, "unit": Unit.from_dict(s["unit"])} for s in data.get("scores", [])]
        if data.get("calibration") is not None:
            data["calibration"] = Calibration(**data["calibration"])
        return cls(**data)


def token_ids_sha256(input_ids: Any) -> str:
    """SHA-256 of the token ids as little-endian int64: the fingerprint of the calibration data."""
    import numpy as np

    array = np.ascontiguousarray(
        np.asarray(input_ids.cpu() if hasattr(input_ids, "cpu") else input_ids, dtype="<i8")
    )
    return hashlib.sha256(array.tobytes()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a result, for the manifest and the card."""
    import importlib.metadata as md

    out = {"hubprune": __version__, "python": platform.python_version()}
    for dist in (
        "torch",
        "transformers",
        "huggingface-hub",
        "safetensors",
        "peft",
        "datasets",
        "accelerate",
        "lm-eval",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


@dataclass
class Manifest:
    """`hubprune.json`: the source, the plan, the models before/after and every stage's record.

    `source` holds `spec` (what the user typed), `base_model` (the Hub id for the card, never a
    local path), `revision` and `sha`. `stages` maps a stage name ("prune", "recover",
    "evaluate", "export", "publish", ...) to what that stage recorded.
    """

    source: dict[str, Any]
    family: str
    plan: Plan
    model_before: dict[str, Any]
    model_after: dict[str, Any]
    export: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    created_at: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    schema_version: int = SCHEMA_VERSION
    hubprune_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["plan"] = self.plan.to_dict()
        return out

    def save(self, folder: str | Path) -> Path:
        """Write sorted, indented JSON to `folder/hubprune.json`, replacing it in one rename so a
        reader or a kill never meets half a manifest.

        The manifest is published, so every absolute local path in it is written as
        ``local:<name>`` (:mod:`hubprune.redact`). The fields as they were (the source spec eval
        compares with, the recipe text a re-run compares settings with) go to the hidden
        ``.hubprune-local.json`` beside it, which publishing skips; :meth:`load` puts them back.
        """
        from hubprune.redact import public_record
        from hubprune.rundir import atomic_write_text  # rundir reads MANIFEST_NAME from here

        folder = Path(folder)
        data = self.to_dict()
        public = public_record(data)
        local = {key: value for key, value in data.items() if public[key] != value}
        local_path = folder / LOCAL_RECORD_NAME
        if local:
            atomic_write_text(local_path, json.dumps(local, indent=2, sort_keys=True) + "\n")
        else:
            local_path.unlink(missing_ok=True)
        tensors_path = folder / PLAN_TENSORS_NAME
        if self.plan.tensors:
            from safetensors.torch import save_file

            partial = tensors_path.with_name(f".{PLAN_TENSORS_NAME}.partial")
            save_file({k: v.contiguous() for k, v in self.plan.tensors.items()}, str(partial))
            partial.replace(tensors_path)
        text = json.dumps(public, indent=2, sort_keys=True) + "\n"
        return atomic_write_text(folder / MANIFEST_NAME, text)

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """Read `folder/hubprune.json`, with the local values of :meth:`save` put back when present."""
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise SourceError(f"{folder} is not a hubprune run folder (it has no {MANIFEST_NAME})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            local_path = Path(folder) / LOCAL_RECORD_NAME
            if local_path.is_file():
                data.update(json.loads(local_path.read_text(encoding="utf-8")))
            known = {f.name for f in fields(cls)}
            data = {k: v for k, v in data.items() if k in known}
            data["plan"] = Plan.from_dict(data["plan"])
            tensors_path = Path(folder) / PLAN_TENSORS_NAME
            if tensors_path.is_file():
                from safetensors.torch import load_file

                data["plan"].tensors = load_file(str(tensors_path))
            return cls(**data)
        except HubpruneError:
            raise  # a plan that names something unknown says so itself
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSON errors are ValueErrors
            what = f"no {err}" if isinstance(err, KeyError) else str(err)
            raise SourceError(
                f"{path} is not a valid hubprune manifest ({what}); re-run the stage that wrote it"
            ) from err


def read_plan_file(path: str | Path) -> tuple[Plan, str | None]:
    """A saved plan and the family it was made for (None when the file does not say): the JSON
    of ``hubprune inspect --json``, or a run's ``hubprune.json`` (or its folder), whose plan
    tensors beside it come along. A file that is neither is refused in one sentence."""
    path = Path(path)
    if path.is_dir() or path.name == MANIFEST_NAME:
        manifest = Manifest.load(path if path.is_dir() else path.parent)
        return manifest.plan, manifest.family
    if not path.is_file():
        raise SourceError(f"plan file {path} does not exist")
    hint = "give the output of `hubprune inspect --json` or a run's hubprune.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RecipeError(f"plan file {path} is not valid JSON ({err}); {hint}") from err
    try:
        record = data["plan"] if isinstance(data, dict) and "plan" in data else data
        return Plan.from_dict(record), data.get("family")
    except HubpruneError:
        raise  # a unit of an unknown kind says so itself
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        what = f"no {err}" if isinstance(err, KeyError) else str(err)
        raise RecipeError(f"plan file {path} is not a hubprune plan ({what}); {hint}") from err
