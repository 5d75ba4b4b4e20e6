"""Run folders written atomically: one writer at a time, manifest inside when the folder appears,
leftovers of killed writers cleaned up, `--overwrite` limited to run folders other than the source.

What these catch: a second writer deleting the folder the first one just finished, a run folder
that appears before its manifest, staging folders of killed processes that stay forever, and
`--overwrite` deleting a user's folder or the source model itself.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hubprune.cli import main
from hubprune.errors import ExportError
from hubprune.export import export_plain
from hubprune.methods import Budget
from hubprune.pipeline import SourceOptions, prune
from hubprune.plan import MANIFEST_NAME
from hubprune.rundir import atomic_write_text, staged_folder
from tests.tiny import save_tiny, tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("rundir") / "base", "llama", num_layers=3)


def _dead_pid() -> int:
    """The id of a process that has finished (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _run_folder(folder: Path, marker: str) -> Path:
    folder.mkdir(parents=True)
    (folder / MANIFEST_NAME).write_text(json.dumps({"marker": marker}))
    return folder


def _prune_argv(source: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", str(source), "--method", "reverse-order", "--amount", "1", "--out", str(out), *extra]


def test_a_folder_finished_by_another_writer_is_refused_not_deleted(tmp_path):
    """Would catch the old writer that deleted whatever sat at `out` right before its rename."""
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="already exists"), staged_folder(out, overwrite=False) as tmp:
        (tmp / "mine").write_text("second")
        _run_folder(out, "first")  # another process finished meanwhile
    assert json.loads((out / MANIFEST_NAME).read_text()) == {"marker": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"], "staging left behind"


def test_a_second_writer_fails_at_once_while_the_first_holds_the_lock(tmp_path):
    """Would catch two processes staging the same folder at the same time."""
    out = tmp_path / "out"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from hubprune.rundir import staged_folder
        with staged_folder({str(out)!r}, overwrite=False) as tmp:
            print("staging", flush=True)
            sys.stdin.readline()
            (tmp / "hubprune.json").write_text("{{}}")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline() == "staging\n"
        with (
            pytest.raises(ExportError, match="another hubprune process is writing"),
            staged_folder(out, False),
        ):
            pass
    finally:
        child.communicate("go\n", timeout=60)
    assert child.returncode == 0 and (out / MANIFEST_NAME).is_file()


def test_the_run_folder_appears_with_its_manifest(tiny_dir, tmp_path, monkeypatch):
    """Would catch a manifest written after the folder was renamed into place."""
    out = tmp_path / "run"
    seen = []
    original = os.replace

    def spy(src, dst):
        if Path(dst) == out:
            seen.append(sorted(p.name for p in Path(src).iterdir()))
        return original(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    prune(SourceOptions(str(tiny_dir), device="cpu"), "reverse-order", Budget.parse(1), out)
    assert len(seen) == 1 and MANIFEST_NAME in seen[0] and "model.safetensors" in seen[0]


def test_leftovers_of_dead_writers_are_removed_and_reported(tmp_path, caplog):
    """Would catch staging folders of killed processes that stay forever (full of weights)."""
    dead = _dead_pid()
    stale = tmp_path / f".out.staging-{dead}-0a1b"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    live = tmp_path / f".out.staging-{os.getpid()}-0a1b"  # a writer that still runs
    live.mkdir()
    other = tmp_path / f".other.staging-{dead}-0a1b"  # another target's business
    other.mkdir()
    with caplog.at_level(logging.WARNING, logger="hubprune.rundir"):
        export_plain(tiny_model("llama", num_layers=2), None, tmp_path / "out")
    assert not stale.exists() and live.is_dir() and other.is_dir()
    assert f"removed {stale}" in caplog.text and "no longer runs" in caplog.text


def test_a_run_folder_set_aside_by_a_killed_overwrite_is_restored(tmp_path, caplog):
    """Would catch losing the old run when an overwrite is killed between its two renames."""
    aside = _run_folder(tmp_path / f".out.trash-{_dead_pid()}-00ff", "old")
    with (
        caplog.at_level(logging.WARNING, logger="hubprune.rundir"),
        pytest.raises(ExportError, match="already exists"),
        staged_folder(tmp_path / "out", overwrite=False),
    ):
        pass
    assert (
        not aside.exists() and json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["marker"] == "old"
    )
    assert "restored" in caplog.text


def test_overwrite_replaces_a_run_folder_and_leaves_nothing_aside(tmp_path):
    """Would catch an overwrite that keeps the old files or leaves its set-aside copy behind."""
    out = _run_folder(tmp_path / "out", "old")
    (out / "stale.safetensors").write_text("old shard")
    with staged_folder(out, overwrite=True) as tmp:
        (tmp / MANIFEST_NAME).write_text(json.dumps({"marker": "new"}))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]
    assert json.loads((out / MANIFEST_NAME).read_text()) == {"marker": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_overwrite_refuses_a_folder_that_is_not_a_run_folder(tiny_dir, tmp_path, capsys):
    """Would catch --overwrite deleting a user's notes."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("my notes")
    assert main(_prune_argv(tiny_dir, notes, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hubprune: error: --overwrite replaces only hubprune run")
    assert (notes / "todo.txt").read_text() == "my notes"


def test_overwrite_refuses_the_source_model(tiny_dir, tmp_path, capsys):
    """Would catch `--out SOURCE --overwrite` deleting the model being pruned (a run folder here,
    so the run-folder rule alone would allow it), or a folder holding it."""
    source = tmp_path / "pruned"
    prune(SourceOptions(str(tiny_dir), device="cpu"), "reverse-order", Budget.parse(1), source)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    for out in (source, tmp_path):
        assert main(_prune_argv(source, out, "--overwrite")) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is (or holds) the source model" in err
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    """Would catch a card / report / manifest written in place (half a file after a crash)."""
    path = atomic_write_text(tmp_path / "README.md", "old card")
    (tmp_path / f".README.md.tmp-{_dead_pid()}-beef").write_text("half")

    def fail(self, text, **kwargs):
        Path.write_bytes(self, text[:3].encode())
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new card")
    monkeypatch.undo()
    assert path.read_text() == "old card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"], "temporary files left behind"
