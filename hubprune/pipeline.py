"""The stages as library functions: load a source, build calibration data, score, prune, export.

The CLI verbs and `hubprune run` are thin wrappers around these; a Python user calls them
directly. Each returns plain objects (a Plan, a Manifest) that the next stage consumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from hubprune import data as data_mod
from hubprune import offline
from hubprune.arch import ArchAdapter, adapter_for
from hubprune.checkpoint import Checkpoint
from hubprune.cost import budget_reached, model_cost
from hubprune.data import CalibrationBatch, TextSource
from hubprune.errors import RecipeError
from hubprune.export import DEFAULT_MAX_SHARD_SIZE, write_plain
from hubprune.formats import DEVICE_MAP_AUTO, PLAIN, format_of
from hubprune.methods import Budget, MethodContext, get_method
from hubprune.plan import Manifest, Plan
from hubprune.redact import public_text
from hubprune.rundir import prepare_out_dir, staged_folder
from hubprune.shape import Dims
from hubprune.source import (
    ResolvedSource,
    check_device,
    default_device,
    fetch_weights,
    is_local,
    load_model,
    read_model_config,
    resolve_dtype,
    resolve_source,
    unreadable_weights,
)
from hubprune.streaming import (
    FITS_FRACTION,
    FileStateDict,
    StreamedWeights,
    TensorFiles,
    available_memory,
    loaded_bytes,
    refuse_whole_model_method,
    skeleton,
    weight_map,
)
from hubprune.surgery import apply_plan

logger = logging.getLogger(__name__)


@dataclass
class SourceOptions:
    """How to find and load the model."""

    spec: str
    dtype: str = "auto"
    device: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    base_model: str | None = None
    #: Score one block at a time, read from the checkpoint (:mod:`hubprune.streaming`): True, False,
    #: or None to decide from the model's size and the device's free memory.
    stream: bool | None = None
    #: Streamed scoring saves its activations after every block, so a killed run resumes.
    resumable: bool = False


@dataclass
class CalibrationOptions:
    """Which text to calibrate on and how much of it. `dataset` None means the default:
    ``offline:lee-background`` for an ``offline:`` source, else WikiText-2 (train) from the Hub."""

    dataset: str | None = None
    config: str | None = None
    split: str = "train"
    text_column: str | None = None
    revision: str | None = None
    samples: int = 32
    seq_len: int = 256
    seed: int = 0


@dataclass
class Loaded:
    source: ResolvedSource
    model: Any
    tokenizer: Any
    adapter: ArchAdapter
    timings: dict[str, float] = field(default_factory=dict)
    #: Set when the model is streamed: `model` is then an empty skeleton (:mod:`hubprune.streaming`).
    weights: StreamedWeights | None = None
    #: Why the model is streamed, or not, for the log and the manifest.
    stream_reason: str = ""


def load(
    options: SourceOptions, resolved: ResolvedSource | None = None, *, method: str | None = None
) -> Loaded:
    """Resolve (download or convert) and load the model, checking the family first; or, when it is
    to be streamed (:func:`choose_streaming` for `method`), build its empty skeleton only."""
    start = time.perf_counter()
    source = resolved or resolve_source(
        options.spec, allow_pickle=options.allow_pickle, base_model=options.base_model
    )
    streamed, reason = choose_streaming(options, source, method)
    if streamed:
        loaded = _load_streamed(options, source)
        loaded.stream_reason = reason
        logger.warning("Streaming %s block by block: %s", options.spec, reason)
        loaded.timings["load_s"] = time.perf_counter() - start
        return loaded
    model, tokenizer = load_model(
        source,
        dtype=options.dtype,
        device=options.device,
        trust_remote_code=options.trust_remote_code,
        allow_pickle=options.allow_pickle,
    )
    timings = {"load_s": time.perf_counter() - start}
    return Loaded(source, model, tokenizer, adapter_for(model), timings, stream_reason=reason)


def choose_streaming(options: SourceOptions, source: ResolvedSource, method: str | None) -> tuple[bool, str]:
    """Whether to stream the model block by block, and why: when asked (`--stream`), for a method
    that slices the residual stream (unless `--no-stream`), or when its weights would not fit in
    the free memory of the device and `method` can stream."""
    spec = get_method(method) if method is not None else None
    if options.stream is False:
        return False, "not streamed (--no-stream)"
    if options.stream:
        if spec is not None and not spec.streams:
            raise refuse_whole_model_method(spec.name)
        if options.device == DEVICE_MAP_AUTO:
            raise RecipeError("--stream and --device auto are two ways to fit a large model: choose one")
        return True, "asked (--stream)"
    if (
        options.device == DEVICE_MAP_AUTO
        or format_of(read_model_config(source.local_dir, source.spec)) is not PLAIN
    ):
        return False, ""
    device = options.device or default_device()
    need = loaded_bytes(source.local_dir, resolve_dtype(options.dtype, device))
    if need is None:
        return False, ""
    if spec is not None and spec.slices_residual and spec.streams:
        # Its PCA runs one block at a time either way and its export computes every sliced tensor
        # from the dense ones: streamed, the same files come out without the dense model in memory.
        return True, f"method '{spec.name}' reads one block at a time (--no-stream loads the model whole)"
    free = available_memory(device)
    if need <= FITS_FRACTION * free:
        return False, ""
    sizes = f"the weights take {need / 2**30:.1f} GiB loaded, the {device} has {free / 2**30:.1f} GiB free"
    if spec is not None and not spec.streams:
        logger.warning("%s; method '%s' needs the whole model, loading it anyway", sizes, spec.name)
        return False, ""
    return True, f"{sizes} (more than {FITS_FRACTION:.0%})"


def _load_streamed(options: SourceOptions, source: ResolvedSource) -> Loaded:
    """The model as an empty skeleton over its safetensors files, with its tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    config_dict = read_model_config(source.local_dir, source.spec)
    adapter = adapter_for(config_dict)
    if format_of(config_dict) is not PLAIN:
        raise RecipeError(f"--stream reads native checkpoints only; {source.spec} is a compact export")
    device = options.device or default_device()
    dtype = resolve_dtype(options.dtype, device)
    config = AutoConfig.from_pretrained(source.local_dir, trust_remote_code=options.trust_remote_code)
    if dtype == "auto":
        dtype = config.dtype or torch.float32
    model = skeleton(source.local_dir, dtype, options.trust_remote_code, config=config)
    weights = StreamedWeights(
        model, adapter, TensorFiles(source.local_dir), device, resumable=options.resumable
    )
    tokenizer = AutoTokenizer.from_pretrained(source.local_dir, trust_remote_code=options.trust_remote_code)
    return Loaded(source, model, tokenizer, adapter, weights=weights)


