"""The evaluation stage: lm-eval tasks, perplexity on real text, size/cost and speed, before and after.

:func:`evaluate_run` evaluates the model in a run folder next to its base model (the manifest's
``source.spec``, or ``compare_to``) and, when the folder holds a recovered model, next to the
pruned model it was recovered from (``stages["recover"]["from_run"]``). It writes
``eval/results.json`` (the schema is ``hubprune/schemas/eval_results.schema.json``) and a short
summary into the manifest's ``stages["evaluate"]`` for the card.

* Tasks run through lm-eval's Python API with ``HFLM(pretrained=<model object>)``, so the model
  is scored as loaded, without a second copy on disk. lm-eval's own ``config`` block is kept.
* Perplexity: see :func:`text_perplexity` for windows, stride and BOS handling.
* Each model's numbers (tasks, perplexity, cost; never speed, which must be measured in the
  same session as the model it is compared with) are cached under
  ``hubprune.offline.cache_dir()/eval``, keyed by the source's Hub sha (or a fingerprint of its
  weight files) and every setting that changes a number, so re-runs don't recompute the base.

Per metric the report holds one value per model role ("base", "pruned", "recovered", or
"model" for a folder that is not a run), ``delta`` = value - base and ``retained_pct`` =
100 x value / base (for lower-is-better metrics such as perplexity, 100 x base / value, so
100 % always means "as good as the base" and less means worse).
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import importlib.metadata
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hubprune import __version__, offline
from hubprune.errors import DataError, RecipeError, SourceError
from hubprune.plan import MANIFEST_NAME, Manifest, library_versions
from hubprune.tasks import ResolvedTasks, check_limit, resolve_tasks

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
RESULTS_NAME = "results.json"
REPORT_SCHEMA_VERSION = 1
#: Bump when anything that changes a cached number changes in this module.
CACHE_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "eval_results.schema.json"
ROLES = ("base", "pruned", "recovered", "model")
#: Perplexity text for users with the Hub: WikiText-2 (raw) test split.
DEFAULT_PERPLEXITY_DATASET = ("wikitext", "wikitext-2-raw-v1", "test")
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")


@dataclass
class EvalSettings:
    """Everything that changes an evaluation number; recorded in the report and keys the cache."""

    tasks: list[str]
    tasks_path: list[str] = field(default_factory=list)
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    bootstrap_iters: int = 1000
    perplexity_data: str | None = None
    perplexity_config: str | None = None
    perplexity_split: str | None = None
    text_column: str | None = None
    perplexity_seq_len: int = 512
    perplexity_stride: int | None = None
    perplexity_max_tokens: int = 16384
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def check(self) -> None:
        """Reject impossible settings before any model is loaded."""
        check_limit(self.limit)
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise RecipeError(f"--num-fewshot must be 0 or more, got {self.num_fewshot}")
        if self.batch_size < 1:
            raise RecipeError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.perplexity_seq_len < 2:
            raise RecipeError(
                f"the perplexity sequence length must be at least 2, got {self.perplexity_seq_len}"
            )
        stride = self.perplexity_stride
        if stride is not None and not 1 <= stride <= self.perplexity_seq_len:
            raise RecipeError(
                f"the perplexity stride must be between 1 and the sequence length, got {stride}"
            )
        if self.perplexity_max_tokens < self.perplexity_seq_len:
            raise RecipeError("the perplexity token budget must be at least one sequence long")


# -- perplexity -------------------------------------------------------------------------------


def _perplexity_source(settings: EvalSettings) -> tuple[str, str | None, str]:
    """(spec, config, split): a bare "wikitext" means WikiText-2 raw, test split."""
    spec = settings.perplexity_data or DEFAULT_PERPLEXITY_DATASET[0]
    config, split = settings.perplexity_config, settings.perplexity_split
    if spec == DEFAULT_PERPLEXITY_DATASET[0]:
        config = config or DEFAULT_PERPLEXITY_DATASET[1]
        split = split or DEFAULT_PERPLEXITY_DATASET[2]
    return spec, config, split or "test"


def load_perplexity_text(settings: EvalSettings) -> Any:
    """The documents for perplexity, with provenance (a :class:`hubprune.data.TextSource`)."""
    from hubprune import data

    spec, config, split = _perplexity_source(settings)
    return data.load_texts(spec, config=config, split=split, text_column=settings.text_column)


def text_perplexity(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    seq_len: int = 512,
    stride: int | None = None,
    max_tokens: int = 16384,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Token-level perplexity of `model` on the start of `texts`, with sliding windows.

    The documents (in order) are joined with blank lines, tokenised without special tokens and
    cut at `max_tokens`. Windows of `seq_len` positions start every `stride` tokens (default
    `stride` = `seq_len`: disjoint windows, the cheapest reading; a smaller stride gives each
    scored token at least ``seq_len - stride`` tokens of context). In each window, only tokens
    no earlier window scored are targets, so no token counts twice. When the tokenizer puts BOS
    in front of ordinary input (Llama 3, Gemma), every window starts with BOS, which is context
    and never a target, and holds ``seq_len - 1`` text tokens; otherwise a window's first token
    has nothing before it, so it is context only (with disjoint windows, one token per window
    goes unscored). `seq_len` is capped at the model's ``max_position_embeddings``.
    Perplexity = exp(summed NLL / scored tokens); the result states all of the above.
    """
    import torch
    import torch.nn.functional as F

    from hubprune.data import tokenizer_adds_bos

    stride = stride or seq_len
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and seq_len > max_positions:
        seq_len, stride = max_positions, min(stride, max_positions)
    add_bos = tokenizer_adds_bos(tokenizer)
    body = seq_len - 1 if add_bos else seq_len
    stride = min(stride, body)
    ids: list[int] = []
    used_docs = 0
    for text in texts:
        if len(ids) >= max_tokens:
            break
        piece = ("\n\n" if ids else "") + text
        ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        used_docs += 1
    ids = ids[:max_tokens]
    if len(ids) < 2:
        raise DataError("the perplexity text has fewer than 2 tokens")
    tokens = torch.tensor(ids, dtype=torch.long)
    # windows: (start, end, first scored position); every token after the first is scored once
    windows, scored_until = [], 0 if add_bos else 1
    start = 0
    while scored_until < len(ids):
        end = min(start + body, len(ids))
        windows.append((start, end, scored_until))
        scored_until = end
        if end == len(ids):
            break
        start += stride
        if start + body > len(ids):  # last window: full length, ending at the last token
            start = max(0, len(ids) - body)
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    prefix = [tokenizer.bos_token_id] if add_bos else []
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:
        groups.setdefault(w[1] - w[0], []).append(w)
    with torch.no_grad():
        for group in groups.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                batch = torch.stack(
                    [torch.cat([torch.tensor(prefix, dtype=torch.long), tokens[s:e]]) for s, e, _ in chunk]
                )
                batch = batch.to(device)
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                losses = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
                for row, (s, _e, first) in enumerate(chunk):
                    # stream position p is predicted in loss column p - s - 1 + len(prefix); a
                    # window's first token without BOS has nothing before it and stays context
                    begin = max(first - s - 1 + len(prefix), 0)
                    nll += float(losses[row, begin:].sum())
                    count += losses.shape[1] - begin
    return {
        "perplexity": math.exp(nll / count),
        "nll": nll,
        "scored_tokens": count,
        "seq_len": seq_len,
        "stride": stride,
        "windows": len(windows),
        "bos_prepended": add_bos,
        "documents_used": used_docs,
        "max_tokens": max_tokens,
    }


