"""The YAML recipe: strict fields, every problem at once with its path, and example recipes that load.

What these catch: a misspelt key silently ignored, errors reported one per run (fix, rerun, fix),
messages without the field path, a stage asked for but not installed failing half-way through a
run, and example recipes that rot.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubprune import recipe as recipe_mod
from hubprune.cli import main
from hubprune.errors import RecipeError
from hubprune.recipe import load_recipe, recovery_settings, resolved_yaml

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))

MINIMAL = """\
out: out/tiny
source: {model: ./tiny}
prune: {method: reverse-order, amount: 2}
card: false
"""


def test_minimal_recipe_gets_defaults_and_stage_order():
    recipe = load_recipe(MINIMAL + "recover: {mode: partial, data: notes.txt}\n")
    assert recipe.stages() == ["prune", "recover"]
    assert recipe.recover.last_k == 3 and recipe.recover.learning_rate == 1e-5
    assert recipe.recover.tied_embeddings == "freeze", "embeddings are never changed by default"
    assert recipe.prune_dir() == Path("out/tiny.work/pruned") and recipe.out_dir() == Path("out/tiny")
    assert load_recipe(MINIMAL).prune_dir() == Path("out/tiny"), (
        "without recovery, prune writes the run folder"
    )
    assert "last_k: 3" in resolved_yaml(recipe)


def test_every_problem_is_reported_at_once_with_its_path():
    text = """\
out: out/x
source:
  model: ./m
  dtyp: float32
prune:
  method: reverse-order
  amount: 2
recover:
  mode: partal
  data: notes.txt
  lr: -1
  lora: {r: 0}
publish:
  repo_id: not a repo
"""
    with pytest.raises(RecipeError) as info:
        load_recipe(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml has 6 problems:")
    for expected in (
        "source.dtyp: unknown field (did you mean 'dtype'?); expected one of: model, dtype,",
        "recover.mode: Input should be 'partial' or 'lora' (got: 'partal')",
        "recover.lr: Input should be greater than 0 (got: -1)",
        "recover.lora.r: Input should be greater than 0 (got: 0)",
        "publish.repo_id: expected 'owner/name', got 'not a repo'",
        "publish.private: required field is missing",
    ):
        assert expected in message


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("prune: {method: reverse-ordr, amount: 2}", r"prune.method: unknown method 'reverse-ordr' \(did you mean 'reverse-order'\?\)"),
        ("prune: {method: reverse-order, amount: 0}", r"prune.amount: amount must be positive"),
        ("prune: {method: reverse-order, amount: 2, params: {depth: 3}}", r"method 'reverse-order' has no parameter 'depth'"),
        ("prune: {method: reverse-order, amount: 2, budget_by: params}", r"prune: a budget by params is a fraction below 1"),
        ("evaluate: {tasks: [piqa], options: {perplexity_seqlen: 64}}", r"evaluate.options: unknown option 'perplexity_seqlen' \(did you mean 'perplexity_seq_len'\?\); expected some of: dtype, device,"),
        ("evaluate: {tasks: [piqa], options: {limit: 3}}", r"evaluate.options: unknown option 'limit'"),
        ("recover: {mode: lora, data: x.txt, epochs: 1, max_steps: 5}", r"recover: give epochs or max_steps, not both"),
        ("recover: {mode: partial, data: x.txt, lora: {r: 4}}", r"only read when mode is lora"),
        ("recover: {mode: partial, data: x.txt, last_k: 0}", r"recover.last_k: Input should be greater than 0"),
        ("recover: {mode: lora, data: x.txt, lora: {target_modules: []}}", r"recover.lora.target_modules: give at least one"),
    ],
)  # fmt: skip
def test_field_errors(snippet, expected):
    key = snippet.split(":")[0]
    base = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith(key + ":"))
    with pytest.raises(RecipeError, match=expected):
        load_recipe(base + "\n" + snippet + "\n")


def test_every_wrong_prune_field_is_reported_together():
    """Catches a bad amount or bad method parameters hidden while other prune fields are wrong too."""
    text = MINIMAL.replace(
        "prune: {method: reverse-order, amount: 2}",
        "prune: {method: finercut, amount: lots, batch_size: 0, params: {divergenc: kl, serch: x}}",
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(text, "r.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "r.yaml has 3 problems:"
    assert lines[1].startswith(
        "  - prune.amount: amount must be a number (a count like 6 or a fraction like 0.25)"
    )
    assert lines[2].startswith("  - prune.params: method 'finercut' has no parameter 'divergenc', 'serch';")
    assert lines[3] == "  - prune.batch_size: Input should be greater than 0 (got: 0)"


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(RecipeError, match=r"r.yaml is not valid YAML at line 3"):
        load_recipe("out: x\nsource: a\n  model: b\n", "r.yaml")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe("- a list\n")


def test_a_stage_that_is_not_installed_is_refused_by_name(monkeypatch):
    monkeypatch.setitem(recipe_mod.OPTIONAL_STAGE_MODULES, "evaluate", "hubprune._no_such_module")
    with pytest.raises(RecipeError, match=r"no 'evaluate' stage \(hubprune._no_such_module\)"):
        load_recipe(MINIMAL + "evaluate: {tasks: [piqa]}\n")
    load_recipe(MINIMAL)  # not asked for: fine


def test_recovery_settings_from_python_use_the_same_checks():
    settings = recovery_settings(mode="lora", data="x.txt", lora={"r": 4})
    assert settings.learning_rate == 1e-4 and settings.lora_settings.alpha == 16
    with pytest.raises(
        RecipeError,
        match=r"(?s)recovery settings has 2 problems:.*seq_len.*lr: Input should be greater than 0",
    ):
        recovery_settings(mode="lora", data="x.txt", lr=0, seq_len=4)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipes_are_valid_and_open_with_their_command(path, monkeypatch):
    """Every example validates (optional stages counted as installed) and starts with its command."""
    for stage in recipe_mod.OPTIONAL_STAGE_MODULES:
        monkeypatch.setitem(recipe_mod.OPTIONAL_STAGE_MODULES, stage, "hubprune.plan")
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# hubprune run examples/{path.name}"
    load_recipe(text, path.name)


def test_paper_example_is_the_papers_recipe():
    text = (EXAMPLES[0].parent / "llama-3.1-8b-instruct-reverse-order-partial.yaml").read_text(
        encoding="utf-8"
    )
    recipe = load_recipe(re.sub(r"(?ms)^(evaluate|card|publish):.*?(?=^\S|\Z)", "", text))
    r = recipe.recover
    assert (recipe.prune.method, recipe.prune.amount, r.mode, r.last_k) == ("reverse-order", 8, "partial", 3)
    assert (r.data, r.epochs, r.lr, r.seq_len, r.batch_size * r.grad_accum) == (
        "yahma/alpaca-cleaned",
        2,
        1e-5,
        256,
        64,
    )


def test_validate_cli(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(MINIMAL, encoding="utf-8")
    bad.write_text(MINIMAL.replace("amount: 2", "amout: 2"), encoding="utf-8")
    assert main(["validate", str(good)]) == 0
    assert "ok (stages: prune" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert (
        "prune.amout: unknown field (did you mean 'amount'?)" in err
        and "prune.amount: required field is missing" in err
    )
    options = tmp_path / "options.yaml"
    options.write_text(MINIMAL + "evaluate: {tasks: [piqa], options: {dtyp: float32}}\n", encoding="utf-8")
    assert main(["validate", str(options)]) == 1
    assert "evaluate.options: unknown option 'dtyp' (did you mean 'dtype'?)" in capsys.readouterr().err