def calibration_text(options: CalibrationOptions, source_spec: str) -> TextSource:
    """The calibration documents, loaded before any weights so a missing file or column, or an
    unreachable Hub, fails fast. With no dataset named: offline text for an ``offline:`` source
    (no Hub needed), WikiText-2 from the Hub otherwise."""
    if options.dataset is not None:
        spec, config = options.dataset, options.config
    elif source_spec.startswith(offline.PREFIX):
        spec, config = data_mod.OFFLINE_DEFAULT, None
    else:
        spec, config = data_mod.DEFAULT_DATASET, options.config or data_mod.DEFAULT_DATASET_CONFIG
    return data_mod.load_texts(
        spec,
        config=config,
        split=options.split,
        text_column=options.text_column,
        revision=options.revision,
        alternative=f"pass --calibration {data_mod.OFFLINE_DEFAULT} (offline texts: "
        f"{data_mod.offline_alternative()}) or a local file",
    )


def calibrate(
    loaded: Loaded, options: CalibrationOptions, texts: TextSource | None = None
) -> CalibrationBatch:
    """Tokenised calibration windows with provenance (from `texts` when already loaded)."""
    texts = texts or calibration_text(options, loaded.source.spec)
    return data_mod.build_calibration(
        loaded.tokenizer,
        texts,
        samples=options.samples,
        seq_len=options.seq_len,
        seed=options.seed,
        max_positions=getattr(loaded.model.config, "max_position_embeddings", None),
    )


