"""The run recipe: one YAML file that says everything `hubprune run` does, validated up front.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key fails instead of
being ignored (llm-compressor's modifiers do the same). :func:`load_recipe` reports *every*
problem at once as one :class:`~hubprune.errors.RecipeError`, each line naming the field path
(`recover.lr`) and what was expected, before any weights are loaded (torchtune's
`config.validate` habit). The recipe text is kept exactly as written: `hubprune run` stores it
in the manifest's `recipe` field, and the card shows it.

The `recover` section is :class:`RecoverySettings`, the same object that
:func:`hubprune.recover.recover` and `hubprune recover` take, so the three spell every setting
the same way and check it the same way.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hubprune.errors import HubpruneError, RecipeError

# The optional stages and the module that provides each; a recipe asking for one that is not
# installed is refused by name rather than failing half-way through a run.
OPTIONAL_STAGE_MODULES = {
    "evaluate": "hubprune.evaluation",
    "card": "hubprune.card",
    "publish": "hubprune.publish",
}


class _Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceSection(_Section):
    """Where the model comes from (see `hubprune prune --help` for the accepted forms)."""

    model: str = Field(
        min_length=1,
        description="Hub repo id (owner/name or owner/name@revision), a local folder, a .gguf file, "
        "or offline:NAME",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    base_model: str | None = Field(
        default=None, description="Hub id the card names when `model` is a local folder or GGUF file"
    )
    stream: bool | None = Field(
        default=None,
        description="score one block at a time (None: only when the model does not fit in memory)",
    )
    resumable: bool = Field(
        default=False, description="streamed scoring saves its activations after every block"
    )


class CalibrationSection(_Section):
    """Calibration text for methods that need data (ignored by data-free methods)."""

    dataset: str | None = None
    config: str | None = None
    split: str = "train"
    text_column: str | None = None
    revision: str | None = None
    samples: int = Field(default=32, gt=0)
    seq_len: int = Field(default=256, ge=2)
    seed: int = 0


class PruneSection(_Section):
    """Which method removes what, and how much."""

    method: str
    amount: int | float | str = Field(description="a whole count (6) or a fraction below 1 (0.25)")
    budget_by: Literal["units", "params", "flops", "kv"] = "units"
    params: dict[str, Any] = Field(default_factory=dict, description="method parameters")
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    batch_size: int = Field(default=8, gt=0)
    max_shard_size: str | int = "2GB"
    export_format: Literal["plain", "compact", "nemotron-nas", "hetero"] = "plain"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from hubprune.methods import get_method

        get_method(value)  # a RecipeError is a ValueError: pydantic reports it at prune.method
        return value

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: int | float | str) -> int | float | str:
        from hubprune.methods.budget import parse_amount

        parse_amount(value)  # checked here, not after the model, so it is reported with the rest
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from hubprune.methods import get_method

        if "method" in info.data:  # an unknown method is reported on its own line
            get_method(info.data["method"]).make_params(value)
        return value

    @model_validator(mode="after")
    def _budget(self) -> PruneSection:
        from hubprune.methods import Budget

        Budget.parse(self.amount, self.budget_by)  # a count with budget_by: params
        return self


class LoraSection(_Section):
    """LoRA hyper-parameters; the defaults are the Reassessing paper's LoRA baseline."""

    r: int = Field(default=8, gt=0, description="rank; higher adapts more and costs more memory")
    alpha: float = Field(default=16, gt=0, description="scaling numerator (update scale = alpha / r)")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None, description="module names to adapt; default: the family's attention and MLP projections"
    )
    save_adapter: bool = Field(
        default=False, description="also write the unmerged adapter to <out>/adapter/ (peft format)"
    )

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError(
                "give at least one module name, or leave target_modules out for the family default"
            )
        return value


# Recovery settings that do not change the trained model: checkpoints made under other values
# of these are still resumed, and `hubprune run` does not redo a recovery for them.
RECOVERY_NEUTRAL_FIELDS = frozenset(
    {"checkpoint_dir", "keep_checkpoints", "logging_steps", "save_steps", "save_total_limit", "eval_steps"}
)


