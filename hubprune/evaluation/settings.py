"""Evaluation settings: everything that changes a number, and which perplexity text they name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hubprune import offline
from hubprune.errors import RecipeError
from hubprune.tasks import check_limit

#: Perplexity text for users with the Hub: WikiText-2 (raw) test split.
DEFAULT_PERPLEXITY_DATASET = ("wikitext", "wikitext-2-raw-v1", "test")
#: Perplexity text when the evaluated models come from ``offline:`` names: no Hub needed.
OFFLINE_PERPLEXITY_TEXT = f"{offline.PREFIX}xsum"


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


def make_settings(
    tasks: list[str],
    tasks_path: list[str] | None,
    limit: int | None,
    num_fewshot: int | None,
    batch_size: int,
    perplexity_data: str | None,
    seed: int,
    options: dict[str, Any],
) -> EvalSettings:
    """Checked settings from the entry points' arguments; unknown options are a TypeError."""
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


def default_offline_text(settings: EvalSettings, model_specs: list[str]) -> str | None:
    """Choose the offline perplexity text when none is named and a model is an ``offline:`` one,
    so an offline run is evaluated without the Hub; returns the text chosen (else None)."""
    if settings.perplexity_data is not None or not any(s.startswith(offline.PREFIX) for s in model_specs):
        return None
    settings.perplexity_data = OFFLINE_PERPLEXITY_TEXT
    return OFFLINE_PERPLEXITY_TEXT


def perplexity_source(settings: EvalSettings) -> tuple[str, str | None, str]:
    """(spec, config, split): a bare "wikitext" means WikiText-2 raw, test split."""
    spec = settings.perplexity_data or DEFAULT_PERPLEXITY_DATASET[0]
    config, split = settings.perplexity_config, settings.perplexity_split
    if spec == DEFAULT_PERPLEXITY_DATASET[0]:
        config = config or DEFAULT_PERPLEXITY_DATASET[1]
        split = split or DEFAULT_PERPLEXITY_DATASET[2]
    return spec, config, split or "test"


def load_perplexity_text(settings: EvalSettings) -> Any:
    """The documents for perplexity, with provenance (a :class:`hubprune.data.TextSource`).

    Called before any model is loaded, so a missing file, column or unreachable Hub fails fast.
    """
    from hubprune import data

    spec, config, split = perplexity_source(settings)
    return data.load_texts(
        spec,
        config=config,
        split=split,
        text_column=settings.text_column,
        what="perplexity text",
        alternative=f"pass --perplexity-data {OFFLINE_PERPLEXITY_TEXT} (offline texts: "
        f"{data.offline_alternative()}) or a local file, or --no-perplexity",
    )