def score(
    loaded: Loaded,
    method: str,
    budget: Budget | None,
    *,
    calibration: CalibrationOptions | None = None,
    method_params: dict[str, Any] | None = None,
    batch_size: int = 8,
    texts: TextSource | None = None,
) -> Plan:
    """Run a method and return its plan; calibration text (`texts`, or loaded now) is used only
    if the method needs it."""
    spec = get_method(method)
    spec.check_budget(budget)
    params = spec.make_params(method_params)
    calibration = calibration or CalibrationOptions()
    batch = calibrate(loaded, calibration, texts) if spec.needs_calibration else None
    checkpoint = Checkpoint.for_run(
        {
            "source": loaded.source.to_dict(),
            "folder": str(loaded.source.local_dir),
            "method": method,
            "params": asdict(params),
            "budget": budget.to_dict() if budget else None,
            "calibration": batch.info.token_ids_sha256 if batch is not None else None,
            "seed": calibration.seed,
            "batch_size": batch_size,
        }
    )
    ctx = MethodContext(
        loaded.model,
        loaded.adapter,
        budget,
        batch,
        seed=calibration.seed,
        batch_size=batch_size,
        checkpoint=checkpoint,
        calibrate_on=lambda dataset: calibrate(loaded, replace(calibration, dataset=dataset, config=None)),
        weights=loaded.weights,
    )
    plan = spec.plan_fn(ctx, params)
    checkpoint.clear()  # the plan is complete: nothing left to resume
    return finish_plan(plan, loaded.model, loaded.adapter)


def finish_plan(plan: Plan, model: Any, adapter: ArchAdapter) -> Plan:
    """Record the dense model's widths and, for every method alike, what the plan reaches in
    parameters, FLOPs and KV cache (the compact export's numbers, from the shape)."""
    plan.dims = Dims.from_config(model.config).to_dict()
    reached = plan.budget.setdefault("reached", {})
    reached.update(budget_reached(model, adapter, plan.shape()))
    return plan


def prune(
    source: SourceOptions,
    method: str,
    budget: Budget,
    out_dir: str | Path,
    *,
    calibration: CalibrationOptions | None = None,
    method_params: dict[str, Any] | None = None,
    batch_size: int = 8,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    recipe: str | None = None,
    export_format: str = "plain",
) -> Manifest:
    """Load -> score -> apply the plan -> export a checkpoint with `hubprune.json`.

    `export_format` "plain" writes the native architecture; removed attention/MLP sublayers are
    zero-filled there (identical outputs, no savings, recorded as `zero_filled`). "compact"
    writes removed sublayers as really gone, in the nemotron-nas schema with our remote code
    (:mod:`hubprune.export_compact`); for whole-block plans it is the same as plain.
    """
    if export_format not in EXPORT_FORMATS:
        raise RecipeError(
            f"unknown export format '{export_format}'; choose from: {', '.join(EXPORT_FORMATS)}"
        )
    check_run_settings(batch_size=batch_size, max_shard_size=max_shard_size)
    prepare_out_dir(out_dir, overwrite, source=source.spec)  # fail before any expensive work
    spec = get_method(method)
    spec.make_params(method_params)  # a bad method argument fails before loading weights
    spec.check_budget(budget)
    if source.stream and not spec.streams:
        raise refuse_whole_model_method(spec.name)
    # Checks in order of cost: a local model's config (free), then the calibration text (a
    # missing file or column, or no Hub, fails before any download), then a Hub model's download.
    calibration = calibration or CalibrationOptions()
    if method in CONFIG_ONLY_METHODS:  # the plan needs no weights: stream them, never load the model
        settings = dict(
            max_shard_size=max_shard_size, overwrite=overwrite, recipe=recipe, export_format=export_format
        )
        streamed = _prune_config_only(
            source, spec, budget, out_dir, calibration, method_params, batch_size, settings
        )
        if streamed is not None:
            return streamed
    resolved = (
        _resolve_and_check(source, spec, budget, method_params, export_format)
        if is_local(source.spec)
        else None
    )
    texts = calibration_text(calibration, source.spec) if spec.needs_calibration else None
    for other in (
        spec.make_params(method_params).text_sources() if hasattr(spec.params_cls, "text_sources") else ()
    ):
        calibration_text(replace(calibration, dataset=other, config=None), source.spec)  # fails fast
    resolved = resolved or _resolve_and_check(source, spec, budget, method_params, export_format)
    loaded = load(source, resolved, method=method)
    before = model_cost(loaded.model, adapter=loaded.adapter)
    start = time.perf_counter()
    plan = score(
        loaded,
        method,
        budget,
        calibration=calibration,
        method_params=method_params,
        batch_size=batch_size,
        texts=texts,
    )
    score_s = time.perf_counter() - start
    streamed, stream_reason = loaded.weights is not None, loaded.stream_reason
    resumed = loaded.weights.resumed_from if streamed else {}
    if streamed and not plan.shape().rotated:  # a sliced export reads the files tensor by tensor
        stage = {
            "load_s": round(loaded.timings["load_s"], 2),
            "score_s": round(score_s, 2),
            "batch_size": batch_size,
            "streamed": True,
            "stream_reason": stream_reason,
            **({"stream_resumed_at_block": resumed} if resumed else {}),
        }
        exported = _prune_streamed(
            source,
            out_dir,
            lambda _skeleton: plan,
            check=lambda config: _check_config(
                config, source.spec, spec, budget, method_params, export_format
            ),
            export_format=export_format,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            recipe=recipe,
            stage=stage,
        )
        if exported is not None:  # copied shard by shard
            return exported
        logger.warning("Loading %s whole to export the plan", source.spec)
        loaded = load(replace(source, stream=False), loaded.source)
    # The manifest goes into the staging folder too: the run folder appears complete or not at all.
    with staged_folder(out_dir, overwrite, source=loaded.source.local_dir) as folder:
        export = _apply_and_export(loaded, plan, folder, export_format, max_shard_size)
        after = export.pop("_model_after")
        stage = {
            "load_s": round(loaded.timings["load_s"], 2),
            "score_s": round(score_s, 2),
            "batch_size": batch_size,
            "streamed": streamed,
            **({"stream_reason": stream_reason} if stream_reason else {}),
            **({"stream_resumed_at_block": resumed} if resumed else {}),
        }
        return _save_manifest(folder, loaded, plan, before, after, export, stage, recipe)


