"""Fault injection: `hubprune publish` killed (SIGKILL) at exact points, then run again.

The publisher runs as a subprocess against the loopback Hub (tests/hub_server.py). It is killed
either by itself through ``HUBPRUNE_FAULT=<point>`` (:func:`hubprune.rundir.fault_point`):
``publish-before-hub-write`` (every check passed, card written, nothing sent),
``publish-after-create`` (the repo exists, nothing uploaded), ``publish-after-commit``; or by the
test when the fake Hub receives a given request (``on_request``): the first LFS upload, or the
commit request (every LFS object stored, no commit). After every kill the remote repo must be
absent, unchanged, or hold one complete commit (every file of the run folder, card and weights
together), and the same command run again must finish the job.

What these catch: a repo created before the checks, a commit holding part of the folder, and a
re-run that cannot finish what a killed publish started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hubprune.publish import local_files
from hubprune.rundir import FAULT_ENV
from tests.conftest_hub import HUB_TOKEN

REPO = "test-user/tiny-pruned"
ROOT = Path(__file__).resolve().parents[1]
KILLED = -signal.SIGKILL


def _publish(run_dir: Path, hub, fault: str | None = None, kill_at: str | None = None):
    """Run `hubprune publish RUN_DIR --repo REPO --public` in a subprocess; `fault` makes it kill itself
    at that point, `kill_at` has the test kill it when the fake Hub receives that route's request."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_TOKEN": HUB_TOKEN}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    command = [sys.executable, "-m", "hubprune", "publish", str(run_dir), "--repo", REPO, "--public"]
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def kill(route: str) -> bool:
        if route != kill_at:
            return False
        child.kill()
        child.wait()
        return True  # the request is dropped unanswered: the Hub does nothing with it

    hub.on_request = kill if kill_at else None
    try:
        out, err = child.communicate(timeout=600)
    finally:
        hub.on_request = None
    return child.returncode, out, err


def _remote(hub, run_dir: Path) -> str | None:
    """None when the repo is absent, "empty" when it holds only its initial commit; else its head, after
    checking that the head commit holds exactly the run folder's files with the same bytes."""
    repo = hub.repos.get(("model", REPO))
    if repo is None:
        return None
    files = hub.files(REPO)
    if set(files) == {".gitattributes"}:
        return "empty"
    local = {name: (run_dir / name).read_bytes() for name in local_files(run_dir)}
    assert {name: data for name, data in files.items() if name != ".gitattributes"} == local
    assert {"README.md", "hubprune.json"} <= set(local) and any(
        name.endswith(".safetensors") for name in local
    )
    return repo.refs["main"]


@pytest.mark.parametrize(
    ("fault", "kill_at", "left"),
    [
        ("publish-before-hub-write", None, None),
        ("publish-after-create", None, "empty"),
        (None, "lfs_put", "empty"),
        (None, "commit", "empty"),
        ("publish-after-commit", None, "complete"),
    ],
)
def test_publish_killed_leaves_nothing_or_a_complete_commit_and_a_rerun_finishes(
    hub_server, run_dir, fault, kill_at, left
):
    code, _, err = _publish(run_dir, hub_server, fault=fault, kill_at=kill_at)
    assert code == KILLED, err[-2000:]
    state = _remote(hub_server, run_dir)
    assert state == left if left != "complete" else state not in (None, "empty")
    if kill_at == "commit":
        assert hub_server.lfs_objects, "the kill came before the LFS uploads, not between them and the commit"

    code, out, err = _publish(run_dir, hub_server)
    assert code == 0, err[-2000:]
    finished = _remote(hub_server, run_dir)
    assert finished not in (None, "empty")
    if left == "complete":  # already published: the re-run makes no second commit
        assert finished == state and "nothing to commit" in out
    else:
        assert "committed http" in out
    assert len(hub_server.repo(REPO).commits) == 2  # the initial commit and ours, nothing half-done


@pytest.mark.parametrize("kill_at", ["lfs_put", "commit"])
def test_republish_killed_during_the_upload_leaves_the_repo_unchanged(hub_server, run_dir, kill_at):
    """A kill while replacing a published model with a resharded one: the repo keeps the old commit,
    never a mix of the two checkpoints, and the re-run replaces it in one commit."""
    from transformers import AutoModelForCausalLM

    assert _publish(run_dir, hub_server)[0] == 0
    before = _remote(hub_server, run_dir)
    model = AutoModelForCausalLM.from_pretrained(run_dir)
    (run_dir / "model.safetensors").unlink()
    model.save_pretrained(run_dir, max_shard_size="150KB")

    code, _, err = _publish(run_dir, hub_server, kill_at=kill_at)
    assert code == KILLED, err[-2000:]
    assert hub_server.repo(REPO).refs["main"] == before

    code, _, err = _publish(run_dir, hub_server)
    assert code == 0, err[-2000:]
    after = _remote(hub_server, run_dir)
    assert hub_server.repo(REPO).commits[after].parent == before
    assert "model.safetensors" not in hub_server.files(REPO)
