"""`hubprune publish` against the loopback fake Hub (tests/hub_server.py), driven by the real
huggingface_hub and transformers clients: full cycle, re-publish, branches and PRs, every failure
the issue lists, and the token never leaking."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hubprune.errors import PublishError
from hubprune.publish import publish
from tests.conftest_hub import HUB_TOKEN

REPO = "test-user/tiny-pruned"
WEIGHTS = (".safetensors", ".safetensors.index.json")


@pytest.fixture
def token(monkeypatch) -> str:
    """The fake Hub's write token, given the way users give it: HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    return HUB_TOKEN


def logits_of(model_dir: str | Path, **kwargs) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 10, 20, 30, 40, 50, 60]])).logits


def reshard(run_dir: Path, max_shard_size: str) -> list[str]:
    """Re-save the run folder's weights with another shard count; returns the weight files."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
    for path in run_dir.iterdir():
        if path.name.endswith(WEIGHTS):
            path.unlink()
    model.save_pretrained(run_dir, max_shard_size=max_shard_size)
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(WEIGHTS))


def remote_weights(hub, revision: str = "main") -> list[str]:
    return sorted(p for p in hub.files(REPO, revision) if p.endswith(WEIGHTS))


def head(hub, ref: str = "main") -> str:
    return hub.repo(REPO).refs[ref]


# -- the full cycle -------------------------------------------------------------------------------------


def test_full_cycle(hub_server, run_dir, token):
    """Catches anything between a run folder and a stranger's `from_pretrained(repo_id)`: same logits,
    all files in one commit, the card's metadata readable with ModelCard.load, private honoured."""
    from huggingface_hub import ModelCard, snapshot_download

    before = logits_of(run_dir)
    result = publish(run_dir, REPO, private=True)
    repo = hub_server.repo(REPO)
    assert repo.private is True
    assert result.commit_sha == head(hub_server) and result.commit_url.endswith(result.commit_sha)
    assert result.pr_url is None
    # One commit on top of the repo's initial one, holding the card and the weights together.
    assert len(repo.commits) == 2 and repo.commits[result.commit_sha].parent is not None
    assert {"README.md", "model.safetensors", "hubprune.json", "layer_map.svg"} <= set(hub_server.files(REPO))

    local = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    # the source path as typed stays on this machine (Manifest.save): never uploaded
    assert ".hubprune-local.json" in local
    local.remove(".hubprune-local.json")
    snapshot = Path(snapshot_download(REPO))
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == sorted(
        [*local, ".gitattributes"]
    )
    assert torch.equal(logits_of(REPO), before)

    data = ModelCard.load(REPO).data.to_dict()
    assert data["base_model"] == "test-org/tiny-llama"
    assert data["base_model_relation"] == "finetune"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["tags"] == ["hubprune", "pruned", "reverse-order"]
    card = (snapshot / "README.md").read_text(encoding="utf-8")
    assert f'model_id = "{REPO}"' in card  # the quick start names the repo, not the local folder


def test_commit_message_and_description(hub_server, run_dir, token, monkeypatch):
    """Catches a commit that does not say what was cut, which hubprune made it, or which CI run."""
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.example")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_RUN_ID", "4242")
    result = publish(run_dir, REPO, private=False)
    commit = hub_server.repo(REPO).commits[result.commit_sha]
    assert (
        commit.summary
        == "Prune test-org/tiny-llama: removed 1 of 4 blocks with reverse-order (-23.4% parameters)"
    )
    assert "Published with hubprune 0.1.0." in commit.description
    assert "GitHub Actions run: https://github.example/acme/models/actions/runs/4242" in commit.description
    (run_dir / "NOTES.md").write_text("more\n", encoding="utf-8")
    custom = publish(run_dir, REPO, private=False, commit_message="Custom title")
    assert hub_server.repo(REPO).commits[custom.commit_sha].summary == "Custom title"


def test_republish_unchanged_folder_makes_no_commit(hub_server, run_dir, token, capsys):
    """Catches an identical re-publish printing a "committed" line for a commit that was not made."""
    first = publish(run_dir, REPO, private=False)
    again = publish(run_dir, REPO, private=False)
    assert again.unchanged and again.commit_sha == first.commit_sha == head(hub_server)
    assert "nothing to commit" in capsys.readouterr().out