def check_run_settings(*, batch_size: int, max_shard_size: str | int) -> None:
    """Reject a batch size below 1 or a shard size transformers cannot read, before any work."""
    from transformers.utils.hub import convert_file_size_to_int

    if batch_size < 1:
        raise RecipeError(f"--batch-size must be at least 1, got {batch_size}")
    try:
        convert_file_size_to_int(max_shard_size)
    except ValueError as err:
        raise RecipeError(
            f"--max-shard-size must be a size such as 2GB, 500MB or a byte count, got '{max_shard_size}'"
        ) from err


def _resolve_and_check(
    source: SourceOptions, spec: Any, budget: Budget, method_params: dict[str, Any] | None, export_format: str
) -> ResolvedSource:
    """Resolve the source and check what its config alone decides: family, unit budget, format."""
    resolved = resolve_source(source.spec, allow_pickle=source.allow_pickle, base_model=source.base_model)
    _check_config(
        read_model_config(resolved.local_dir, source.spec),
        source.spec,
        spec,
        budget,
        method_params,
        export_format,
    )
    return resolved


def _check_native(
    config: dict[str, Any], spec: str, export_format: str, slices_residual: bool, what: str
) -> ArchAdapter:
    """The adapter of a native checkpoint's family, after checking that `export_format` can hold
    what `what` (a method or a plan) does; unsupported families fail before loading weights."""

    fmt = format_of(config)
    if fmt is not PLAIN:
        raise RecipeError(
            f"{spec} is a compact export ({fmt.name}); prune works on native checkpoints: "
            "prune the base model, or a plain export, again"
        )
    adapter = adapter_for(str(config.get("model_type")))
    if export_format == "nemotron-nas":  # the family and its attention; widths are known after scoring
        from hubprune.export_compact import check_compact_supported

        check_compact_supported(config, adapter, check_width=False)
    if slices_residual:
        from hubprune.rotation import check_rotatable

        check_rotatable(adapter)
        if export_format in ("plain", "nemotron-nas"):
            raise RecipeError(
                f"{what} slices the residual stream, which the {export_format} format cannot "
                "express; pass --format compact (hubprune's heterogeneous format, trust_remote_code=True)"
            )
    return adapter