class RecoverySettings(_Section):
    """How to heal a pruned model: LoRA (merged into the weights) or partial fine-tuning.

    `partial` freezes everything and trains `lm_head`, the final norm and the last `last_k`
    blocks (the Reassessing paper, arXiv 2411.15558). When `lm_head` shares its weight with the
    input embeddings, `tied_embeddings` decides: `freeze` (default) leaves that shared matrix
    alone, `untie` gives `lm_head` its own copy to train (the model grows by vocab x hidden), and
    `train` trains the shared matrix, so the input embeddings change too.
    """

    mode: Literal["partial", "lora"]
    data: str = Field(
        min_length=1, description="Hub dataset id, local .txt/.jsonl/.json/.parquet, or offline:NAME"
    )

    data_config: str | None = None
    data_revision: str | None = None
    split: str = "train"
    eval_split: str | None = Field(
        default=None,
        description="a held-out split of the dataset; default: hold out eval_fraction of `split`",
    )
    eval_fraction: float = Field(default=0.05, gt=0, lt=1)
    max_eval_examples: int = Field(default=200, gt=0)
    format: Literal["auto", "text", "instruction", "chat"] = Field(
        default="auto",
        description="auto: `messages` -> chat, `instruction` + `output` -> instruction, else plain text",
    )
    text_column: str | None = Field(default=None, description="plain-text column (default: text)")
    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"
    messages_column: str = "messages"
    train_on_prompt: bool = Field(default=False, description="also compute the loss on prompt tokens")
    seq_len: int = Field(default=256, ge=8, description="tokens per example (the paper's cutoff: 256)")
    epochs: float | None = Field(
        default=None, gt=0, description="passes over the data (default 1 when max_steps is unset)"
    )
    max_steps: int | None = Field(default=None, gt=0, description="optimizer steps; overrides epochs")
    lr: float | None = Field(
        default=None, gt=0, description="learning rate (default: 1e-5 partial, 1e-4 lora)"
    )
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=8, gt=0, description="examples per device per step")
    grad_accum: int = Field(default=1, gt=0, description="gradient accumulation steps")
    last_k: int = Field(default=3, gt=0, description="partial: number of final blocks to train")
    tied_embeddings: Literal["freeze", "untie", "train"] = "freeze"
    lora: LoraSection | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 (or fp16) mixed precision on GPU, fp32 on CPU"
    )
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None
    save_steps: int = Field(default=50, gt=0, description="checkpoint every N steps (for resume)")
    save_total_limit: int = Field(default=2, gt=0)
    logging_steps: int = Field(default=5, gt=0)
    eval_steps: int | None = Field(
        default=None, gt=0, description="evaluate every N steps (default: start and end)"
    )
    checkpoint_dir: str | None = Field(
        default=None, description="default: <out>.checkpoints next to the output"
    )
    keep_checkpoints: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> RecoverySettings:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("give epochs or max_steps, not both")
        if self.mode == "partial" and self.lora is not None:
            raise ValueError("a `lora` section is only read when mode is lora")
        return self

    @property
    def learning_rate(self) -> float:
        """The learning rate actually used: the paper's 1e-5 for partial, 1e-4 for LoRA."""
        if self.lr is not None:
            return self.lr
        return 1e-5 if self.mode == "partial" else 1e-4

    @property
    def lora_settings(self) -> LoraSection:
        return self.lora or LoraSection()


class EvaluateSection(_Section):
    """Arguments for `hubprune.evaluation.evaluate_run`."""

    tasks: list[str] = Field(
        min_length=1, description="lm-eval task names, or the offline pack (offline:piqa)"
    )
    tasks_path: list[str] | None = Field(default=None, description="folders of extra lm-eval task YAML files")
    limit: int | float | None = Field(default=None, gt=0)
    num_fewshot: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=8, gt=0)
    perplexity_data: str | None = None
    speed: bool = False
    compare_to: str | None = Field(default=None, description="the base to compare with (default: the source)")
    seed: int = 0
    perplexity: bool = True
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="further evaluation settings (dtype, device, perplexity_seq_len, ...)",
    )

    @field_validator("options")
    @classmethod
    def _known_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        allowed = evaluate_option_names()
        if allowed is None:  # no evaluation module: the stage check reports that
            return value
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            named = ", ".join(f"'{key}'{_did_you_mean(key, allowed)}" for key in unknown)
            raise ValueError(f"unknown option {named}; expected some of: {', '.join(allowed)}")
        return value