def test_republish_with_other_shard_count_leaves_no_stale_shard(hub_server, run_dir, token):
    """Catches stale shards: going from 1 file to N shards and back must delete the old weights in the
    same commit that adds the new ones, so the repo never mixes two checkpoints."""
    single = sorted(p.name for p in run_dir.iterdir() if p.name.endswith(WEIGHTS))
    publish(run_dir, REPO, private=False)
    assert remote_weights(hub_server) == single == ["model.safetensors"]

    sharded = reshard(run_dir, "150KB")
    assert len(sharded) > 2  # several shards + the index
    second = publish(run_dir, REPO, private=False)
    assert remote_weights(hub_server) == sharded
    assert torch.equal(logits_of(REPO), logits_of(run_dir))

    assert reshard(run_dir, "2GB") == single
    third = publish(run_dir, REPO, private=False)
    assert remote_weights(hub_server) == single
    repo = hub_server.repo(REPO)
    assert repo.commits[third.commit_sha].parent == second.commit_sha  # one commit per publish


def test_republish_deletes_old_shards_listed_by_the_dry_run(hub_server, run_dir, token, capsys):
    """Catches a stale-shard list that is wrong or empty: 2 shards then 1 file under another name; the dry
    run lists exactly the old shards and their index for deletion, and the real publish removes them."""
    two = reshard(run_dir, "250KB")
    assert two == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    publish(run_dir, REPO, private=False)
    assert remote_weights(hub_server) == two

    assert reshard(run_dir, "2GB") == ["model.safetensors"]
    capsys.readouterr()
    dry = publish(run_dir, REPO, private=False, dry_run=True)
    out = capsys.readouterr().out
    listed = out.split("delete (3 stale files):\n", 1)[1].split("card metadata:", 1)[0].split()
    assert dry.deleted == two and listed == two
    assert remote_weights(hub_server) == two  # the dry run deleted nothing

    real = publish(run_dir, REPO, private=False)
    assert real.deleted == two
    assert remote_weights(hub_server) == ["model.safetensors"]
    assert torch.equal(logits_of(REPO), logits_of(run_dir))


