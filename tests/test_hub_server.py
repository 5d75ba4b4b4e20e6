"""The fake Hub (tests/hub_server.py) driven by the real huggingface_hub and transformers clients, no mocks."""

# First: importing the plugin points HF_ENDPOINT at the fake Hub before huggingface_hub is imported.
import tests.conftest_hub  # noqa: F401, I001

from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

pytest_plugins = ["tests.conftest_hub"]  # the hub_server fixture (redundant once tests/conftest.py loads it)

REPO = "test-user/tiny-llama"
README = "---\nlicense: apache-2.0\ntags:\n- pruned\n---\n# Tiny Llama\n\nA test model.\n"


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    """A folder as `save_pretrained` writes it (model.safetensors, config.json, ...) plus a README with YAML."""
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    (folder / "README.md").write_text(README)
    return folder


@pytest.fixture
def api(hub_server):
    return HfApi(endpoint=hub_server.endpoint, token=hub_server.token)


@pytest.fixture
def repo(api):
    api.create_repo(REPO, private=False)
    return REPO


def count(hub_server, method, fragment):
    """How many requests the fake Hub got with this method and ``fragment`` in the path."""
    return sum(1 for m, path in hub_server.requests if m == method and fragment in path)


def test_endpoint_is_the_fake_hub(hub_server):
    from huggingface_hub import constants

    assert hub_server.endpoint == constants.ENDPOINT
    assert constants.HF_HUB_DISABLE_XET


def test_create_repo_twice(api, hub_server):
    url = api.create_repo(REPO, private=False)
    assert url == f"{hub_server.endpoint}/{REPO}" and url.repo_id == REPO
    assert api.create_repo(REPO, private=False, exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO, private=False)
    assert err.value.response.status_code == 409
    # A bare name goes to the token owner's namespace.
    assert api.create_repo("bare", private=False).repo_id == "test-user/bare"
    assert api.whoami()["name"] == "test-user"


def test_upload_download_and_load(api, hub_server, repo, model_dir, tiny_model):
    info = api.upload_folder(repo_id=repo, folder_path=model_dir, commit_message="Upload tiny model")

    # One commit; the weights go through preupload -> LFS batch -> PUT, the small files inline.
    assert count(hub_server, "POST", "/commit/") == 1
    assert count(hub_server, "POST", "/info/lfs/objects/batch") == 1
    assert count(hub_server, "PUT", "/_lfs/") == 1
    tree = {f.path: f for f in api.list_repo_tree(repo, recursive=True)}
    assert tree["model.safetensors"].lfs is not None and tree["README.md"].lfs is None
    assert api.repo_info(repo).sha == info.oid

    local = Path(snapshot_download(repo))
    assert {p.name for p in local.iterdir()} == {p.name for p in model_dir.iterdir()} | {".gitattributes"}
    for path in model_dir.iterdir():
        assert (local / path.name).read_bytes() == path.read_bytes()

    loaded = AutoModelForCausalLM.from_pretrained(repo).eval()
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)

    card = ModelCard.load(repo)
    assert card.data.license == "apache-2.0" and card.data.tags == ["pruned"]


def test_reupload_with_delete_patterns_removes_old_files(api, hub_server, repo, model_dir, tmp_path):
    (model_dir / "logs").mkdir()
    (model_dir / "logs" / "train.txt").write_text("step 1\n")
    (model_dir / "old.txt").write_text("stale\n")
    api.upload_folder(repo_id=repo, folder_path=model_dir)
    assert {"logs/train.txt", "old.txt"} <= set(api.list_repo_files(repo))

    (model_dir / "old.txt").unlink()
    (model_dir / "logs" / "train.txt").unlink()
    (model_dir / "logs").rmdir()
    (model_dir / "new.txt").write_text("fresh\n")
    puts = count(hub_server, "PUT", "/_lfs/")
    api.upload_folder(repo_id=repo, folder_path=model_dir, delete_patterns="*")

    expected = {p.name for p in model_dir.iterdir()} | {".gitattributes"}  # .gitattributes is never deleted
    assert set(api.list_repo_files(repo)) == expected == set(hub_server.files(repo))
    assert count(hub_server, "PUT", "/_lfs/") == puts  # unchanged weights are not uploaded again


