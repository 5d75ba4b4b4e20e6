"""The report: ``eval/results.json`` (schema ``hubprune/schemas/eval_results.schema.json``) and
its summary in the manifest's ``stages["evaluate"]`` for the card.

Per metric the report holds one value per model role ("base", "pruned", "recovered", or
"model" for a folder that is not a run), ``delta`` = value - base and ``retained_pct`` =
100 x value / base (for lower-is-better metrics such as perplexity, 100 x base / value, so
100 % always means "as good as the base" and less means worse).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from hubprune import __version__
from hubprune.evaluation.lm_eval_runner import jsonable
from hubprune.evaluation.settings import EvalSettings, perplexity_source
from hubprune.plan import library_versions
from hubprune.tasks import ResolvedTasks

EVAL_DIR = "eval"
RESULTS_NAME = "results.json"
REPORT_SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "eval_results.schema.json"
ROLES = ("base", "pruned", "recovered", "model")


def metric_row(
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
            tasks[task][metric] = metric_row(values, entry["higher_is_better"], stderr)
    perplexity = None
    if all(results[r].get("perplexity") for r in roles):
        ref = results[roles[-1]]["perplexity"]
        spec, config, split = perplexity_source(settings)
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
            "metric": metric_row({r: results[r]["perplexity"]["perplexity"] for r in roles}, False),
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
    return jsonable(report)


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