def test_local_files_skips_hidden_files_and_python_caches(tmp_path):
    """Catches the upload list sending .git, editor files, .cache or __pycache__ (or dropping real files)."""
    from hubprune.publish import local_files

    for name in (
        "config.json",
        "eval/results.json",
        ".gitattributes",
        ".git/HEAD",
        ".cache/huggingface/upload/x.lock",
        "eval/.results.json.swp",
        "__pycache__/modeling.cpython-311.pyc",
        "remote/__pycache__/x.pyc",
        "remote/modeling_x.py",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert local_files(tmp_path) == ["config.json", "eval/results.json", "remote/modeling_x.py"]


def test_create_pr_leaves_main_untouched(hub_server, run_dir, token):
    """Catches --create-pr writing to main: the PR holds the new content, main keeps the old."""
    publish(run_dir, REPO, private=False)
    main_before = head(hub_server)
    reshard(run_dir, "150KB")
    result = publish(run_dir, REPO, private=False, create_pr=True)
    assert head(hub_server) == main_before
    assert result.pr_url and result.pr_url.endswith("/discussions/1")
    assert remote_weights(hub_server, "refs/pr/1") != remote_weights(hub_server, "main")
    assert remote_weights(hub_server, "main") == ["model.safetensors"]
    # Adding to the open PR goes through its ref, and still leaves main alone.
    (run_dir / "NOTES.md").write_text("review fix\n", encoding="utf-8")
    again = publish(run_dir, REPO, private=False, revision="refs/pr/1")
    assert head(hub_server, "refs/pr/1") == again.commit_sha and head(hub_server) == main_before
    assert "NOTES.md" in hub_server.files(REPO, "refs/pr/1")


def test_revision_publishes_to_a_new_branch(hub_server, run_dir, token):
    """Catches --revision writing to main or failing on a branch that does not exist yet (new repo too)."""
    result = publish(run_dir, REPO, private=False, revision="experiment")
    repo = hub_server.repo(REPO)
    assert repo.refs["experiment"] == result.commit_sha
    assert "model.safetensors" in hub_server.files(REPO, "experiment")
    assert set(hub_server.files(REPO, "main")) == {".gitattributes"}
    (run_dir / "NOTES.md").write_text("more\n", encoding="utf-8")
    again = publish(run_dir, REPO, private=False, revision="experiment")  # existing branch
    assert repo.commits[again.commit_sha].parent == result.commit_sha


def test_dry_run_changes_nothing(hub_server, run_dir, token, capsys):
    """Catches a dry run that creates, uploads or writes anything (on the Hub or in the run folder);
    it must list the files it would upload and the card metadata, and report the remote checks it made
    (the only POST allowed is the Hub's read-only YAML validation)."""
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = publish(run_dir, REPO, private=True, dry_run=True)
    out = capsys.readouterr().out
    assert result.dry_run and result.commit_url is None and result.unchecked == []
    writes = [(m, path) for m, path in hub_server.requests if m in ("POST", "PUT")]
    assert writes == [("POST", "/api/validate-yaml")]
    assert not hub_server.repos
    assert "model.safetensors" in out and "base_model: test-org/tiny-llama" in out and "(new repo)" in out
    assert f"{REPO} does not exist yet; it would be created private" in out
    assert "the card metadata passes the Hub's validation" in out and "not checked" not in out
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_dry_run_reports_a_card_the_hub_rejects(hub_server, run_dir, token):
    """Catches a dry run that approves a card the real publish would fail on."""
    hub_server.reject_yaml = '"license" must be a valid license id'
    with pytest.raises(PublishError, match="rejected the model card metadata"):
        publish(run_dir, REPO, private=True, dry_run=True)
    assert not hub_server.repos


def test_dry_run_without_the_hub_lists_everything_and_what_it_could_not_check(
    hub_server, run_dir, unreachable_endpoint, monkeypatch, capsys
):
    """Catches an offline dry run that fails (or claims a dropped connection) instead of showing the
    files, the commit and the card, and saying which remote checks it skipped."""
    from huggingface_hub import constants

    from hubprune.cli import main

    monkeypatch.setattr(constants, "ENDPOINT", unreachable_endpoint)
    assert main(["publish", str(run_dir), "--repo", "me/x", "--public", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert hub_server.requests == [] and captured.err == ""
    out = captured.out
    assert "dry run: would publish" in out and "me/x@main" in out
    assert "commit message: Prune test-org/tiny-llama: removed 1 of 4 blocks with reverse-order" in out
    assert "Published with hubprune" in out  # the commit description
    assert "  model.safetensors  " in out and "  hubprune.json  " in out and "  README.md  " in out
    assert "base_model: test-org/tiny-llama" in out
    skipped = out.split(f"the Hugging Face Hub ({unreachable_endpoint}) is unreachable from here", 1)[1]
    assert [line.strip() for line in skipped.splitlines()[1:4]] == [
        "whether me/x exists, and its visibility",
        "which of its files would be deleted (weights and generated files the folder no longer has)",
        "the Hub's validation of the card metadata",
    ]
    assert "checked on the Hub" not in out and "dropped" not in out


def test_publish_without_the_hub_fails_fast_and_touches_nothing(run_dir, unreachable_endpoint):
    """Catches a real publish that spends a minute in retries, or reloads the model and re-renders the
    card, before finding that the Hub is unreachable: one line in seconds, the folder unchanged."""
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    env = {**os.environ, "HF_ENDPOINT": unreachable_endpoint, "HF_TOKEN": HUB_TOKEN}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hubprune", "publish", str(run_dir), "--repo", REPO, "--public"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"hubprune: error: publishing needs the Hub, but the Hugging Face Hub ({unreachable_endpoint}) is "
        "unreachable from here; nothing was published (--dry-run shows what would be)"
    ]
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_result_to_dict_is_plain_json_without_token_or_local_path(hub_server, run_dir, token):
    """Catches a publish record (for hubprune.json) that misses the commit or visibility, cannot be
    serialised, or carries the token or a local path."""
    dry = publish(run_dir, REPO, private=True, dry_run=True).to_dict()
    assert dry["dry_run"] is True and dry["commit_sha"] is None and dry["visibility"] == "private"
    result = publish(run_dir, REPO, private=True)
    record = json.loads(json.dumps(result.to_dict()))
    assert record == {
        "repo_id": REPO,
        "revision": "main",
        "visibility": "private",
        "dry_run": False,
        "commit_sha": head(hub_server),
        "commit_url": result.commit_url,
        "pr_url": None,
        "repo_url": result.repo_url,
        "unchanged": False,
        "commit_message": hub_server.repo(REPO).commits[head(hub_server)].summary,
        "files_uploaded": sorted(set(hub_server.files(REPO)) - {".gitattributes"}),
        "files_deleted": [],
        "remote_checks_skipped": [],
    }
    assert record["commit_url"].endswith(record["commit_sha"]) and record["repo_url"].endswith(REPO)
    text = json.dumps(record)
    assert HUB_TOKEN not in text and str(run_dir) not in text and str(run_dir.parent) not in text


# -- failures: each one a clear error, nothing half-published --------------------------------------------


def test_rejected_card_yaml(hub_server, run_dir, token):
    """Catches a card the Hub rejects (400 on validate-yaml) creating a repo or uploading anything."""
    hub_server.reject_yaml = '"license" must be a valid license id'
    with pytest.raises(PublishError, match='nothing was published: "license" must be a valid license id$'):
        publish(run_dir, REPO, private=False)
    assert not hub_server.repos
    assert not any(method == "PUT" or "/commit/" in path for method, path in hub_server.requests)


def test_bad_token(hub_server, run_dir, monkeypatch):
    """Catches a refused token (401) surfacing as a traceback, or creating anything."""
    monkeypatch.setenv("HF_TOKEN", "hf_test_not_the_right_one")
    with pytest.raises(PublishError, match="refused the token \\(HTTP 401\\)") as info:
        publish(run_dir, REPO, private=False)
    assert "hf_test_not_the_right_one" not in str(info.value)
    assert not hub_server.repos


def test_no_token(hub_server, run_dir, monkeypatch):
    """Catches a missing token being reported as a bad one."""
    monkeypatch.setenv("HF_TOKEN", "")
    with pytest.raises(PublishError, match="no Hub token is set"):
        publish(run_dir, REPO, private=False)


def test_repo_changed_under_us(hub_server, run_dir, token):
    """Catches a commit on top of a head we did not look at (412 on parentCommit): nothing of ours lands."""
    publish(run_dir, REPO, private=False)
    reshard(run_dir, "150KB")
    hub_server.race_next_commit = True
    with pytest.raises(PublishError, match="changed on the Hub while publishing"):
        publish(run_dir, REPO, private=False)
    assert hub_server.repo(REPO).commits[head(hub_server)].summary == "Concurrent edit"
    assert remote_weights(hub_server) == ["model.safetensors"]
    publish(run_dir, REPO, private=False)  # re-running publishes on top of the new head
    assert len(remote_weights(hub_server)) > 2


def test_dropped_lfs_upload_then_rerun_completes(hub_server, run_dir, token, monkeypatch):
    """Catches a dropped connection during the LFS upload leaving a half-published repo, an error that
    does not say the repo it created is still there (and how to finish or delete it), or a re-run that
    cannot finish. The client retries a dropped PUT 5 times; drop all 6 attempts."""
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)  # skip the client's backoff waits
    hub_server.drop_next_lfs_upload = 6
    with pytest.raises(PublishError) as info:
        publish(run_dir, REPO, private=False)
    assert str(info.value) == (
        f"the connection to the Hub dropped while publishing {REPO}@main (RemoteProtocolError); nothing was "
        "committed, and a re-run does not send the uploaded files twice; the repo test-user/tiny-pruned was "
        "created by this publish but holds no commit: run the same command again to finish, or delete it with "
        f"`hf repos delete {REPO}` (or on {hub_server.endpoint}/{REPO}/settings)"
    )
    assert hub_server.dropped_lfs_uploads == 6
    assert set(hub_server.files(REPO)) == {".gitattributes"}  # the repo exists, but no commit was made
    hub_server.drop_next_lfs_upload = 0
    result = publish(run_dir, REPO, private=False)
    assert result.commit_sha == head(hub_server)
    assert remote_weights(hub_server) == ["model.safetensors"]


def test_dropped_upload_to_a_new_branch_names_the_branch_not_the_repo(
    hub_server, run_dir, token, monkeypatch
):
    """Catches an error after a failed upload to a new branch of an existing repo that offers to delete
    the whole repo, or says nothing of the branch it created."""
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
    publish(run_dir, REPO, private=False)
    reshard(run_dir, "150KB")  # new shards: something to upload
    hub_server.drop_next_lfs_upload = 100  # every attempt of every shard
    with pytest.raises(PublishError) as info:
        publish(run_dir, REPO, private=False, revision="experiment")
    message = str(info.value)
    assert message.endswith(
        f"the branch experiment of {REPO} was created by this publish but holds no commit: run the same "
        f"command again to finish, or delete it with `hf repos branch delete {REPO} experiment`"
    )
    assert "hf repos delete" not in message
    assert head(hub_server, "experiment") == head(hub_server)  # created from main, nothing on it


def test_dropped_commit_request_says_the_commit_may_have_been_made(hub_server, run_dir, token):
    """Catches a connection dropped on the commit request itself (the Hub may have committed without our
    hearing the answer) being reported as "nothing was committed", and a re-run that cannot finish."""
    hub_server.on_request = lambda route: route == "commit"
    with pytest.raises(PublishError) as info:
        publish(run_dir, REPO, private=False)
    message = str(info.value)
    assert message.startswith(
        f"the connection to the Hub dropped while committing to {REPO}@main (RemoteProtocolError), so the "
        f"commit may or may not have been made; the repo {REPO} was created by this publish but may hold the "
        "commit or none: run the same command again to finish"
    )
    assert "nothing was committed" not in message and f"`hf repos delete {REPO}`" in message
    assert set(hub_server.files(REPO)) == {".gitattributes"}
    hub_server.on_request = None
    result = publish(run_dir, REPO, private=False)
    assert result.commit_sha == head(hub_server) and remote_weights(hub_server) == ["model.safetensors"]


def test_ctrl_c_after_creating_the_repo_says_what_was_left(hub_server, run_dir, token, monkeypatch, capsys):
    """Catches Ctrl-C during the upload leaving an empty repo behind without a word about it."""
    from huggingface_hub import HfApi

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(HfApi, "upload_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish(run_dir, REPO, private=True)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"hubprune: interrupted; the repo {REPO} was created by this publish but holds no commit: run the same "
        f"command again to finish, or delete it with `hf repos delete {REPO}` (or on "
        f"{hub_server.endpoint}/{REPO}/settings)"
    )
    assert set(hub_server.files(REPO)) == {".gitattributes"}


def test_repo_is_created_after_every_check_right_before_the_upload(hub_server, run_dir, token, monkeypatch):
    """Catches the repo being created before the card is written or before the Hub validated its YAML
    (a failure there would leave an empty repo), or anything but the upload coming after it."""
    import hubprune.card

    def fail(*args, **kwargs):
        raise PublishError("the card cannot be written")

    with monkeypatch.context() as patch:
        patch.setattr(hubprune.card, "render_card", fail)
        with pytest.raises(PublishError, match="the card cannot be written"):
            publish(run_dir, REPO, private=False)
    assert not hub_server.repos  # a local failure after the Hub's checks left nothing behind

    hub_server.requests.clear()
    publish(run_dir, REPO, private=False)
    routes = [path for method, path in hub_server.requests if method in ("POST", "PUT")]
    created = routes.index("/api/repos/create")
    assert routes.index("/api/validate-yaml") < created
    after = [
        route for route in routes[created + 1 :] if route != "/api/validate-yaml"
    ]  # upload_folder checks too
    assert after[0].startswith(f"/api/models/{REPO}/preupload/"), routes


def test_model_that_does_not_load(hub_server, run_dir, token):
    """Catches a broken folder reaching the Hub: validation fails before any request."""
    (run_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PublishError, match="does not load with transformers.*nothing was uploaded"):
        publish(run_dir, REPO, private=False)
    assert hub_server.requests == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repo_id": "not a repo"}, "not a valid Hub repo id"),
        ({"repo_id": "no-owner"}, "must name its owner"),
        ({"create_pr": True, "revision": "dev"}, "cannot be combined with --revision"),
        ({"private": None}, "private or public"),
    ],
)
def test_bad_arguments(hub_server, run_dir, kwargs, message):
    """Catches bad arguments reaching the Hub instead of failing first with one sentence."""
    args = {"repo_id": REPO, "private": False, **kwargs}
    with pytest.raises(PublishError, match=message):
        publish(run_dir, args.pop("repo_id"), **args)
    assert hub_server.requests == []