# -- one model --------------------------------------------------------------------------------


def _parse_metrics(raw: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """lm-eval's ``results`` ({task: {"acc,none": v, "acc_stderr,none": s}}) as
    {task: {metric: {"value", "stderr", "higher_is_better"}}}; a filter other than "none"
    stays in the metric name ("exact_match,strict-match")."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    hib = raw.get("higher_is_better", {})
    for task, values in raw.get("results", {}).items():
        metrics: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if "," not in key or "_stderr" in key:
                continue
            name, _, filt = key.partition(",")
            label = name if filt == "none" else key
            stderr = values.get(f"{name}_stderr,{filt}")
            metrics[label] = {
                "value": value if isinstance(value, (int, float)) else None,
                "stderr": stderr if isinstance(stderr, (int, float)) else None,
                "higher_is_better": bool(hib.get(task, {}).get(name, True)),
            }
        out[task] = metrics
    return out


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    resolved: ResolvedTasks,
    settings: EvalSettings,
    *,
    log_samples: bool = False,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on an in-memory model; returns lm-eval's raw result dict.

    All four lm-eval seeds (python, numpy, torch, few-shot sampling) are set to ``settings.seed``.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
    raw = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(resolved.names),
        task_manager=resolved.manager,
        limit=settings.limit,
        num_fewshot=settings.num_fewshot,
        bootstrap_iters=settings.bootstrap_iters,
        log_samples=log_samples,
        random_seed=settings.seed,
        numpy_random_seed=settings.seed,
        torch_random_seed=settings.seed,
        fewshot_random_seed=settings.seed,
    )
    if raw is None:  # only non-zero ranks of a distributed run get None
        raise RuntimeError("lm-eval returned no results")
    raw["config"]["batch_size"] = settings.batch_size
    raw["config"]["device"] = str(next(model.parameters()).device)
    return raw


def _jsonable(value: Any) -> Any:
    """lm-eval configs may hold functions (``!function``) and tuples; keep JSON-safe text."""
    return json.loads(json.dumps(value, default=str))


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
        "metrics": _parse_metrics(raw),
        "task_versions": _jsonable(raw.get("versions", {})),
        "n_shot": _jsonable(raw.get("n-shot", {})),
        "n_samples": _jsonable(raw.get("n-samples", {})),
        "lm_eval": {
            "config": _jsonable(raw.get("config", {})),
            "configs": _jsonable(raw.get("configs", {})),
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
        start = time.perf_counter()
        result["perplexity"] = text_perplexity(
            model,
            tokenizer,
            perplexity_text.texts,
            seq_len=settings.perplexity_seq_len,
            stride=settings.perplexity_stride,
            max_tokens=settings.perplexity_max_tokens,
            batch_size=settings.batch_size,
        )
        result["perplexity"]["seconds"] = round(time.perf_counter() - start, 2)
    if speed:
        from hubprune.speed import measure_speed

        result["speed"] = measure_speed(model, seed=settings.seed, **(speed_options or {}))
    return result


# -- loading and caching ----------------------------------------------------------------------


def folder_fingerprint(folder: Path) -> str:
    """SHA-256 over the names, sizes and mtimes of a model folder's config and weight files:
    cheap, and it changes whenever the weights are rewritten."""
    digest = hashlib.sha256()
    files = {folder / "config.json", *(p for g in WEIGHT_GLOBS for p in folder.glob(g))}
    for path in sorted(p for p in files if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_model_folder(folder: Path, what: str = "model folder") -> None:
    """Raise SourceError unless `folder` holds a config and weights."""
    if not folder.is_dir():
        raise SourceError(f"{what} {folder} does not exist")
    has_weights = any(any(folder.glob(g)) for g in WEIGHT_GLOBS[:2])
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
    fingerprint = f"hub:{source.base_model}@{source.sha}" if source.sha else folder_fingerprint(folder)
    info = {"spec": spec, "kind": source.kind, "base_model": source.base_model, "sha": source.sha}
    if source.kind != "hub":
        info["path"] = str(folder)
    return _Candidate(role, spec, folder, source, fingerprint, cacheable, info)


def _settings_key(settings: EvalSettings, resolved: ResolvedTasks, text: Any) -> dict[str, Any]:
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


def _cache_path(candidate: _Candidate, key: dict[str, Any], device: str) -> Path:
    blob = json.dumps({"model": candidate.fingerprint, "settings": key, "device": device}, sort_keys=True)
    return offline.cache_dir() / "eval" / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json"


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
    key = _settings_key(settings, resolved, text)
    zeroed = zero_filled_units(plan, export_format)
    if zeroed:  # the cost section reads the plan; a block-only plan changes nothing cached
        key["zero_filled"] = [u.name for u in zeroed]
    cache = _cache_path(candidate, key, device) if candidate.cacheable and use_cache else None
    cached = None
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cached = None
    if cached is not None and not speed:
        log.info("using cached %s results from %s", candidate.role, cache)
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
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".{time.time_ns()}.tmp")
                tmp.write_text(json.dumps({**result, "speed": None}, sort_keys=True), encoding="utf-8")
                tmp.replace(cache)
    finally:
        del model
        gc.collect()
    result["model"] = candidate.info
    return result


# -- the report -------------------------------------------------------------------------------


def _row(
    values: dict[str, float | None], higher_is_better: bool, stderr: dict[str, Any] | None = None
) -> dict:
    """One metric across roles, with delta and retained % computed from these very values."""
    base = values.get("base")
    row: dict[str, Any] = dict(values)
    row["higher_is_better"] = higher_is_better
    row["delta"] = {}
    row["retained_pct"] = {}
    for role, value in values.items():
        if role == "base":
            continue
        ok = isinstance(base, (int, float)) and isinstance(value, (int, float))
        row["delta"][role] = value - base if ok else None
        if not ok or (base == 0 if higher_is_better else value == 0):
            row["retained_pct"][role] = None
        else:
            row["retained_pct"][role] = 100 * (value / base if higher_is_better else base / value)
    if stderr is not None:
        row["stderr"] = stderr
    return row


def build_report(
    results: dict[str, dict[str, Any]],
    settings: EvalSettings,
    resolved: ResolvedTasks,
    *,
    text: Any = None,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Assemble ``eval/results.json`` from per-role results (role -> :func:`evaluate_model` dict)."""
    from hubprune.cost import cost_change

    roles = [r for r in ROLES if r in results]
    final = next(r for r in ("recovered", "pruned", "model", "base") if r in results)
    first = results[roles[-1]]
    tasks: dict[str, Any] = {}
    for task, metrics in first["metrics"].items():
        tasks[task] = {}
        for metric, entry in metrics.items():
            values = {r: results[r]["metrics"].get(task, {}).get(metric, {}).get("value") for r in roles}
            stderr = {r: results[r]["metrics"].get(task, {}).get(metric, {}).get("stderr") for r in roles}
            tasks[task][metric] = _row(values, entry["higher_is_better"], stderr)
    perplexity = None
    if all(results[r].get("perplexity") for r in roles):
        ref = results[roles[-1]]["perplexity"]
        spec, config, split = _perplexity_source(settings)
        perplexity = {
            "data": {
                "spec": spec,
                "kind": getattr(text, "kind", None),
                "config": config if getattr(text, "kind", None) == "hub-dataset" else None,
                "split": split if getattr(text, "kind", None) == "hub-dataset" else None,
                "revision": getattr(text, "revision", None),
                "text_column": getattr(text, "text_column", None),
                "file_sha256": getattr(text, "file_sha256", None),
            },
            **{
                k: ref[k]
                for k in ("seq_len", "stride", "bos_prepended", "scored_tokens", "windows", "max_tokens")
            },
            "metric": _row({r: results[r]["perplexity"]["perplexity"] for r in roles}, False),
        }
    cost = {r: results[r]["cost"] for r in roles if results[r].get("cost")}
    if "base" in cost:
        cost["change"] = {r: cost_change(cost["base"], cost[r]) for r in roles if r != "base" and r in cost}
    speed = {r: results[r]["speed"] for r in roles if results[r].get("speed")} or None
    ref = results[final]
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "hubprune_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run_dir) if run_dir is not None else None,
        "roles": roles,
        "final": final,
        "models": {r: {**results[r]["model"], "cached": results[r].get("cached", False)} for r in roles},
        "settings": {
            "tasks_requested": resolved.requested,
            "tasks": resolved.names,
            "tasks_path": settings.tasks_path,
            "task_sources": resolved.sources,
            "task_versions": ref["task_versions"],
            "n_shot": ref["n_shot"],
            "n_samples": ref["n_samples"],
            "num_fewshot": settings.num_fewshot,
            "limit": settings.limit,
            "batch_size": settings.batch_size,
            "dtype": ref["dtype"],
            "device": ref["device"],
            "device_name": _device_name(ref["device"]),
            "seed": settings.seed,
            "bootstrap_iters": settings.bootstrap_iters,
            "lm_eval_version": importlib.metadata.version("lm-eval"),
            "offline_pack": resolved.pack,
            "versions": library_versions(),
        },
        "tasks": tasks,
        "perplexity": perplexity,
        "cost": cost or None,
        "speed": speed,
        "lm_eval": {r: results[r]["lm_eval"] for r in roles if results[r]["lm_eval"]},
    }
    return _jsonable(report)


