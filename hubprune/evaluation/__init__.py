"""The evaluation stage, one job per module: :mod:`~hubprune.evaluation.settings` (what changes a
number), :mod:`~hubprune.evaluation.perplexity` (token NLL and text perplexity),
:mod:`~hubprune.evaluation.lm_eval_runner` (tasks), :mod:`~hubprune.evaluation.cache`,
:mod:`~hubprune.evaluation.report` (``eval/results.json`` and the manifest summary),
:mod:`~hubprune.evaluation.table` and the entry points in :mod:`~hubprune.evaluation.runner`."""

from hubprune.evaluation.lm_eval_runner import run_lm_eval
from hubprune.evaluation.perplexity import nll_sum, perplexity, text_perplexity, token_nll
from hubprune.evaluation.report import (
    EVAL_DIR,
    RESULTS_NAME,
    build_report,
    manifest_summary,
    metric_row,
    validate_report,
    write_report,
)
from hubprune.evaluation.runner import (
    check_model_folder,
    evaluate_model,
    evaluate_model_spec,
    evaluate_run,
)
from hubprune.evaluation.settings import EvalSettings, load_perplexity_text
from hubprune.evaluation.table import format_table

__all__ = [
    "EVAL_DIR",
    "RESULTS_NAME",
    "EvalSettings",
    "build_report",
    "check_model_folder",
    "evaluate_model",
    "evaluate_model_spec",
    "evaluate_run",
    "format_table",
    "load_perplexity_text",
    "manifest_summary",
    "metric_row",
    "nll_sum",
    "perplexity",
    "run_lm_eval",
    "text_perplexity",
    "token_nll",
    "validate_report",
    "write_report",
]