def test_not_a_run_folder(hub_server, tmp_path):
    """Catches publishing a folder that hubprune did not write."""
    with pytest.raises(PublishError, match="not a hubprune run folder"):
        publish(tmp_path, REPO, private=False)


def test_visibility_mismatch_is_refused(hub_server, run_dir, token):
    """Catches --public silently publishing into an existing private repo (or the reverse)."""
    publish(run_dir, REPO, private=True)
    with pytest.raises(PublishError, match="already exists and is private"):
        publish(run_dir, REPO, private=False)


# -- the token --------------------------------------------------------------------------------------------


def test_token_never_leaks(hub_server, run_dir, token, capfd, caplog, monkeypatch):
    """Catches the token appearing in stdout/stderr, logs (huggingface_hub at DEBUG), README.md,
    hubprune.json, any published file or the commit description, on success and on failure."""
    from hubprune.cli import main

    caplog.set_level(logging.DEBUG)
    logging.getLogger("huggingface_hub").setLevel(logging.DEBUG)
    monkeypatch.setenv("HF_DEBUG", "1")
    assert main(["publish", str(run_dir), "--repo", REPO, "--private"]) == 0
    assert main(["publish", str(run_dir), "--repo", REPO, "--private", "--dry-run"]) == 0
    hub_server.reject_yaml = True
    assert main(["publish", str(run_dir), "--repo", REPO, "--private"]) == 1
    hub_server.reject_yaml = False
    wrong = "hf_test_wrong_token_for_leak_check"
    monkeypatch.setenv("HF_TOKEN", wrong)
    assert main(["publish", str(run_dir), "--repo", REPO, "--private"]) == 1
    captured = capfd.readouterr()
    assert "committed http" in captured.out and "HTTP 401" in captured.err

    texts = {"stdout": captured.out, "stderr": captured.err, "logs": caplog.text}
    texts.update(
        {p.name: p.read_text(encoding="utf-8", errors="replace") for p in run_dir.rglob("*") if p.is_file()}
    )
    repo = hub_server.repo(REPO)
    texts.update({f"commit {c.sha}": c.summary + c.description for c in repo.commits.values()})
    texts.update({f"hub:{p}": data.decode("utf-8", "replace") for p, data in hub_server.files(REPO).items()})
    assert "README.md" in texts and "hubprune.json" in texts
    for secret in (HUB_TOKEN, wrong):
        leaks = [name for name, text in texts.items() if secret in text]
        assert not leaks, f"token found in {leaks}"


