"""Fault injection: `prune` and `recover` killed (SIGKILL) at exact points, then run again.

The processes kill themselves through the test hook ``HUBPRUNE_FAULT=<point>``
(:func:`hubprune.rundir.fault_point`): ``before-stage`` (for recover: training done, nothing
written), ``during-stage`` (weights written in the staging folder, no manifest yet),
``before-rename`` (staging complete), ``between-renames`` (an overwrite set the old folder aside),
``after-rename``. After every kill the output must be absent or complete and consistent (a
manifest listing the files that are there, weights that load), and the same command run again
must finish the job and clear what the killed process left.

What these catch: a model folder without its manifest, staging folders that stay forever, a
recovery that cannot resume after a kill or records more steps than it trained, and two
concurrent writers of one folder that both "succeed".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from hubprune.export import folder_files
from hubprune.methods import Budget
from hubprune.pipeline import SourceOptions, prune
from hubprune.plan import LOCAL_RECORD_NAME, MANIFEST_NAME, Manifest
from hubprune.rundir import FAULT_ENV
from tests.tiny import SAMPLE_TEXT, save_tiny

REPO = Path(__file__).resolve().parents[1]
KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("faults") / "base", "llama", num_layers=3)


@pytest.fixture(scope="module")
def pruned(base) -> Path:
    out = base.parent / "pruned"
    prune(SourceOptions(str(base), device="cpu"), "reverse-order", Budget.parse(1), out)
    return out


@pytest.fixture(scope="module")
def text_file(base) -> Path:
    path = base.parent / "notes.txt"
    path.write_text("\n".join(SAMPLE_TEXT[i : i + 200] for i in range(0, len(SAMPLE_TEXT), 200)))
    return path


def _env(fault: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return env


def _hubprune(argv: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hubprune", *argv]
    return subprocess.run(command, env=_env(fault), capture_output=True, text=True, timeout=600)


def _prune_argv(source: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", str(source), "--method", "reverse-order", "--amount", "1", "--out", str(out), *extra]


def _recover_argv(run: Path, text_file: Path, out: Path) -> list[str]:
    return [
        "recover", str(run), "--mode", "partial", "--last-k", "1", "--data", str(text_file), "--seq-len", "32",
        "--batch-size", "4", "--max-steps", "4", "--save-steps", "2", "--lr", "3e-3", "--out", str(out),
    ]  # fmt: skip


def _leftovers(out: Path) -> list[str]:
    """Hidden siblings of `out` other than its lock file: staging, set-aside or temporary entries."""
    return sorted(
        p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and p.suffix != ".lock"
    )


def _complete(out: Path) -> Manifest | None:
    """None when `out` is absent; else its manifest, after checking the folder is consistent."""
    if not out.exists():
        return None
    assert (out / MANIFEST_NAME).is_file(), f"{out} exists without its manifest"
    manifest = Manifest.load(out)
    # beside the manifest, unpublished: the local source path as typed (Manifest.save)
    assert set(folder_files(out)) - {LOCAL_RECORD_NAME} == {*manifest.export["files"], MANIFEST_NAME}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == manifest.model_after["num_blocks"]
    return manifest


@pytest.mark.parametrize("point", ["before-stage", "during-stage", "before-rename", "after-rename"])
def test_prune_killed_leaves_nothing_or_a_complete_run_and_a_rerun_finishes(base, tmp_path, point):
    out = tmp_path / "run"
    killed = _hubprune(_prune_argv(base, out), fault=point)
    assert killed.returncode == KILLED, killed.stderr[-2000:]
    manifest = _complete(out)
    assert (manifest is not None) == (point == "after-rename")
    staged = _leftovers(out)
    assert bool(staged) == (point in ("during-stage", "before-rename")), staged

    again = _hubprune(_prune_argv(base, out))
    if manifest is None:
        assert again.returncode == 0, again.stderr[-2000:]
        assert _complete(out).plan.method == "reverse-order"
    else:  # already finished: the same command refuses to overwrite it, and leaves it as it was
        assert again.returncode == 1 and "already exists" in again.stderr
        assert _complete(out).created_at == manifest.created_at
    assert _leftovers(out) == []
    if staged:
        assert "no longer runs" in again.stderr, (
            "the cleanup of a killed run's staging folder is not reported"
        )


def test_overwrite_killed_between_its_renames_keeps_a_run_and_a_rerun_replaces_it(base, tmp_path):
    out = tmp_path / "run"
    assert _hubprune(_prune_argv(base, out)).returncode == 0
    old = _complete(out)
    killed = _hubprune(_prune_argv(base, out, "--overwrite"), fault="between-renames")
    assert (
        killed.returncode == KILLED and not out.exists() and len(_leftovers(out)) == 2
    )  # old aside, new staged

    again = _hubprune(_prune_argv(base, out, "--overwrite"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "restored" in again.stderr and _complete(out).created_at >= old.created_at
    assert _leftovers(out) == []


@pytest.mark.parametrize("point", ["before-stage", "during-stage", "after-rename"])
def test_recover_killed_resumes_and_records_what_was_trained(pruned, text_file, tmp_path, point):
    out = tmp_path / "healed"
    argv = _recover_argv(pruned, text_file, out)
    killed = _hubprune(argv, fault=point)
    assert killed.returncode == KILLED, killed.stderr[-2000:]
    manifest = _complete(out)
    assert (manifest is not None) == (point == "after-rename")
    if manifest is None:
        assert (Path(f"{out}.checkpoints") / "checkpoint-4" / "trainer_state.json").is_file()
        again = _hubprune(argv)
        assert again.returncode == 0, again.stderr[-2000:]
        manifest = _complete(out)
        record = manifest.stages["recover"]
        assert record["resumed_from"] == "checkpoint-4", "the re-run trained again instead of resuming"
    record = manifest.stages["recover"]
    assert record["steps"] == 4 and all(step <= 4 for step, _ in record["curve"]["train_loss"])
    assert _leftovers(out) == [] or point == "after-rename"
    assert not Path(f"{out}.checkpoints").exists() or point == "after-rename"


def test_two_prunes_on_one_folder_one_wins_the_other_says_why(base, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hubprune", *_prune_argv(base, out)]
    children = [
        subprocess.Popen(command, env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(child.wait(timeout=600), child.stderr.read()) for child in children]
    assert sorted(code for code, _ in results) == [0, 1], results
    err = next(text for code, text in results if code == 1)
    lines = [line for line in err.splitlines() if line.startswith("hubprune: error: ")]
    assert len(lines) == 1 and ("another hubprune process is writing" in err or "already exists" in err), err
    assert "Traceback" not in err
    assert _complete(out) is not None and _leftovers(out) == []