def _check_config(
    config: dict[str, Any],
    source_spec: str,
    spec: Any,
    budget: Budget,
    method_params: dict[str, Any] | None,
    export_format: str,
) -> ArchAdapter:
    """What a source's config alone decides for a method: family, format, widths, unit budget."""
    adapter = _check_native(config, source_spec, export_format, spec.slices_residual, f"method '{spec.name}'")
    params = spec.make_params(method_params)
    if hasattr(params, "check"):  # width options against the model's widths (e.g. multiple_of)
        params.check(Dims.from_config(config))
    if spec.unit_kind == "block" and budget.by == "units":
        budget.unit_count(config["num_hidden_layers"])
    if spec.unit_kind == "sublayer" and budget.by == "units":
        budget.unit_count(2 * config["num_hidden_layers"], "sublayers")
    return adapter


#: plain: the native architecture; compact: really smaller, in the nemotron-nas schema when it
#: can express the plan, else our heterogeneous format; the last two force one compact schema.
EXPORT_FORMATS = ("plain", "compact", "nemotron-nas", "hetero")


def _apply_and_export(
    loaded: Loaded,
    plan: Plan,
    folder: Path,
    export_format: str,
    max_shard_size: str | int,
) -> dict[str, Any]:
    """Apply `plan` for the chosen format and write the (staging) folder; the record carries `_model_after`.

    compact: what the plan removes is really gone (:func:`export_compact.write_compact_shape`).
    plain: the native architecture; removed heads, channels and sublayers are zero-filled.
    """
    model, adapter = loaded.model, loaded.adapter
    shape = plan.shape()
    cut = shape.has_widths() or shape.has_sublayer_removals()
    where = dict(source_dir=loaded.source.local_dir, max_shard_size=max_shard_size)
    if shape.rotated:
        from hubprune.export_compact import write_sliced_shape

        dense = (
            FileStateDict(loaded.weights.files, loaded.weights.dtype) if loaded.weights is not None else None
        )
        export = write_sliced_shape(
            model, adapter, shape, plan.tensors, loaded.tokenizer, folder, export_format, dense=dense, **where
        )
        after = model_cost(export.pop("_model"), adapter=adapter, folder=folder)
    elif export_format != "plain" and cut:
        from hubprune.export_compact import write_compact_shape

        schema = "auto" if export_format == "compact" else export_format
        export = write_compact_shape(model, adapter, shape, loaded.tokenizer, folder, schema=schema, **where)
        after = model_cost(export.pop("_model"), adapter=adapter, folder=folder)
    else:
        apply_plan(model, adapter, plan, sublayers="zero")
        after = model_cost(model, adapter=adapter)
        export = _plain_record(write_plain(model, loaded.tokenizer, folder, **where), plan, export_format)
    export["_model_after"] = after
    return export


def _plain_record(export: dict[str, Any], plan: Plan, export_format: str) -> dict[str, Any]:
    """The manifest's record of a plain export, with what it says about zero-filled units."""
    export.update(vllm_servable=True, how_to_load="AutoModelForCausalLM.from_pretrained(REPO)")
    shape = plan.shape()
    if shape.has_widths() or shape.has_sublayer_removals():
        zeroed = [u.name for u in plan.removed if u.kind != "block"]
        export["zero_filled"] = True
        export["zero_filled_units"] = zeroed
        export["savings"] = (
            "none: removed heads, channels and sublayers are zero-filled weights in the native architecture "
            "(same outputs, same size and speed); use --format compact for real savings"
        )
    if export_format != "plain":
        export["compact_note"] = "only whole blocks were removed, so the compact export is the plain one"
    return export


# -- plans applied without loading the model: shard-streamed export (issue #15) -----------------

#: Methods whose plan follows from the config alone (block positions, a seed): they run on the
#: meta-device skeleton, so `prune` never loads the weights (:func:`_prune_streamed`).
CONFIG_ONLY_METHODS = ("reverse-order", "random")


def _prune_config_only(
    source: SourceOptions,
    spec: Any,
    budget: Budget,
    out_dir: str | Path,
    calibration: CalibrationOptions,
    method_params: dict[str, Any] | None,
    batch_size: int,
    settings: dict[str, Any],
) -> Manifest | None:
    """:func:`prune` for a method in :data:`CONFIG_ONLY_METHODS`: planned on the skeleton and
    exported shard by shard; None when the source cannot be streamed."""

    def make_plan(loaded: Loaded) -> Plan:
        options = dict(calibration=calibration, method_params=method_params, batch_size=batch_size)
        return score(loaded, spec.name, budget, **options)

    def check(config: dict[str, Any]) -> ArchAdapter:
        return _check_config(config, source.spec, spec, budget, method_params, settings["export_format"])

    return _prune_streamed(
        source, out_dir, make_plan, check=check, stage={"batch_size": batch_size}, **settings
    )