def test_offline_mode_is_a_clear_error(hub_server, run_dir, token, monkeypatch):
    """Catches HF_HUB_OFFLINE=1 being reported as a dropped connection."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set"):
        publish(run_dir, REPO, private=False)


def test_card_takes_the_license_from_the_pulled_base_card(hub_server, pruned_run, token):
    """Catches a card that loses the base model's license when the manifest does not carry it: the
    pull stage cached the base repo's README.md, and the card reads it from the cache (no download)."""
    from huggingface_hub import HfApi, snapshot_download

    from hubprune.card import base_card_license
    from hubprune.plan import Manifest

    api = HfApi()
    api.create_repo("test-org/llama-base", private=False)
    readme = "---\nlicense: llama3.1\nlicense_name: llama3.1\n---\n# base\n"
    info = api.upload_file(
        path_or_fileobj=readme.encode(), path_in_repo="README.md", repo_id="test-org/llama-base"
    )
    snapshot_download("test-org/llama-base", revision=info.oid)
    manifest = Manifest.load(pruned_run)
    manifest.source.update({"base_model": "test-org/llama-base", "sha": info.oid, "license": None})
    requests = len(hub_server.requests)
    assert base_card_license(manifest) == {"license": "llama3.1", "license_name": "llama3.1"}
    assert len(hub_server.requests) == requests  # read from the cache only
