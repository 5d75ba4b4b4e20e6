"""The evaluation stage: lm-eval tasks, perplexity on real text, size/cost and speed, before and after.

:func:`evaluate_run` evaluates the model in a run folder next to its base model (the manifest's
``source.spec``, or ``compare_to``) and, when the folder holds a recovered model, next to the
pruned model it was recovered from (``stages["recover"]["from_run"]``). It writes
``eval/results.json`` and a short summary into the manifest's ``stages["evaluate"]`` for the card
(:mod:`hubprune.evaluation.report`).

* Tasks run through lm-eval's Python API with ``HFLM(pretrained=<model object>)``, so the model
  is scored as loaded, without a second copy on disk (:mod:`hubprune.evaluation.lm_eval_runner`).
* Perplexity: see :func:`hubprune.evaluation.perplexity.text_perplexity` for windows, stride and
  BOS handling. The text is loaded and checked before any model.
* Each model's numbers (tasks, perplexity, cost; never speed, which must be measured in the
  same session as the model it is compared with) are cached (:mod:`hubprune.evaluation.cache`),
  so re-runs don't recompute the base.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubprune.errors import ExportError, RecipeError, SourceError
from hubprune.evaluation import cache
from hubprune.evaluation.lm_eval_runner import jsonable, parse_metrics, run_lm_eval
from hubprune.evaluation.report import EVAL_DIR, RESULTS_NAME, build_report, manifest_summary, write_report
from hubprune.evaluation.settings import (
    EvalSettings,
    default_offline_text,
    load_perplexity_text,
    make_settings,
)
from hubprune.plan import MANIFEST_NAME, Manifest
from hubprune.redact import public_record
from hubprune.tasks import ResolvedTasks, resolve_tasks

log = logging.getLogger(__name__)


def evaluate_model(
    model: Any,
    tokenizer: Any,
    resolved: ResolvedTasks,
    settings: EvalSettings,
    *,
    perplexity_text: Any = None,
    cost: dict[str, Any] | None = None,
    speed: bool = False,
    speed_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tasks (none when `resolved` names none), perplexity, cost and (optionally) speed of one
    loaded model."""
    start = time.perf_counter()
    raw = run_lm_eval(model, tokenizer, resolved, settings) if resolved.names else {}
    result: dict[str, Any] = {
        "metrics": parse_metrics(raw),
        "task_versions": jsonable(raw.get("versions", {})),
        "n_shot": jsonable(raw.get("n-shot", {})),
        "n_samples": jsonable(raw.get("n-samples", {})),
        "lm_eval": {
            "config": jsonable(raw.get("config", {})),
            "configs": jsonable(raw.get("configs", {})),
            "git_hash": raw.get("git_hash"),
            "date": raw.get("date"),
            "lm_eval_version": raw.get("lm_eval_version"),
            "transformers_version": raw.get("transformers_version"),
        }
        if raw
        else None,
        "tasks_s": round(time.perf_counter() - start, 2),
        "perplexity": None,
        "cost": cost,
        "speed": None,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
    }
    if perplexity_text is not None:
        from hubprune.evaluation.perplexity import text_perplexity

        start = time.perf_counter()
        result["perplexity"] = text_perplexity(
            model,
            tokenizer,
            perplexity_text.texts,
            seq_len=settings.perplexity_seq_len,
            stride=settings.perplexity_stride,
            max_tokens=settings.perplexity_max_tokens,
            batch_size=settings.batch_size,
            desc="Perplexity windows",
        )
        result["perplexity"]["seconds"] = round(time.perf_counter() - start, 2)
    if speed:
        from hubprune.speed import measure_speed

        result["speed"] = measure_speed(model, seed=settings.seed, **(speed_options or {}))
    return result