def prune_from_plan(
    source: SourceOptions,
    plan: Plan,
    out_dir: str | Path,
    *,
    family: str | None = None,
    plan_from: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    recipe: str | None = None,
    export_format: str = "plain",
) -> Manifest:
    """Apply a saved `plan` (``hubprune inspect --json``, or a run's manifest) to `source`
    without scoring, and export it with `hubprune.json`.

    The plan must fit the source: same `family` when the plan names one, same widths and block
    count. Whole-block plans, and removed sublayers in the plain format, are exported shard by
    shard without loading the model (for a Hub source only the shards holding kept tensors are
    downloaded); other plans load the model and export as :func:`prune` does. The manifest keeps
    the plan as given, with its `reached` costs recomputed; `plan_from` names where it came from.
    """
    from hubprune import shard_export

    if export_format not in EXPORT_FORMATS:
        raise RecipeError(
            f"unknown export format '{export_format}'; choose from: {', '.join(EXPORT_FORMATS)}"
        )
    check_run_settings(batch_size=1, max_shard_size=max_shard_size)
    prepare_out_dir(out_dir, overwrite, source=source.spec)

    def check(config: dict[str, Any]) -> ArchAdapter:
        return _check_plan_fits(plan, family, config, source.spec, export_format)

    stage = {"plan_from": plan_from}
    if is_local(source.spec):  # a bad plan fails before any work; a Hub source is checked on its config
        resolved = resolve_source(source.spec, allow_pickle=source.allow_pickle, base_model=source.base_model)
        check(read_model_config(resolved.local_dir, source.spec))
    if shard_export.unstreamable_plan(plan.shape(), export_format) is None:
        manifest = _prune_streamed(
            source,
            out_dir,
            lambda loaded: finish_plan(plan, loaded.model, loaded.adapter),
            check=check,
            export_format=export_format,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            recipe=recipe,
            stage=stage,
        )
        if manifest is not None:
            return manifest
    resolved = resolve_source(source.spec, allow_pickle=source.allow_pickle, base_model=source.base_model)
    check(read_model_config(resolved.local_dir, source.spec))
    loaded = load(source, resolved)
    before = model_cost(loaded.model, adapter=loaded.adapter)
    finish_plan(plan, loaded.model, loaded.adapter)
    with staged_folder(out_dir, overwrite, source=loaded.source.local_dir) as folder:
        export = _apply_and_export(loaded, plan, folder, export_format, max_shard_size)
        after = export.pop("_model_after")
        stage = {**stage, "load_s": round(loaded.timings["load_s"], 2), "streamed_export": False}
        return _save_manifest(folder, loaded, plan, before, after, export, stage, recipe)


def _check_plan_fits(
    plan: Plan, family: str | None, config: dict[str, Any], source_spec: str, export_format: str
) -> ArchAdapter:
    """Refuse, in one sentence, a plan made for another family or other widths than `config`'s,
    one that removes nothing, or one the export format cannot hold; returns the adapter."""
    shape = plan.shape()  # a plan without the model's widths says so
    adapter = _check_native(config, source_spec, export_format, shape.rotated, "the plan")
    if family is not None and family != adapter.family:
        raise RecipeError(
            f"the plan was made for a {family} model and {source_spec} is a {adapter.family} model"
        )
    dims = Dims.from_config(config).to_dict()
    for key, made_for in (plan.dims or {}).items():
        if dims.get(key) != made_for:
            what = "blocks" if key == "num_blocks" else key
            raise RecipeError(
                f"the plan was made for a model with {made_for} {what} and {source_spec} has {dims.get(key)}"
            )
    if not plan.removed:
        raise RecipeError("the plan removes nothing (inspect marks what to remove only with --amount)")
    if shape.rotated and not plan.tensors:
        raise RecipeError(
            "a plan that rotates the residual stream needs its rotations: give the run folder's hubprune.json "
            "(hubprune-plan.safetensors beside it), not inspect's JSON"
        )
    return adapter


