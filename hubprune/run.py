"""Run a whole recipe from Python: `run_recipe("recipe.yaml")`, resumable from the run folder.

The recipe is validated in full (every problem reported at once) and logged with its defaults
filled in before anything is loaded. Then the stages run in order, one function each:

    prune -> recover -> evaluate -> card -> publish

A stage whose record is already in the run folder's `hubprune.json` (made from the same recipe
settings) is skipped; `redo=[STAGE]` or `force=True` runs it again. Whenever a stage runs, every
later stage runs too, since its input changed. A recovery run killed half-way resumes from its
last checkpoint. Optional stages (evaluate, card, publish) come from their own modules and are
imported only when the recipe asks for them. `hubprune run` is a thin wrapper around this.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubprune.recipe import RECOVERY_NEUTRAL_FIELDS, STAGES, Recipe

logger = logging.getLogger("hubprune.run")

# The recipe sections each stage's result depends on (its own and everything upstream).
_DEPENDS = {
    "prune": ("source", "prune"),
    "recover": ("source", "prune", "recover"),
    "evaluate": ("source", "prune", "recover", "evaluate"),
    "card": ("source", "prune", "recover", "evaluate", "card"),
    "publish": ("source", "prune", "recover", "evaluate", "card", "publish"),
}
# Settings that do not change a section's result.
_NEUTRAL = {"recover": RECOVERY_NEUTRAL_FIELDS}


@dataclass
class RunState:
    """The recipe, its text as written, which stages to redo, and which ran in this invocation."""

    recipe: Any
    text: str
    redo: set[str]
    ran: list[str] = field(default_factory=list)

    def should_run(self, stage: str, folder: Path, *, recorded: bool | None = None) -> bool:
        """Run unless done before with the same settings, not asked again, and nothing upstream ran."""
        if stage in self.redo or self.ran:
            return True
        done = recorded if recorded is not None else _recorded_with_same_settings(folder, stage, self.recipe)
        if done:
            logger.info("%s: already done in %s (skipped; --redo %s to run it again)", stage, folder, stage)
        return not done


def run_recipe(
    recipe: str | Path | Recipe, *, force: bool = False, redo: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Validate a recipe (a YAML path or a Recipe), log it resolved, and run its stages.

    Returns `out` (the run folder) and `ran` (the stages run now; the rest were already done).
    A Recipe object is recorded in the manifest as its resolved YAML, a file as written.
    """
    from hubprune.errors import RecipeError
    from hubprune.recipe import check_resources, read_recipe, resolved_yaml

    unknown = sorted(set(redo) - set(STAGES))
    if unknown:
        raise RecipeError(f"redo: unknown stage {', '.join(unknown)}; expected some of: {', '.join(STAGES)}")
    if isinstance(recipe, Recipe):
        path, text = "(object)", resolved_yaml(recipe)
    else:
        path = recipe
        recipe, text = read_recipe(path)
    check_resources(recipe)  # an unknown task fails now, not after pruning and training
    dist = _distributed()
    main = dist is None or dist.is_main_process
    if main:
        logger.info("recipe %s, resolved:\n%s", path, resolved_yaml(recipe).rstrip())
        logger.info("stages: %s", " -> ".join(recipe.stages()))
    state = RunState(recipe, text, set(STAGES) if force else set(redo))
    if main:
        prune_stage(state)
    _share_progress(state, dist)
    recover_stage(state)  # every process: the Trainer spreads the work
    if main:
        evaluate_stage(state)
        card_stage(state)
        publish_stage(state)
    return {"out": str(recipe.out_dir()), "ran": state.ran}


def _distributed() -> Any:
    """accelerate's process state under `accelerate launch` / torchrun, None for a single process.

    Only recovery is distributed; the other stages run on the main process while the rest wait,
    so the process group gets a timeout long enough for a download and a prune (3 hours).
    """
    import datetime
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(timeout=datetime.timedelta(hours=3))


def _share_progress(state: RunState, dist: Any) -> None:
    """Tell every process what the main one ran, so they all make the same resume decision."""
    if dist is None:
        return
    from accelerate.utils import broadcast_object_list

    box = [state.ran]
    broadcast_object_list(box, from_process=0)
    state.ran = list(box[0])
    dist.wait_for_everyone()


# -- the stages -----------------------------------------------------------------------------------


def prune_stage(state: RunState) -> None:
    """Load the source, score, remove and export plain (into the work folder when recovery follows)."""
    from hubprune.methods import Budget
    from hubprune.pipeline import CalibrationOptions, SourceOptions, prune

    recipe, folder = state.recipe, state.recipe.prune_dir()
    # Without recovery the pruned model *is* the run folder; one left by an earlier recipe that
    # did recover holds the recovered model and must be replaced.
    recovered_there = recipe.recover is None and "recover" in _stages_in(folder)
    if not state.should_run("prune", folder, recorded=False if recovered_there else None):
        return
    section = recipe.prune
    extra: dict[str, Any] = {}
    if section.export_format != "plain":
        _require_keyword(prune, "export_format", "a compact export")
        extra["export_format"] = section.export_format
    logger.info("prune: %s %s of %s -> %s", section.method, section.amount, recipe.source.model, folder)
    prune(
        SourceOptions(**recipe.source.model_dump(exclude={"model"}), spec=recipe.source.model),
        section.method,
        Budget.parse(section.amount, section.budget_by),
        folder,
        calibration=CalibrationOptions(**section.calibration.model_dump()),
        method_params=section.params,
        batch_size=section.batch_size,
        max_shard_size=section.max_shard_size,
        overwrite=_replaceable(folder),
        recipe=state.text,
        **extra,
    )
    state.ran.append("prune")