def check_model_folder(folder: Path, what: str = "model folder") -> None:
    """Raise SourceError unless `folder` holds a config and weights."""
    if not folder.is_dir():
        raise SourceError(f"{what} {folder} does not exist")
    has_weights = any(any(folder.glob(g)) for g in cache.WEIGHT_GLOBS[:2])
    if not (folder / "config.json").is_file() or not has_weights:
        missing = "config.json" if not (folder / "config.json").is_file() else "weights (*.safetensors)"
        raise SourceError(
            f"{what} {folder} has no model ({missing} is missing); prune or recover into it first, "
            "or point to a folder that holds one"
        )


@dataclass
class _Candidate:
    """A model to evaluate: where it comes from and how to key its cached results."""

    role: str
    spec: str
    folder: Path | None = None
    source: Any = None
    fingerprint: str | None = None
    cacheable: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def _resolve(
    role: str, spec: str, settings: EvalSettings, *, cacheable: bool, base_model: str | None = None
) -> _Candidate:
    from hubprune.source import resolve_source

    source = resolve_source(spec, allow_pickle=settings.allow_pickle, base_model=base_model)
    folder = Path(source.local_dir)
    if source.kind != "hub":
        check_model_folder(folder)
    fingerprint = f"hub:{source.base_model}@{source.sha}" if source.sha else cache.folder_fingerprint(folder)
    info = {"spec": spec, "kind": source.kind, "base_model": source.base_model, "sha": source.sha}
    if source.kind != "hub":
        info["path"] = str(folder)
    return _Candidate(role, spec, folder, source, fingerprint, cacheable, info)


