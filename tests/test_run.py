"""`hubprune run`: stages in order, resumable, recipe stored as written.

What these catch: a killed recovery that starts over (or crashes) instead of resuming from its
last checkpoint, a finished stage redone on re-run, a recipe edit that goes unnoticed, and a
manifest whose `recipe` is not the text the user wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubprune.cli import main
from hubprune.plan import Manifest
from hubprune.recipe import load_recipe
from hubprune.run import _recorded_with_same_settings, run_recipe
from tests.tiny import save_tiny

REPO = Path(__file__).resolve().parents[1]

RECIPE = """\
# hubprune run {path}
out: {root}/run   # the run folder
source:
  model: {root}/base
  device: cpu
prune:
  method: reverse-order
  amount: 1
recover:
  mode: partial
  data: {root}/alpaca.jsonl   # instruction rows, Alpaca prompt (the tiny tokenizer has no chat template)
  seq_len: 256
  max_steps: 6
  save_steps: 2
  batch_size: 2
  lr: 0.003
  logging_steps: 1
card: false
"""

# Slows every optimizer step so the parent can kill the run between two checkpoints.
CHILD = """\
import sys, time
import transformers

original = transformers.Trainer.training_step

def slow_step(self, *args, **kwargs):
    loss = original(self, *args, **kwargs)
    time.sleep(1.5)
    return loss

transformers.Trainer.training_step = slow_step
from hubprune.cli import main
sys.exit(main(["run", sys.argv[1]]))
"""


@pytest.fixture
def recipe_path(tmp_path) -> Path:
    save_tiny(tmp_path / "base", "llama", num_layers=4)
    rows = [
        {
            "instruction": f"Repeat the word number {i}.",
            "input": "" if i % 2 else "quick fox",
            "output": f"word {i} " * 4,
        }
        for i in range(40)
    ]
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(path=path, root=tmp_path), encoding="utf-8")
    return path


def test_killed_recovery_resumes_and_finished_stages_are_skipped(recipe_path, tmp_path, capsys):
    """SIGKILL mid-training, re-run: prune is skipped, recovery resumes from its last checkpoint."""
    out, work = tmp_path / "run", tmp_path / "run.work"
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "child.log").open("w")
    child = subprocess.Popen(
        [sys.executable, str(script), str(recipe_path)], cwd=REPO, env=env, stdout=log, stderr=log
    )
    marker = work / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not marker.is_file():
        assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "hubprune.json").exists(), "the run finished before it was killed"
    assert (work / "pruned" / "hubprune.json").is_file()

    text = recipe_path.read_text(encoding="utf-8")
    assert run_recipe(recipe_path)["ran"] == ["recover"]
    manifest = Manifest.load(out)
    record = manifest.stages["recover"]
    assert record["resumed_from"] in ("checkpoint-2", "checkpoint-4")
    assert record["steps"] == 6 and record["data_format"] == "instruction"
    assert (out / record["from_run"]).resolve() == (work / "pruned").resolve()
    assert manifest.recipe == text, "the manifest keeps the recipe exactly as written, comments included"
    assert not (work / "checkpoints").exists()

    assert main(["run", str(recipe_path)]) == 0
    assert "ran: nothing" in capsys.readouterr().out


def test_changed_settings_are_noticed_but_neutral_ones_are_not(tmp_path):
    """A recipe edit that changes the model redoes the stage; logging or checkpoint paths do not."""
    from hubprune.plan import Plan

    text = RECIPE.format(path="r.yaml", root=tmp_path)
    (tmp_path / "run").mkdir()
    Manifest(
        source={}, family="llama", plan=Plan("reverse-order", "block", []), model_before={}, model_after={},
        stages={"prune": {}, "recover": {}}, recipe=text,
    ).save(tmp_path / "run")  # fmt: skip
    folder = tmp_path / "run"
    assert _recorded_with_same_settings(folder, "recover", load_recipe(text))
    neutral = text.replace("logging_steps: 1", "logging_steps: 3")
    assert _recorded_with_same_settings(folder, "recover", load_recipe(neutral))
    changed = text.replace("lr: 0.003", "lr: 0.001")
    assert _recorded_with_same_settings(folder, "prune", load_recipe(changed))
    assert not _recorded_with_same_settings(folder, "recover", load_recipe(changed))
    assert not _recorded_with_same_settings(folder, "evaluate", load_recipe(text)), "never recorded"


def test_recipe_runs_from_python_in_one_call_and_publish_is_recorded_structured(
    tmp_path, hub_server, monkeypatch
):
    """One `run_recipe(Recipe)` call prunes, renders the card and publishes; the manifest keeps the
    publish result as a record (repo, revision, commit sha and URL), not a Python repr."""
    from tests.conftest_hub import HUB_TOKEN

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    save_tiny(tmp_path / "base", "llama", num_layers=4)
    recipe = load_recipe(
        f"out: {tmp_path}/run\n"
        f"source: {{model: {tmp_path}/base, device: cpu, base_model: test-org/tiny-llama}}\n"
        "prune: {method: reverse-order, amount: 1}\n"
        "publish: {repo_id: test-user/tiny-run, private: false, revision: experiment}\n"
    )
    result = run_recipe(recipe)
    assert result == {"out": f"{tmp_path}/run", "ran": ["prune", "card", "publish"]}
    manifest = Manifest.load(tmp_path / "run")
    record = manifest.stages["publish"]["result"]
    repo = hub_server.repos[("model", "test-user/tiny-run")]
    assert record["repo_id"] == "test-user/tiny-run" and record["revision"] == "experiment"
    assert record["commit_sha"] == repo.refs["experiment"] and record["commit_sha"] in record["commit_url"]
    assert record["dry_run"] is False and record["pr_url"] is None
    assert (
        json.loads((tmp_path / "run" / "hubprune.json").read_text())["stages"]["publish"]["result"] == record
    )
    assert load_recipe(manifest.recipe) == recipe, "a Recipe object is recorded as its resolved YAML"
    assert run_recipe(recipe)["ran"] == [], "a second call finds every stage done"


def test_unknown_redo_stage_is_refused_before_anything_runs(tmp_path):
    from hubprune.errors import RecipeError

    with pytest.raises(RecipeError, match="^redo: unknown stage evaluat; expected some of: prune, recover,"):
        run_recipe(tmp_path / "absent.yaml", redo=["evaluat"])