def _device_name(device: str) -> str:
    from hubprune.speed import device_name

    return device_name(device)


def validate_report(report: dict[str, Any]) -> None:
    """Check `report` against the JSON schema (needs the ``jsonschema`` package)."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.validate(report, schema)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write sorted, indented JSON in one rename, so a reader (or a kill) never leaves half a report;
    temporary files of killed writers are removed (:func:`hubprune.rundir.atomic_write_text`)."""
    from hubprune.rundir import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def main_metric(metrics: dict[str, Any]) -> str:
    """The headline metric of a task: acc_norm, then acc, then the first one."""
    for name in ("acc_norm", "acc", "exact_match", "word_perplexity"):
        if name in metrics:
            return name
    return next(iter(metrics))


def manifest_summary(report: dict[str, Any], results_path: str) -> dict[str, Any]:
    """What the card shows: the headline metric of each task, perplexity, the settings in brief."""
    tasks = {}
    for task, metrics in report["tasks"].items():
        if not metrics:
            continue
        name = main_metric(metrics)
        row = metrics[name]
        tasks[task] = {
            "metric": name,
            **{r: row.get(r) for r in report["roles"]},
            "retained_pct": row["retained_pct"],
        }
    ppl = report.get("perplexity")
    return {
        "results": results_path,
        "roles": report["roles"],
        "final": report["final"],
        "tasks": tasks,
        "perplexity": None
        if ppl is None
        else {
            "data": ppl["data"]["spec"],
            "seq_len": ppl["seq_len"],
            **{r: ppl["metric"].get(r) for r in report["roles"]},
        },
        "limit": report["settings"]["limit"],
        "num_fewshot": report["settings"]["num_fewshot"],
        "lm_eval_version": report["settings"]["lm_eval_version"],
        "device": report["settings"]["device_name"],
        "created_at": report["created_at"],
    }