def recover_stage(state: RunState) -> None:
    """Fine-tune the pruned model into the run folder; resumes from checkpoints in the work folder."""
    recipe = state.recipe
    if recipe.recover is None:
        return
    out = recipe.out_dir()
    if not state.should_run("recover", out):
        return
    from hubprune.recover import recover

    settings = recipe.recover
    if settings.checkpoint_dir is None:
        settings = settings.model_copy(update={"checkpoint_dir": str(recipe.work_path() / "checkpoints")})
    restart = "recover" in state.redo or "prune" in state.ran  # old checkpoints belong to another model
    logger.info("recover: %s on %s -> %s", settings.mode, settings.data, out)
    recover(
        recipe.prune_dir(), out, settings, overwrite=_replaceable(out), restart=restart, recipe=state.text
    )
    state.ran.append("recover")


def evaluate_stage(state: RunState) -> None:
    """Benchmarks, perplexity and speed through `hubprune.evaluation` (recorded in the manifest)."""
    recipe = state.recipe
    if recipe.evaluate is None:
        return
    out = recipe.out_dir()
    if not state.should_run("evaluate", out):
        return
    from hubprune.evaluation import evaluate_run

    logger.info("evaluate: %s", ", ".join(recipe.evaluate.tasks))
    section = recipe.evaluate
    evaluate_run(out, **section.model_dump(exclude={"options"}), **section.options)
    state.ran.append("evaluate")


def card_stage(state: RunState) -> None:
    """Store the recipe text in the manifest, then render README.md (redone when anything changed)."""
    recipe = state.recipe
    out = recipe.out_dir()
    if _store_recipe(out, state.text) and not state.ran:
        state.ran.append("recipe")  # the card and the published copy must show the new text
    if "card" not in recipe.stages():
        return
    if not state.should_run("card", out, recorded=(out / "README.md").is_file()):
        return
    from hubprune.card import render_card

    logger.info("card: %s", render_card(out))
    state.ran.append("card")


def publish_stage(state: RunState) -> None:
    """Push the run folder to the Hub through `hubprune.publish` (the manifest keeps the record)."""
    recipe = state.recipe
    if recipe.publish is None:
        return
    out = recipe.out_dir()
    if not state.should_run("publish", out):
        return
    from hubprune.plan import Manifest
    from hubprune.publish import publish

    section = recipe.publish
    logger.info("publish: %s -> %s%s", out, section.repo_id, " (dry run)" if section.dry_run else "")
    result = publish(out, section.repo_id, **section.model_dump(exclude={"repo_id"}))
    manifest = Manifest.load(out)
    if "publish" not in manifest.stages:  # keep a record so a re-run does not publish twice
        manifest.stages["publish"] = {**section.model_dump(), "result": publish_record(result)}
        manifest.save(out)
    state.ran.append("publish")


# -- helpers --------------------------------------------------------------------------------------


def _stage_key(recipe: Any, stage: str) -> str:
    """The recipe settings a stage's result depends on, as canonical JSON."""
    dump = recipe.model_dump(mode="json")
    key = {}
    for section in _DEPENDS[stage]:
        value = dump.get(section)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _NEUTRAL.get(section, ())}
        key[section] = value
    return json.dumps(key, sort_keys=True)


def _recorded_with_same_settings(folder: Path, stage: str, recipe: Any) -> bool:
    """Whether `folder`'s manifest records `stage`, made from a recipe with the same settings."""
    from hubprune.errors import HubpruneError
    from hubprune.plan import MANIFEST_NAME, Manifest
    from hubprune.recipe import load_recipe

    if not (folder / MANIFEST_NAME).is_file():
        return False
    manifest = Manifest.load(folder)
    if stage not in manifest.stages or not manifest.recipe:
        return False
    try:
        recorded = load_recipe(manifest.recipe)
    except HubpruneError:
        return False
    if _stage_key(recorded, stage) != _stage_key(recipe, stage):
        logger.info("%s: the recipe changed since it was done in %s; running it again", stage, folder)
        return False
    return True


def _stages_in(folder: Path) -> dict[str, Any]:
    from hubprune.plan import MANIFEST_NAME, Manifest

    return Manifest.load(folder).stages if (folder / MANIFEST_NAME).is_file() else {}


def _store_recipe(out: Path, text: str) -> bool:
    """Put the recipe text, exactly as written, in the run folder's manifest; True if it changed."""
    from hubprune.plan import Manifest

    manifest = Manifest.load(out)
    if manifest.recipe == text:
        return False
    manifest.recipe = text
    manifest.save(out)
    return True


def _replaceable(folder: Path) -> bool:
    """Only an earlier run folder (one with hubprune.json) may be replaced; anything else is refused."""
    from hubprune.plan import MANIFEST_NAME

    return (folder / MANIFEST_NAME).is_file()


def _require_keyword(func: Any, keyword: str, what: str) -> None:
    import inspect

    from hubprune.errors import RecipeError

    if keyword not in inspect.signature(func).parameters:
        raise RecipeError(f"{what} is not available in this installation ({func.__module__}.{func.__name__})")


# What the manifest keeps of a PublishResult: where it went and how to find the commit.
PUBLISH_RECORD_FIELDS = (
    "repo_id", "revision", "commit_sha", "commit_url", "pr_url", "repo_url", "dry_run", "unchanged",
)  # fmt: skip


def publish_record(result: Any) -> dict[str, Any]:
    """The JSON-safe part of a PublishResult (repo, revision, commit, URLs, dry run) for the manifest."""
    import dataclasses

    values = dataclasses.asdict(result)
    return {name: values[name] for name in PUBLISH_RECORD_FIELDS if name in values}