def _prune_streamed(
    source: SourceOptions,
    out_dir: str | Path,
    make_plan: Callable[[Loaded], Plan],
    *,
    check: Callable[[dict[str, Any]], ArchAdapter],
    export_format: str,
    max_shard_size: str | int,
    overwrite: bool,
    recipe: str | None,
    stage: dict[str, Any],
) -> Manifest | None:
    """Plan on the meta-device skeleton (`make_plan`), then export the plan shard by shard:
    the weights are never loaded, and a Hub source downloads its config and index first, then
    only the shards that hold kept tensors. Returns None, having written nothing, when the
    checkpoint cannot be streamed (pickled weights, tensor names or shapes the model does not
    have): the caller loads the model instead."""
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    from hubprune import shard_export
    from hubprune.export import finish_plain

    if source.device is not None:  # unused (nothing is computed), but a typo is still an error
        check_device(source.device)
    start = time.perf_counter()
    try:
        resolved = resolve_source(
            source.spec, allow_pickle=source.allow_pickle, base_model=source.base_model, weights=False
        )
        adapter = check(read_model_config(resolved.local_dir, source.spec))
        weights = weight_map(resolved.local_dir)
        # "auto" is the checkpoint's own dtype, not float32 on a CPU as when loading: nothing is computed.
        dtype = resolve_dtype(source.dtype, "meta")
        if dtype == "auto":
            dtype = shard_export.checkpoint_dtype(resolved.local_dir)
        if weights is None or dtype is None:  # no index (one file), or only the weights say the dtype
            resolved = fetch_weights(resolved, None, allow_pickle=source.allow_pickle)
            weights = weight_map(resolved.local_dir)
            if weights is None:
                raise shard_export.NotStreamable("the checkpoint has no safetensors weights")
            dtype = dtype or shard_export.weights_dtype(resolved.local_dir, weights)
        model = shard_export.skeleton(resolved.local_dir, dtype)
        tokenizer = AutoTokenizer.from_pretrained(
            resolved.local_dir, config=model.config, trust_remote_code=source.trust_remote_code
        )
        loaded = Loaded(resolved, model, tokenizer, adapter, {"load_s": time.perf_counter() - start})
        before = model_cost(model, adapter=adapter)
        start = time.perf_counter()
        plan = make_plan(loaded)
        score_s = time.perf_counter() - start
        why = shard_export.unstreamable_plan(plan.shape(), export_format)
        if why is not None:
            raise shard_export.NotStreamable(why)
        tensors = shard_export.plan_tensors(model, adapter, plan)
        loaded.source = fetch_weights(resolved, tensors.files(weights))
        source_dir = loaded.source.local_dir
        with staged_folder(out_dir, overwrite, source=source_dir) as folder:
            shard_export.export_streamed(
                model, tensors, source_dir, weights, folder, max_shard_size=max_shard_size
            )
            export = finish_plain(folder, tokenizer, source_dir=source_dir, max_shard_size=max_shard_size)
            stage = {  # a caller that scored the plan itself says how long that took
                "load_s": round(loaded.timings["load_s"], 2),
                "score_s": round(score_s, 2),
                "streamed_export": True,
                **stage,
            }
            after = model_cost(model, adapter=adapter)
            export = _plain_record(export, plan, export_format)
            return _save_manifest(folder, loaded, plan, before, after, export, stage, recipe)
    except shard_export.NotStreamable as why:
        logger.info("cannot export %s shard by shard (%s); loading the model", source.spec, why)
        return None
    except SafetensorError as err:
        raise unreadable_weights(source.spec) from err


def _save_manifest(
    folder: Path,
    loaded: Loaded,
    plan: Plan,
    before: dict[str, Any],
    after: dict[str, Any],
    export: dict[str, Any],
    stage: dict[str, Any],
    recipe: str | None,
) -> Manifest:
    """Write `hubprune.json` into the (staging) `folder` and return it."""
    if plan.calibration is not None:  # the manifest is published: a local file is `local:<name>`
        plan.calibration.source = public_text(plan.calibration.source)
    manifest = Manifest(
        source=loaded.source.to_dict(),
        family=loaded.adapter.family,
        plan=plan,
        model_before=before,
        model_after=after,
        export=export,
        stages={"prune": stage},
        recipe=recipe,
    )
    manifest.save(folder)
    return manifest