# -- entry points -----------------------------------------------------------------------------


def _settings(
    tasks: list[str],
    tasks_path: list[str] | None,
    limit: int | None,
    num_fewshot: int | None,
    batch_size: int,
    perplexity_data: str | None,
    seed: int,
    options: dict[str, Any],
) -> EvalSettings:
    known = {f for f in EvalSettings.__dataclass_fields__}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown evaluation option(s): {', '.join(unknown)}")
    settings = EvalSettings(
        tasks=list(tasks),
        tasks_path=list(tasks_path or []),
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        perplexity_data=perplexity_data,
        seed=seed,
        **options,
    )
    settings.check()
    return settings


def _run_roles(
    candidates: list[_Candidate],
    settings: EvalSettings,
    *,
    perplexity: bool = True,
    speed: bool = False,
    speed_options: dict[str, Any] | None = None,
    plan: Any = None,
    export_format: str | None = None,
    use_cache: bool = True,
) -> tuple[dict[str, dict[str, Any]], ResolvedTasks, Any]:
    if not settings.tasks and not perplexity and not speed:
        raise RecipeError("nothing to evaluate: give tasks, or keep perplexity on, or ask for speed")
    if settings.tasks:
        resolved = resolve_tasks(settings.tasks, tasks_path=settings.tasks_path)
    else:  # perplexity / cost / speed only
        resolved = ResolvedTasks(None, [], [], {}, None)
    text = load_perplexity_text(settings) if perplexity else None
    results = {}
    for candidate in candidates:
        with_plan = candidate.role in ("pruned", "recovered")
        results[candidate.role] = _evaluate_candidate(
            candidate,
            resolved,
            settings,
            text,
            speed=speed,
            speed_options=speed_options,
            plan=plan if with_plan else None,
            export_format=export_format if with_plan else None,
            use_cache=use_cache,
        )
    return results, resolved, text


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
    named by ``stages["recover"]["from_run"]``. ``perplexity=False`` skips perplexity; further
    keyword options are :class:`EvalSettings` fields (``dtype``, ``device``, ``perplexity_seq_len``,
    ``perplexity_max_tokens``, ...). Returns the report.

    Raises:
        RecipeError: an unknown task, a limit <= 0, or another impossible setting.
        SourceError: the folder has no model (or no ``hubprune.json``).
        DataError: a task file names a relative data path missing from its folder, or the
            perplexity text is unusable.
    """
    settings = _settings(tasks, tasks_path, limit, num_fewshot, batch_size, perplexity_data, seed, options)
    run = Path(run_dir)
    check_model_folder(run, "run folder")
    if not (run / MANIFEST_NAME).is_file():
        raise SourceError(f"{run} has no {MANIFEST_NAME}, so it is not a run folder; use evaluate_model_spec")
    manifest = Manifest.load(run)
    base_spec = compare_to or manifest.source.get("spec")
    if not base_spec:
        raise SourceError(f"{run}/{MANIFEST_NAME} names no source model; pass compare_to")
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
    results, resolved, text = _run_roles(
        candidates,
        settings,
        perplexity=perplexity,
        speed=speed,
        speed_options=speed_options,
        plan=manifest.plan,
        export_format=export_format,
        use_cache=use_cache,
    )
    report = build_report(results, settings, resolved, text=text, run_dir=run)
    write_report(report, run / EVAL_DIR / RESULTS_NAME)
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
    run_options = {
        k: kwargs.pop(k) for k in ("perplexity", "speed", "speed_options", "use_cache") if k in kwargs
    }
    settings = _settings(
        tasks,
        kwargs.pop("tasks_path", None),
        kwargs.pop("limit", None),
        kwargs.pop("num_fewshot", None),
        kwargs.pop("batch_size", 8),
        kwargs.pop("perplexity_data", None),
        kwargs.pop("seed", 0),
        kwargs,
    )
    candidates = []
    if compare_to:
        candidates.append(_resolve("base", compare_to, settings, cacheable=True))
    candidates.append(_resolve("model", spec, settings, cacheable=True, base_model=base_model))
    results, resolved, text = _run_roles(candidates, settings, **run_options)
    report = build_report(results, settings, resolved, text=text)
    if output is not None:
        write_report(report, output)
    return report


# -- the table --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _human(n: Any) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_table(report: dict[str, Any]) -> str:
    """A readable before/after table: tasks, perplexity, size and cost, speed."""
    roles = report["roles"]
    others = [r for r in roles if r != "base"]
    head = ["task", "metric", *roles]
    if "base" in roles:
        head += [f"delta {r}" if len(others) > 1 else "delta" for r in others]
        head += [f"retained {r}" if len(others) > 1 else "retained" for r in others]
    rows = []

    def add(task: str, metric: str, row: dict[str, Any]) -> None:
        line = [task, metric, *(_fmt(row.get(r)) for r in roles)]
        if "base" in roles:
            line += [_fmt(row["delta"].get(r)) for r in others]
            line += [
                "-" if row["retained_pct"].get(r) is None else f"{row['retained_pct'][r]:.1f}%"
                for r in others
            ]
        rows.append(line)

    for task, metrics in report["tasks"].items():
        for metric, row in metrics.items():
            add(task, metric, row)
    ppl = report.get("perplexity")
    if ppl:
        add(f"perplexity {ppl['data']['spec']}", f"ppl@{ppl['seq_len']}", ppl["metric"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in [head, *rows]
    ]
    cost = report.get("cost") or {}
    if cost:
        lines.append("")
        fields = [
            ("parameters", "params_total"),
            ("non-embedding parameters", "params_non_embedding"),
            ("weights on disk (bytes)", "bytes_on_disk"),
            ("FLOPs/token", "flops_per_token"),
            ("KV cache bytes/token", "kv_cache_bytes_per_token"),
        ]
        present = [r for r in roles if r in cost]
        lines.append("  ".join(["size and cost".ljust(26), *(r.rjust(10) for r in present)]))
        for label, key in fields:
            lines.append("  ".join([label.ljust(26), *(_human(cost[r].get(key)).rjust(10) for r in present)]))
        for r in present:
            if cost[r].get("zero_filled"):
                lines.append(f"note ({r}): {cost[r]['zero_filled']['note']}")
    speed = report.get("speed") or {}
    if speed:
        lines.append("")
        some = next(iter(speed.values()))
        lines.append(f"speed on {some['device_name']} ({some['dtype']}, median of {some['repeats']} runs)")
        for r, s in speed.items():
            lines.append(
                f"  {r:<10} prefill {s['prefill_tokens_per_s']:>10.1f} tok/s   decode {s['decode_tokens_per_s']:>8.1f} tok/s"
            )
    settings = report["settings"]
    lines.append("")
    lines.append(
        f"lm-eval {settings['lm_eval_version']}, limit {settings['limit']}, "
        f"n-shot {','.join(map(str, sorted(set(settings['n_shot'].values())))) or '-'}, "
        f"batch {settings['batch_size']}, {settings['dtype']} on {settings['device']}, seed {settings['seed']}"
    )
    return "\n".join(lines)