def test_create_pr_leaves_main_untouched(api, hub_server, repo, model_dir):
    api.upload_folder(repo_id=repo, folder_path=model_dir)
    main_before = api.repo_info(repo).sha

    (model_dir / "README.md").write_text(README + "\nProposed change.\n")
    info = api.upload_folder(repo_id=repo, folder_path=model_dir, create_pr=True)
    assert info.pr_num == 1 and info.pr_revision == "refs/pr/1"
    assert info.pr_url == f"{hub_server.endpoint}/{repo}/discussions/1"
    assert api.repo_info(repo).sha == main_before
    assert "Proposed change" not in Path(hf_hub_download(repo, "README.md")).read_text()
    assert "Proposed change" in Path(hf_hub_download(repo, "README.md", revision="refs/pr/1")).read_text()

    refs = api.list_repo_refs(repo, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", info.oid)]

    # Pushing to the PR ref adds a commit to the PR, still not to main.
    api.upload_file(path_or_fileobj=b"more\n", path_in_repo="extra.txt", repo_id=repo, revision="refs/pr/1")
    assert "extra.txt" in hub_server.files(repo, revision="refs/pr/1")
    assert "extra.txt" not in hub_server.files(repo)
    assert api.repo_info(repo).sha == main_before
    with pytest.raises(ValueError):  # upload_folder refuses create_pr together with a revision
        api.upload_folder(repo_id=repo, folder_path=model_dir, revision="refs/pr/1", create_pr=True)


def test_create_branch_and_upload_to_it(api, hub_server, repo, model_dir):
    main_before = api.repo_info(repo).sha
    api.create_branch(repo, branch="pruned")
    api.upload_folder(repo_id=repo, folder_path=model_dir, revision="pruned")

    assert api.repo_info(repo).sha == main_before
    assert "model.safetensors" in api.list_repo_files(repo, revision="pruned")
    assert "model.safetensors" not in api.list_repo_files(repo)
    assert {b.name for b in api.list_repo_refs(repo).branches} == {"main", "pruned"}
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(repo, branch="pruned")
    assert err.value.response.status_code == 409
    api.create_branch(repo, branch="pruned", exist_ok=True)


def test_rejected_yaml_raises_before_any_upload(api, hub_server, repo, model_dir):
    hub_server.reject_yaml = "license: not a valid license id"
    with pytest.raises(ValueError, match="not a valid license id"):
        api.upload_folder(repo_id=repo, folder_path=model_dir)
    assert count(hub_server, "POST", "/preupload/") == 0
    assert count(hub_server, "PUT", "/_lfs/") == count(hub_server, "POST", "/commit/") == 0

    hub_server.reject_yaml = False
    (model_dir / "README.md").write_text("---\nlicense: [unclosed\n---\n")  # really broken YAML
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_folder(repo_id=repo, folder_path=model_dir)


def test_bad_or_missing_token_is_401(hub_server, repo):
    bad = HfApi(endpoint=hub_server.endpoint, token="hf_wrong_token")
    with pytest.raises(HfHubHTTPError) as err:
        bad.create_repo("test-user/other", private=False)
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        bad.whoami()
    assert err.value.response.status_code == 401

    anonymous = HfApi(endpoint=hub_server.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    assert err.value.response.status_code == 401
    assert anonymous.repo_info(repo).id == repo  # reading a public repo needs no token


def test_stale_parent_commit_is_412(api, hub_server, repo):
    def add(name, parent):
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=name.encode())]
        return api.create_commit(repo, operations=ops, commit_message=f"add {name}", parent_commit=parent)

    head = api.repo_info(repo).sha
    hub_server.concurrent_commit(repo)
    with pytest.raises(HfHubHTTPError) as err:
        add("a.txt", head)
    assert err.value.response.status_code == 412
    head = add("a.txt", api.repo_info(repo).sha).oid  # with the fresh parent it goes through

    hub_server.race_next_commit = True  # someone pushes between our read of the head and our commit
    with pytest.raises(HfHubHTTPError) as err:
        add("b.txt", head)
    assert err.value.response.status_code == 412
    assert "b.txt" not in hub_server.files(repo)


def test_dropped_lfs_put_is_retried_and_rerun_skips_stored_objects(api, hub_server, repo, model_dir):
    hub_server.drop_next_lfs_upload = True
    api.upload_folder(repo_id=repo, folder_path=model_dir)  # the client retries the PUT after ~1 s
    assert hub_server.dropped_lfs_uploads == 1
    assert count(hub_server, "PUT", "/_lfs/") == 2
    assert hub_server.files(repo)["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()

    # A commit that fails (stale parent) and is re-run does not upload the LFS object again.
    (model_dir / "README.md").write_text(README + "\nv2\n")
    (model_dir / "model.safetensors").write_bytes(b"new weights")
    head = api.repo_info(repo).sha
    hub_server.concurrent_commit(repo)
    with pytest.raises(HfHubHTTPError):
        api.upload_folder(repo_id=repo, folder_path=model_dir, parent_commit=head)
    puts = count(hub_server, "PUT", "/_lfs/")
    api.upload_folder(repo_id=repo, folder_path=model_dir, parent_commit=api.repo_info(repo).sha)
    assert count(hub_server, "PUT", "/_lfs/") == puts
    assert hub_server.files(repo)["model.safetensors"] == b"new weights"


def test_unknown_repo_revision_and_file(api, hub_server, repo):
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("test-user/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/missing", "config.json")
    with pytest.raises(OSError, match="test-user/missing"):
        AutoModelForCausalLM.from_pretrained("test-user/missing")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, ".gitattributes", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "config.json")
    assert not api.file_exists(repo, "config.json") and api.file_exists(repo, ".gitattributes")


def test_private_repo_needs_the_token(api, hub_server):
    api.create_repo("test-user/secret", private=True)
    assert api.repo_info("test-user/secret").private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub_server.endpoint, token=False).repo_info("test-user/secret")