def evaluate_option_names() -> list[str] | None:
    """The keys `evaluate.options` accepts: EvalSettings fields the section does not already have.

    None when this installation has no evaluation module.
    """
    import dataclasses

    if importlib.util.find_spec(OPTIONAL_STAGE_MODULES["evaluate"]) is None:
        return None
    from hubprune.evaluation import EvalSettings

    return [f.name for f in dataclasses.fields(EvalSettings) if f.name not in EvaluateSection.model_fields]


class PublishSection(_Section):
    """Arguments for `hubprune.publish.publish`. `private` must be said explicitly."""

    repo_id: str
    private: bool
    revision: str | None = None
    create_pr: bool = False
    commit_message: str | None = None
    dry_run: bool = False

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        parts = value.split("/")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"expected 'owner/name', got '{value}'")
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(value)
        except HFValidationError as err:
            raise ValueError(str(err)) from err
        return value


STAGES = ("prune", "recover", "evaluate", "card", "publish")


class Recipe(_Section):
    """A whole run: source -> prune -> (recover) -> (evaluate) -> (card) -> (publish).

    `out` is the final run folder (the future Hub repo). When `recover` is present, the pruned
    model and the training checkpoints live in `work_dir` (default `<out>.work`), so the run
    folder holds only what gets published.
    """

    name: str | None = None
    out: str = Field(min_length=1)
    work_dir: str | None = None
    source: SourceSection
    prune: PruneSection
    recover: RecoverySettings | None = None
    evaluate: EvaluateSection | None = None
    card: bool | None = Field(default=None, description="render the model card; default: when available")
    publish: PublishSection | None = None

    @model_validator(mode="after")
    def _stages_available(self) -> Recipe:
        missing = [
            stage
            for stage, module in OPTIONAL_STAGE_MODULES.items()
            if _asked(self, stage) and importlib.util.find_spec(module) is None
        ]
        if missing:
            raise ValueError(
                "this installation has no "
                + ", ".join(f"'{m}' stage ({OPTIONAL_STAGE_MODULES[m]})" for m in missing)
                + "; remove the section or install a hubprune that has it"
            )
        return self

    def stages(self) -> list[str]:
        """The stages this recipe runs, in order."""
        return [s for s in STAGES if s == "prune" or _runs(self, s)]

    def out_dir(self) -> Path:
        return Path(self.out)

    def work_path(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(f"{self.out}.work")

    def prune_dir(self) -> Path:
        """Where the pruned model goes: the run folder itself, or `work_dir/pruned` before recovery."""
        return self.work_path() / "pruned" if self.recover is not None else self.out_dir()


def _asked(recipe: Recipe, stage: str) -> bool:
    """Whether the recipe explicitly asks for an optional stage."""
    return recipe.card is True if stage == "card" else getattr(recipe, stage) is not None


def _runs(recipe: Recipe, stage: str) -> bool:
    """Whether a stage runs: asked for, or (for the card) left unsaid and available."""
    if stage == "card":
        if recipe.card is None:
            return importlib.util.find_spec(OPTIONAL_STAGE_MODULES["card"]) is not None
        return recipe.card
    return getattr(recipe, stage) is not None


# -- error reporting -----------------------------------------------------------------------------


def _sub_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The section model behind field `name` (`RecoverySettings` for `recover`), if it is one."""
    annotation = model.model_fields[name].annotation
    members = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
    return next((a for a in members if issubclass(a, BaseModel)), None)


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], list[str]]:
    """(field path, fields accepted at its end) for a pydantic error location.

    pydantic puts the union member it tried (`int`, `list[str]`, `function-after[...]`) inside
    `loc`; only real field names and list indices make the path a user reads.
    """
    path: list[str] = []
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            path.append(str(part))
        elif current is not None and part in current.model_fields:
            path.append(part)
            current = _sub_model(current, part)
    return path, list(current.model_fields) if current is not None else []


def _did_you_mean(key: str, allowed: list[str]) -> str:
    hint = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


def _describe(model: type[BaseModel], error: dict[str, Any]) -> tuple[str, str, str]:
    """(field path, what was expected, what was given) for one pydantic error."""
    kind = error["type"]
    if kind == "extra_forbidden":
        path, allowed = _walk(model, tuple(error["loc"][:-1]))
        key = str(error["loc"][-1])
        return (
            ".".join([*path, key]),
            f"unknown field{_did_you_mean(key, allowed)}; expected one of: {', '.join(allowed)}",
            "",
        )
    path = ".".join(_walk(model, tuple(error["loc"]))[0]) or "(recipe)"
    if kind == "missing":
        return path, "required field is missing", ""
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        return path, message, ""
    return path, message, f" (got: {error.get('input')!r})"


def format_validation_error(err: ValidationError, model: type[BaseModel], what: str) -> str:
    """All problems of a ValidationError, one line per field in document order.

    A field with a union type fails once per member; those become one line ("... or ...").
    """
    problems: dict[str, tuple[list[str], str]] = {}
    for error in err.errors():
        path, message, got = _describe(model, error)
        messages, _ = problems.setdefault(path, ([], got))
        if message not in messages:
            messages.append(message)
    lines = [f"{path}: {' or '.join(messages)}{got}" for path, (messages, got) in problems.items()]
    head = f"{what} has {len(lines)} problem{'s' if len(lines) != 1 else ''}:"
    return head + "".join(f"\n  - {line}" for line in lines)


def validate_model(model: type[BaseModel], data: Any, what: str) -> Any:
    """`model.model_validate(data)`, turning a ValidationError into one RecipeError."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, model, what)) from err


def recovery_settings(**values: Any) -> RecoverySettings:
    """Build RecoverySettings from keyword values (CLI flags, Python callers), errors as RecipeError."""
    return validate_model(RecoverySettings, values, "recovery settings")


def parse_yaml(text: str, source_name: str = "recipe") -> dict[str, Any]:
    """The recipe's YAML as a mapping; a syntax error names the line."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(f"{source_name} is not valid YAML{where}: {problem}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{source_name} must be a YAML mapping with at least `out`, `source` and `prune`")
    return data


def load_recipe(text: str, source_name: str = "recipe") -> Recipe:
    """Parse and validate recipe text; every problem is reported in one RecipeError."""
    return validate_model(Recipe, parse_yaml(text, source_name), source_name)


def read_recipe(path: str | Path) -> tuple[Recipe, str]:
    """Read a recipe file: the validated recipe and its text exactly as written."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    return load_recipe(text, str(path)), text


def resolved_yaml(recipe: Recipe) -> str:
    """The recipe with every default filled in, as YAML (logged first by `hubprune run`)."""
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


def check_resources(recipe: Recipe) -> None:
    """Checks that look outside the recipe (lm-eval's task index, text files), so that a run
    does not fail at a later stage after pruning: a missing training file, unknown tasks, a
    missing perplexity file. `hubprune validate` and `hubprune run` call it before anything is loaded."""
    from hubprune.data import check_text_spec
    from hubprune.tasks import resolve_tasks

    if recipe.recover is not None:
        try:
            check_text_spec(recipe.recover.data, "training data")
        except HubpruneError as err:
            raise RecipeError(f"recover.data: {err}") from err
    section = recipe.evaluate
    if section is None:
        return
    try:
        resolve_tasks(section.tasks, tasks_path=section.tasks_path)
        if section.perplexity and section.perplexity_data:
            check_text_spec(section.perplexity_data, "perplexity text")
    except HubpruneError as err:
        raise RecipeError(f"evaluate: {err}") from err