def _evaluate_candidate(
    candidate: _Candidate,
    resolved: ResolvedTasks,
    settings: EvalSettings,
    text: Any,
    *,
    speed: bool,
    speed_options: dict[str, Any] | None,
    plan: Any = None,
    export_format: str | None = None,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Load (unless cached), evaluate, free the model; a cacheable result is read from / written
    to the cache (without speed, which is always measured anew)."""
    from hubprune.arch import adapter_for
    from hubprune.cost import model_cost, zero_filled_units
    from hubprune.source import default_device, load_model

    device = settings.device or default_device()
    key = cache.settings_key(settings, resolved, text)
    zeroed = zero_filled_units(plan, export_format)
    if zeroed:  # the cost section reads the plan; a block-only plan changes nothing cached
        key["zero_filled"] = [u.name for u in zeroed]
    path = cache.cache_path(candidate.fingerprint, key, device) if candidate.cacheable and use_cache else None
    cached = cache.read_cached(path) if path is not None else None
    if cached is not None and not speed:
        log.info("using cached %s results from %s", candidate.role, path)
        return {**cached, "cached": True, "model": candidate.info}
    model, tokenizer = load_model(
        candidate.source, dtype=settings.dtype, device=device, trust_remote_code=settings.trust_remote_code
    )
    try:
        adapter = adapter_for(model)
        if cached is not None:  # cached numbers, fresh speed
            from hubprune.speed import measure_speed

            result = {**cached, "cached": True}
            result["speed"] = measure_speed(model, seed=settings.seed, **(speed_options or {}))
        else:
            cost = model_cost(
                model, adapter=adapter, folder=candidate.folder, plan=plan, export_format=export_format
            )
            result = evaluate_model(
                model,
                tokenizer,
                resolved,
                settings,
                perplexity_text=text,
                cost=cost,
                speed=speed,
                speed_options=speed_options,
            )
            result["cached"] = False
            if path is not None:
                cache.write_cached(path, result)
    finally:
        del model
        gc.collect()
    result["model"] = candidate.info
    return result


# -- entry points -----------------------------------------------------------------------------


@dataclass
class _Inputs:
    """What every model is evaluated on, loaded and checked before any model is."""

    resolved: ResolvedTasks
    text: Any
    default_text: str | None


def _inputs(settings: EvalSettings, model_specs: list[str], *, perplexity: bool, speed: bool) -> _Inputs:
    """Resolve the tasks and load the perplexity text (an ``offline:`` model with no text named
    gets :data:`~hubprune.evaluation.settings.OFFLINE_PERPLEXITY_TEXT`)."""
    if not settings.tasks and not perplexity and not speed:
        raise RecipeError("nothing to evaluate: give tasks, or keep perplexity on, or ask for speed")
    if settings.tasks:
        resolved = resolve_tasks(settings.tasks, tasks_path=settings.tasks_path)
    else:  # perplexity / cost / speed only
        resolved = ResolvedTasks(None, [], [], {}, None)
    default_text = default_offline_text(settings, model_specs) if perplexity else None
    text = load_perplexity_text(settings) if perplexity else None
    return _Inputs(resolved, text, default_text)


def _run_roles(
    candidates: list[_Candidate],
    settings: EvalSettings,
    inputs: _Inputs,
    *,
    speed: bool = False,
    speed_options: dict[str, Any] | None = None,
    plan: Any = None,
    export_format: str | None = None,
    use_cache: bool = True,
) -> dict[str, dict[str, Any]]:
    results = {}
    for candidate in candidates:
        with_plan = candidate.role in ("pruned", "recovered")
        results[candidate.role] = _evaluate_candidate(
            candidate,
            inputs.resolved,
            settings,
            inputs.text,
            speed=speed,
            speed_options=speed_options,
            plan=plan if with_plan else None,
            export_format=export_format if with_plan else None,
            use_cache=use_cache,
        )
    return results


def _from_run(run_dir: Path, manifest: Manifest) -> Path | None:
    """The folder a recovered model was recovered from, if the manifest names one that exists."""
    recover = manifest.stages.get("recover")
    if not isinstance(recover, dict) or not recover.get("from_run"):
        return None
    raw = Path(str(recover["from_run"])).expanduser()
    for path in (raw, run_dir / raw, run_dir.parent / raw) if not raw.is_absolute() else (raw,):
        if (path / "config.json").is_file():
            return path
    log.warning("the recovered model's source run %s was not found; the pruned column stays empty", raw)
    return None


def _write_or_keep(report: dict[str, Any], path: Path) -> None:
    """Write the report; when the run folder cannot take it (read-only, full), the results are
    not thrown away: they go to a temporary file that the error names."""
    try:
        write_report(report, path)
    except (ExportError, OSError) as err:
        import tempfile

        kept = Path(tempfile.mkstemp(prefix="hubprune-eval-", suffix=".json")[1])
        write_report(report, kept)
        raise ExportError(f"{err}; the evaluation results were saved to {kept} instead") from err


def _report(
    results: dict[str, dict[str, Any]], settings: EvalSettings, inputs: _Inputs, run_dir: Path | None = None
) -> dict[str, Any]:
    report = build_report(results, settings, inputs.resolved, text=inputs.text, run_dir=run_dir)
    if report["perplexity"] is not None and inputs.default_text is not None:
        report["perplexity"]["data"]["chosen"] = (
            "default for an offline model (choose with --perplexity-data)"
        )
    return public_record(report)  # it is published with the run folder: no local paths


def evaluate_run(
    run_dir: str | Path,
    *,
    tasks: list[str],
    tasks_path: list[str] | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    perplexity_data: str | None = None,
    speed: bool = False,
    compare_to: str | None = None,
    seed: int = 0,
    perplexity: bool = True,
    speed_options: dict[str, Any] | None = None,
    use_cache: bool = True,
    write_manifest: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate the model in a run folder against its base and write ``eval/results.json``.

    The base is ``compare_to`` or the manifest's ``source.spec`` (resolved and loaded through
    :mod:`hubprune.source`; its results are cached). When the manifest has a ``recover`` stage,
    the folder's model is the recovered one and the pruned numbers come from the run folder
    named by ``stages["recover"]["from_run"]``. ``perplexity=False`` skips perplexity; without
    `perplexity_data`, an ``offline:`` base is measured on offline text and any other on
    WikiText-2 from the Hub. Further keyword options are :class:`EvalSettings` fields
    (``dtype``, ``device``, ``perplexity_seq_len``, ``perplexity_max_tokens``, ...). Returns the report.

    Raises:
        RecipeError: an unknown task, a limit <= 0, or another impossible setting.
        SourceError: the folder has no model (or no ``hubprune.json``).
        HubUnreachableError: the perplexity text is a Hub dataset, and the Hub is unreachable.
        DataError: a task file names a relative data path missing from its folder, or the
            perplexity text is unusable.
    """
    settings = make_settings(
        tasks, tasks_path, limit, num_fewshot, batch_size, perplexity_data, seed, options
    )
    run = Path(run_dir)
    check_model_folder(run, "run folder")
    if not (run / MANIFEST_NAME).is_file():
        raise SourceError(f"{run} has no {MANIFEST_NAME}, so it is not a run folder; use evaluate_model_spec")
    manifest = Manifest.load(run)
    base_spec = compare_to or manifest.source.get("spec")
    if not base_spec:
        raise SourceError(f"{run}/{MANIFEST_NAME} names no source model; pass compare_to")
    inputs = _inputs(settings, [base_spec], perplexity=perplexity, speed=speed)
    recovered = "recover" in manifest.stages
    candidates = [
        _resolve(
            "base",
            base_spec,
            settings,
            cacheable=True,
            base_model=None if compare_to else manifest.source.get("base_model"),
        )
    ]
    if recovered:
        source_run = _from_run(run, manifest)
        if source_run is not None:
            candidates.append(_resolve("pruned", str(source_run), settings, cacheable=True))
    candidates.append(_resolve("recovered" if recovered else "pruned", str(run), settings, cacheable=True))
    export_format = (manifest.export or {}).get("format")
    results = _run_roles(
        candidates,
        settings,
        inputs,
        speed=speed,
        speed_options=speed_options,
        plan=manifest.plan,
        export_format=export_format,
        use_cache=use_cache,
    )
    report = _report(results, settings, inputs, run)
    _write_or_keep(report, run / EVAL_DIR / RESULTS_NAME)
    if write_manifest:
        manifest = Manifest.load(run)  # re-read: another stage may have written meanwhile
        manifest.stages["evaluate"] = manifest_summary(report, f"{EVAL_DIR}/{RESULTS_NAME}")
        manifest.save(run)
    return report


def evaluate_model_spec(
    spec: str,
    *,
    tasks: list[str],
    compare_to: str | None = None,
    output: str | Path | None = None,
    base_model: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate any model (Hub id, folder, GGUF, ``offline:NAME``) that is not a run folder, as
    role "model", optionally next to ``compare_to`` as role "base"; writes the report to
    `output` when given; `base_model` is the Hub id recorded for a local folder or GGUF file.
    Other keyword arguments are those of :func:`evaluate_run`."""
    run_options = {k: kwargs.pop(k) for k in ("speed", "speed_options", "use_cache") if k in kwargs}
    perplexity = kwargs.pop("perplexity", True)
    settings = make_settings(
        tasks,
        kwargs.pop("tasks_path", None),
        kwargs.pop("limit", None),
        kwargs.pop("num_fewshot", None),
        kwargs.pop("batch_size", 8),
        kwargs.pop("perplexity_data", None),
        kwargs.pop("seed", 0),
        kwargs,
    )
    specs = [spec, *([compare_to] if compare_to else [])]
    inputs = _inputs(settings, specs, perplexity=perplexity, speed=run_options.get("speed", False))
    candidates = []
    if compare_to:
        candidates.append(_resolve("base", compare_to, settings, cacheable=True))
    candidates.append(_resolve("model", spec, settings, cacheable=True, base_model=base_model))
    results = _run_roles(candidates, settings, inputs, **run_options)
    report = _report(results, settings, inputs)
    if output is not None:
        write_report(report, output)
    return report
