"""Pulling models from the Hub with the real client, against the loopback Hub."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from huggingface_hub import HfApi

from hubprune.cli import main
from hubprune.errors import SourceError
from hubprune.hub import pull
from hubprune.plan import Manifest
from tests.tiny import save_tiny


@pytest.fixture
def tiny_repo(hub_server, tmp_path):
    api = HfApi(token=hub_server.token)
    folder = save_tiny(tmp_path / "tiny", "qwen3")
    (folder / "LICENSE").write_text("Tiny license text")
    api.create_repo("acme/tiny-qwen3", private=False)
    commit = api.upload_folder(repo_id="acme/tiny-qwen3", folder_path=folder)
    return "acme/tiny-qwen3", commit.oid


def test_prune_from_the_hub_records_the_commit(tiny_repo, tmp_path, capsys):
    repo_id, sha = tiny_repo
    out = tmp_path / "out"
    assert (
        main(["prune", f"{repo_id}@main", "--method", "reverse-order", "--amount", "1", "--out", str(out)])
        == 0
    )
    manifest = Manifest.load(out)
    assert manifest.source["base_model"] == repo_id and manifest.source["revision"] == "main"
    assert manifest.source["sha"] == sha and manifest.source["kind"] == "hub"
    assert "local_dir" not in manifest.source, "a local cache path would leak into published files"
    assert (out / "LICENSE").read_text() == "Tiny license text"
    assert manifest.export["license_files"] == ["LICENSE"]


def test_pull_skips_pickles_unless_allowed(hub_server, tmp_path):
    api = HfApi(token=hub_server.token)
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    api.create_repo("acme/pickled")
    api.upload_folder(repo_id="acme/pickled", folder_path=folder)
    with pytest.raises(SourceError, match="no safetensors weights.*--allow-pickle"):
        pull("acme/pickled")
    assert (pull("acme/pickled", allow_pickle=True).local_dir / "pytorch_model.bin").is_file()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("acme/does-not-exist", "model repo acme/does-not-exist was not found on the Hub"),
        ("acme/tiny-qwen3@no-such-branch", "revision 'no-such-branch' does not exist in acme/tiny-qwen3"),
    ],
)
def test_unknown_repo_and_revision(tiny_repo, spec, message, tmp_path, capsys):
    assert main(["prune", spec, "--method", "random", "--amount", "1", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hubprune: error: {err[0].removeprefix('hubprune: error: ')}"] and message in err[0]


def run_cli(*argv: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m hubprune ARGV` with extra environment; returns the process and the seconds it took."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hubprune", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - start


def test_unreachable_hub_fails_fast_naming_the_offline_alternatives(unreachable_endpoint):
    """Catches a model that is not cached and a Hub that cannot be reached ending in a minute of retries,
    a traceback, or an error that does not say what to use instead."""
    proc, elapsed = run_cli("pull", "owner/name", HF_ENDPOINT=unreachable_endpoint)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubprune: error: owner/name is not in the local cache")
    assert (
        "offline:smollm2-135m-instruct" in lines[0]
        and "local model folder" in lines[0]
        and ".gguf" in lines[0]
    )
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_cached_snapshot_is_used_when_the_hub_is_unreachable(tiny_repo, unreachable_endpoint):
    """Catches the unreachable-Hub error hiding a model that is already in the local cache."""
    repo_id, sha = tiny_repo
    pull(repo_id)  # into the local cache, from the loopback Hub
    proc, elapsed = run_cli("pull", repo_id, HF_ENDPOINT=unreachable_endpoint)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"(commit {sha})") and elapsed < 5
