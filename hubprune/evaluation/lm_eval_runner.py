"""lm-eval tasks on an in-memory model: run ``simple_evaluate`` and read its results."""

from __future__ import annotations

import json
from typing import Any

from hubprune.evaluation.settings import EvalSettings
from hubprune.tasks import ResolvedTasks


def parse_metrics(raw: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
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


def jsonable(value: Any) -> Any:
    """lm-eval configs may hold functions (``!function``) and tuples; keep JSON-safe text."""
    return json.loads(json.dumps(value, default=str))
