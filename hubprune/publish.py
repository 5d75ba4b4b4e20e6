"""The publish stage: push a run folder to a Hub model repo as one commit.

Order of work, so that a failure leaves nothing half-published:

1. check the arguments and the run folder (no network), then that the Hub answers (one quick TCP
   probe: an unreachable Hub fails in seconds; a dry run goes on and says what it could not check);
2. render the card for the target repo and validate everything locally: the folder reloads
   with transformers, one forward pass gives finite logits, the card's metadata parses and
   names a Hub id (never a local path) as ``base_model``;
3. ask the Hub to validate the card's YAML (``/api/validate-yaml``) *before* creating anything,
   and write the card and the pictures it links into the folder;
4. only then, right before the upload, ``create_repo(exist_ok=True, private=<explicit>)``, and a
   branch when ``revision`` is new;
5. one ``upload_folder`` of the whole folder: card and weights in the same commit, stale
   shards removed through ``delete_patterns`` in that commit, ``parent_commit`` pinned to the
   head we looked at (someone else's commit in between is a 412, not a silent overwrite).

LFS objects are uploaded before the commit is created, so a dropped connection or a kill leaves
the repo as it was; re-running the same command skips the objects already stored and commits.
The one thing a failed or killed publish can leave is what step 4 created: a repo (or branch)
that holds no commit of ours. The error (or, on Ctrl-C, the last line) names it and says how to
finish (run the same command again) or remove it (``hf repos delete``). Fault points for
tests/test_publish_faults.py (``HUBPRUNE_FAULT``, see `hubprune.rundir.fault_point`):
``publish-before-hub-write``, ``publish-after-create``, ``publish-after-commit``.
Publishing never edits ``hubprune.json``: what is uploaded is the run folder as it is (plus the
card re-rendered for the target repo), and ``hubprune run`` records the result itself.

The token is whatever huggingface_hub resolves (``HF_TOKEN``, ``hf auth login``, or an OIDC
exchange when ``HF_OIDC_RESOURCE`` is set) unless one is passed in; it is never printed,
logged or written, and it is scrubbed from every error message this module builds.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubprune import __version__
from hubprune.errors import HubpruneError, PublishError
from hubprune.plan import MANIFEST_NAME, Manifest
from hubprune.redact import public_text
from hubprune.rundir import fault_point

# Remote files that a re-publish deletes when the new folder does not have them: weights
# (a different shard count), their index, and the files hubprune itself generates.
DELETE_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    "*.pth",
    "layer_map.svg",
    "layer_map.png",
    "search_trace.svg",
    "eval/*",
]
# Never uploaded: hidden files and folders (.git, .cache, editor files) and Python caches. Matched with
# huggingface_hub's filter_repo_objects, as upload_folder does (which also adds its own .git patterns).
IGNORE_PATTERNS = [".*", "*/.*", "**/.*", "__pycache__/*", "**/__pycache__/*"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# What a dry run cannot tell without the Hub.
REMOTE_CHECKS = (
    "whether {repo} exists, and its visibility",
    "which of its files would be deleted (weights and generated files the folder no longer has)",
    "the Hub's validation of the card metadata",
)


@dataclass
class PublishResult:
    """What was (or, with ``dry_run``, would be) published."""

    repo_id: str
    revision: str
    private: bool
    files: list[str]
    deleted: list[str]
    commit_message: str
    commit_description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    unchecked: list[str] = field(default_factory=list)  # remote checks a dry run could not make (no Hub)
    commit_url: str | None = None
    commit_sha: str | None = None
    pr_url: str | None = None
    repo_url: str | None = None
    unchanged: bool = False  # the target already held exactly these files: no commit was made

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record for the manifest and logs: Hub ids, URLs and repo paths only, so it
        never holds a token or a local path."""
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "visibility": "private" if self.private else "public",
            "dry_run": self.dry_run,
            "commit_sha": self.commit_sha,
            "commit_url": self.commit_url,
            "pr_url": self.pr_url,
            "repo_url": self.repo_url,
            "unchanged": self.unchanged,
            "commit_message": self.commit_message,
            "files_uploaded": list(self.files),
            "files_deleted": list(self.deleted),
            "remote_checks_skipped": list(self.unchecked),
        }


def _say(message: str) -> None:
    print(message, flush=True)


def _scrub(text: str, token: str | None) -> str:
    """`text` with the token value (if any) replaced: messages must never carry it."""
    return text.replace(token, "***") if token else text


# -- what goes up ------------------------------------------------------------------------------------


def local_files(run_dir: Path) -> list[str]:
    """Relative paths of the files `upload_folder` will send: the same listing and the same filter it uses."""
    from huggingface_hub.utils import filter_repo_objects

    paths = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def stale_files(remote: list[str], local: list[str]) -> list[str]:
    """Remote files matching DELETE_PATTERNS that the local folder no longer has (never .gitattributes):
    exactly what the upload deletes, so a dry run shows it."""
    from huggingface_hub.utils import filter_repo_objects

    keep = {*local, ".gitattributes"}
    return sorted(p for p in filter_repo_objects(remote, allow_patterns=DELETE_PATTERNS) if p not in keep)


def default_commit_message(manifest: Manifest) -> str:
    """`Prune <base>: removed 6 of 30 blocks with block-influence (-20.1% parameters)`: the short
    :func:`hubprune.describe.summary`."""
    from hubprune.describe import summary

    base = manifest.source.get("base_model") or Path(str(manifest.source.get("spec", "model"))).name
    return public_text(f"Prune {base}: {summary(manifest, short=True)}")


def actions_run_url(env: dict[str, str] | None = None) -> str | None:
    """The GitHub Actions run URL when running inside Actions, else None."""
    env = dict(os.environ if env is None else env)
    if env.get("GITHUB_ACTIONS") != "true" or not env.get("GITHUB_RUN_ID"):
        return None
    server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
    url = f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env['GITHUB_RUN_ID']}"
    attempt = env.get("GITHUB_RUN_ATTEMPT")
    return f"{url}/attempts/{attempt}" if attempt and attempt != "1" else url


def commit_description(manifest: Manifest) -> str:
    """The commit's description: what was cut, from where, by which hubprune, from which CI run."""
    from hubprune.card import fmt_params

    plan, source = manifest.plan, manifest.source
    base = source.get("base_model") or source.get("spec")
    at = f"@{source['sha']}" if source.get("sha") else ""
    removed = ", ".join(u.name for u in plan.removed)
    lines = [
        f"Published with hubprune {__version__}.",
        "",
        f"Base model: {base}{at}",
        f"Method: {plan.method}; removed: {removed}",
        f"Parameters: {fmt_params(manifest.model_before.get('params_total'))} -> "
        f"{fmt_params(manifest.model_after.get('params_total'))}",
        "Details: hubprune.json and README.md in this commit.",
    ]
    run_url = actions_run_url()
    if run_url:
        lines.append(f"GitHub Actions run: {run_url}")
    return public_text("\n".join(lines))


# -- local validation ----------------------------------------------------------------------------------


def check_run_folder(run_dir: Path) -> Manifest:
    """The folder exists, holds a manifest, a config and weights."""
    if not run_dir.is_dir():
        raise PublishError(f"run folder {run_dir} does not exist")
    if not (run_dir / MANIFEST_NAME).is_file():
        raise PublishError(f"{run_dir} is not a hubprune run folder (it has no {MANIFEST_NAME})")
    if not (run_dir / "config.json").is_file():
        raise PublishError(f"{run_dir} has no config.json, so there is no model to publish")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in run_dir.iterdir()):
        raise PublishError(f"{run_dir} has no weights (*.safetensors), so there is no model to publish")
    try:
        return Manifest.load(run_dir)
    except (ValueError, KeyError, TypeError) as err:
        raise PublishError(f"{run_dir}/{MANIFEST_NAME} cannot be read ({type(err).__name__}: {err})") from err


def validate_model(run_dir: Path, manifest: Manifest) -> None:
    """Reload the folder with stock transformers and run one forward pass; the logits must be finite
    and the block count must match the manifest. Any failure is a PublishError."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    remote_code = (manifest.export or {}).get("format") == "compact"
    # The checkpoint's own dtype, spread over the GPUs (and CPU) when there are any: a large model
    # must fit for this check, not only a small one.
    placement = {"device_map": "auto"} if torch.cuda.is_available() else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            run_dir, dtype="auto", trust_remote_code=remote_code, **placement
        )
        model.eval()
        ids = tokenizer("Pruned models should still read this sentence.", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids.to(model.device)).logits
    except Exception as err:  # any reason the folder does not load is the user's to fix
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise PublishError(
            f"the model in {run_dir} does not load with transformers ({type(err).__name__}: {first}); nothing was uploaded"
        ) from err
    if not torch.isfinite(logits).all():
        raise PublishError(f"the model in {run_dir} produces non-finite logits; nothing was uploaded")
    expected = manifest.model_after.get("num_blocks")
    layers = getattr(model.config, "num_hidden_layers", None)
    if expected is not None and layers is not None and int(layers) != int(expected):
        raise PublishError(
            f"the model in {run_dir} has {layers} blocks but {MANIFEST_NAME} says {expected}; "
            "re-export the folder before publishing"
        )
    del model


def validate_card_text(text: str) -> dict[str, Any]:
    """Parse the card's metadata as the Hub will; returns it. `base_model` must be a Hub id."""
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(text).data.to_dict()
    except Exception as err:
        raise PublishError(f"the model card's metadata does not parse ({type(err).__name__}: {err})") from err
    base = data.get("base_model")
    if isinstance(base, str) and (base.startswith((".", "/", "~")) or Path(base).exists()):
        raise PublishError(f"the card's base_model '{base}' is a local path, not a Hub model id")
    if data.get("base_model_relation") == "merge":
        raise PublishError("the card says base_model_relation: merge, but a pruned model is not a merge")
    return data


# -- the publish stage --------------------------------------------------------------------------------


def publish(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
) -> PublishResult:
    """Publish RUN_DIR to the Hub model repo `repo_id` in one commit (see the module docstring).

    Args:
        run_dir: the run folder (the repo's content).
        repo_id: `owner/name`.
        private: visibility of a new repo; an existing repo with the other visibility is refused.
        revision: a branch to publish to (created from main if missing) or `refs/pr/N`.
        create_pr: open a pull request against main instead of committing to it.
        commit_message: the commit's title; default says what was cut.
        dry_run: print what would be uploaded and deleted, the card metadata and the commit; change
            nothing. Without the Hub it still works, and says which remote checks it could not make.
        token: a Hub token; default: what huggingface_hub resolves (HF_TOKEN, login, OIDC).

    Returns:
        PublishResult with the commit URL (and PR URL).

    Raises:
        PublishError: bad arguments, a folder that does not load, an unreachable Hub (in seconds, before
        the model is loaded), a card the Hub rejects, a refused token, a repo changed under us, a
        dropped connection. Nothing is left half-published.
    """
    from hubprune.card import is_generated, render_card_text
    from hubprune.hub import hub_reachable, validate_repo_id

    folder = Path(run_dir)
    if not isinstance(private, bool):
        raise PublishError("say whether the repo is private or public (--private or --public)")
    if create_pr and revision:
        raise PublishError(
            "--create-pr opens a pull request against main and cannot be combined with --revision; "
            "to add to an open pull request, publish to --revision refs/pr/N"
        )
    try:
        validate_repo_id(repo_id)
    except HubpruneError as err:
        raise PublishError(str(err)) from err
    if "/" not in repo_id:
        raise PublishError(f"'{repo_id}' must name its owner: owner/name")
    manifest = check_run_folder(folder)
    reachable = hub_reachable()
    if not reachable and not dry_run:
        raise PublishError(
            f"publishing needs the Hub, but {_unreachable()}; nothing was published (--dry-run shows what would be)"
        )

    card_path = folder / "README.md"
    card_text = (
        render_card_text(folder, repo_id=repo_id)
        if not card_path.exists() or is_generated(card_path)
        else card_path.read_text(encoding="utf-8")
    )
    metadata = validate_card_text(card_text)
    _say(f"validating {folder}: reloading the model and running one forward pass")
    validate_model(folder, manifest)

    message = commit_message or default_commit_message(manifest)
    description = commit_description(manifest)
    branch = revision or "main"
    rewrite_card = not card_path.exists() or is_generated(card_path)
    files = _files_after_render(local_files(folder), manifest) if rewrite_card else local_files(folder)

    try:
        return _publish_remote(
            folder,
            repo_id,
            private=private,
            branch=branch,
            revision=revision,
            create_pr=create_pr,
            message=message,
            description=description,
            card_text=card_text,
            rewrite_card=rewrite_card,
            metadata=metadata,
            files=files,
            dry_run=dry_run,
            reachable=reachable,
            token=token,
        )
    except PublishError as err:
        err.args = (_scrub(str(err), token or _resolved_token()),)  # keeps the cause chain for HUBPRUNE_DEBUG
        raise


def _unreachable() -> str:
    """Why the Hub cannot be used: HF_HUB_OFFLINE, or the endpoint does not answer."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return f"the Hugging Face Hub ({constants.ENDPOINT}) is unreachable from here"


def _files_after_render(files: list[str], manifest: Manifest) -> list[str]:
    """`files` as they will be once the card is rendered for upload: README.md and the pictures it
    links added, a stale trace plot removed (so a dry run lists what the real publish sends)."""
    from hubprune.layer_map import pictures

    drawn = pictures(manifest.plan, int(manifest.model_before["num_blocks"]))
    gone = {name for name, svg in drawn.items() if svg is None}
    return sorted({*files, "README.md", *(name for name, svg in drawn.items() if svg)} - gone)


def _resolved_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def _find_cause(err: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` in `err`'s chain (itself, its cause, their context)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _publish_remote(
    folder: Path,
    repo_id: str,
    *,
    private: bool,
    branch: str,
    revision: str | None,
    create_pr: bool,
    message: str,
    description: str,
    card_text: str,
    rewrite_card: bool,
    metadata: dict[str, Any],
    files: list[str],
    dry_run: bool,
    reachable: bool,
    token: str | None,
) -> PublishResult:
    from huggingface_hub import HfApi, ModelCard
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OIDCError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from hubprune.card import render_card

    api = HfApi(token=token)
    where = f"{repo_id}@{branch}"
    result = PublishResult(
        repo_id=repo_id,
        revision=branch,
        private=private,
        files=files,
        deleted=[],
        commit_message=message,
        commit_description=description,
        metadata=metadata,
        dry_run=dry_run,
    )
    if dry_run and not reachable:  # say what could not be checked
        result.unchecked = [check.format(repo=repo_id) for check in REMOTE_CHECKS]
        _print_dry_run(result, folder, None, create_pr)
        return result
    created = ""  # what this publish created on the Hub (a repo, a branch), named if it fails
    try:
        # What is there now: existing files (for the stale-shard deletions) and the head to pin.
        exists, branch_missing, head, remote_files = True, False, None, []
        try:
            info = api.repo_info(repo_id, revision=None if create_pr else revision)
            head, remote_files = info.sha, [s.rfilename for s in info.siblings or []]
            if info.private is not None and bool(info.private) != private:
                have = "private" if info.private else "public"
                raise PublishError(
                    f"{repo_id} already exists and is {have}, but --{'private' if private else 'public'} "
                    f"was asked; pass --{have} or change its visibility on the Hub first"
                )
        except RevisionNotFoundError:
            branch_missing = True
            info = api.repo_info(repo_id)  # the branch will be created from main's head
            head, remote_files = info.sha, [s.rfilename for s in info.siblings or []]
        except RepositoryNotFoundError:
            exists = False
        result.deleted = stale_files(remote_files, files)

        # The Hub checks the card's YAML before anything is created or uploaded (a dry run too).
        ModelCard(card_text).validate(repo_type="model")
        if dry_run:
            _print_dry_run(result, folder, exists, create_pr)
            return result

        if rewrite_card:
            render_card(folder, repo_id=repo_id)  # the card checked above, and the pictures it links
            # What upload_folder sends and deletes now, exactly (the head is pinned, so remote_files holds).
            result.files = local_files(folder)
            result.deleted = stale_files(remote_files, result.files)
        fault_point("publish-before-hub-write")

        # Created as late as possible: after every local check and the Hub's validation, right before
        # the upload, so that a failure before this point leaves nothing on the Hub.
        if not exists:
            _say(f"creating {'private' if private else 'public'} repo {repo_id}")
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        result.repo_url = str(repo_url)
        if not exists:
            created = f"the repo {repo_id}"
        if revision and not revision.startswith("refs/") and (branch_missing or not exists):
            _say(f"creating branch {branch} from main")
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            created = created or f"the branch {branch} of {repo_id}"
        if not exists or branch_missing:
            head = api.repo_info(repo_id, revision=None if create_pr else revision).sha
        fault_point("publish-after-create")

        _say(f"uploading {len(result.files)} files to {where}" + (" as a pull request" if create_pr else ""))
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=None if create_pr else revision,
            create_pr=create_pr,
            commit_message=message,
            commit_description=description,
            ignore_patterns=list(IGNORE_PATTERNS),  # a copy: upload_folder appends its own to the list
            delete_patterns=[glob.escape(name) for name in result.deleted] or None,
            parent_commit=head,
        )
        fault_point("publish-after-commit")
    except PublishError:
        raise
    except KeyboardInterrupt:
        if created:
            print(
                f"hubprune: interrupted; {_left_behind(created, repo_id, branch)}",
                file=sys.stderr,
                flush=True,
            )
        raise
    except (LocalTokenNotFoundError, OIDCError) as err:
        raise PublishError(f"no usable Hub token: {err}" + _also_left(created, repo_id, branch)) from err
    except HfHubHTTPError as err:
        raise PublishError(_http_message(err, repo_id, where) + _also_left(created, repo_id, branch)) from err
    except ValueError as err:  # the Hub's YAML validation (before anything is uploaded)
        raise PublishError(
            f"the Hub rejected the model card metadata, nothing was published: {_yaml_errors(str(err))}"
        ) from err
    except (RuntimeError, *_transport_errors()) as err:
        # huggingface_hub wraps a failed LFS transfer in RuntimeError("Error while uploading ...").
        cause = _find_cause(err, (HfHubHTTPError, *_transport_errors()))
        if isinstance(cause, HfHubHTTPError):
            raise PublishError(
                _http_message(cause, repo_id, where) + _also_left(created, repo_id, branch)
            ) from err
        if cause is None:
            raise
        if dry_run:
            raise PublishError(
                f"the connection to the Hub dropped while the dry run checked {where} ({type(cause).__name__}); "
                "nothing was changed"
            ) from err
        if _during_commit(cause):  # the Hub may have made the commit without our hearing the answer
            raise PublishError(
                f"the connection to the Hub dropped while committing to {where} ({type(cause).__name__}), so "
                "the commit may or may not have been made; "
                + (
                    _left_behind(created, repo_id, branch, maybe_committed=True)
                    or "run the same command again to finish (it commits only what is missing)"
                )
            ) from err
        raise PublishError(
            f"the connection to the Hub dropped while publishing {where} ({type(cause).__name__}); nothing was "
            "committed, and a re-run does not send the uploaded files twice; "
            + (_left_behind(created, repo_id, branch) or "run the same command again to finish")
        ) from err

    result.commit_url = info.commit_url
    result.commit_sha = info.oid
    result.pr_url = info.pr_url
    if info.oid == head and not info.pr_url:
        # huggingface_hub skips a commit that would change nothing and returns the current head.
        result.unchanged = True
        _say(f"{where} already holds this run folder; nothing to commit ({info.commit_url})")
        return result
    _say(f"committed {info.commit_url}")
    if info.pr_url:
        _say(f"pull request {info.pr_url}")
    if result.deleted:
        _say(f"deleted stale files: {', '.join(result.deleted)}")
    return result


def _left_behind(created: str, repo_id: str, branch: str, maybe_committed: bool = False) -> str:
    """What a failed publish left on the Hub and how to finish or remove it ("" when it created nothing):
    the repo or branch it created holds no commit of ours (or, `maybe_committed`, may hold it)."""
    if not created:
        return ""
    from huggingface_hub import constants

    holds = "may hold the commit or none" if maybe_committed else "holds no commit"
    if created.startswith("the repo"):
        remove = f"`hf repos delete {repo_id}` (or on {constants.ENDPOINT}/{repo_id}/settings)"
    else:
        remove = f"`hf repos branch delete {repo_id} {branch}`"
    return (
        f"{created} was created by this publish but {holds}: run the same command again to finish, "
        f"or delete it with {remove}"
    )


def _also_left(created: str, repo_id: str, branch: str) -> str:
    """`_left_behind` as the tail of another error's sentence."""
    left = _left_behind(created, repo_id, branch)
    return f"; {left}" if left else ""


def _during_commit(err: BaseException) -> bool:
    """Whether a transport error happened on the commit request itself (not on an LFS upload)."""
    try:
        url = str(err.request.url)  # httpx errors carry their request; reading it unset raises RuntimeError
    except (AttributeError, RuntimeError):
        return False
    return "/commit/" in url


def _yaml_errors(text: str) -> str:
    """The messages of a validate-yaml answer (JSON with an `errors` list), on one line."""
    import json

    try:
        errors = [e.get("message", "") for e in json.loads(text).get("errors", [])]
    except (ValueError, AttributeError):
        errors = []
    return "; ".join(e for e in errors if e) or " ".join(text.split())


def _http_message(err: Any, repo_id: str, where: str) -> str:
    """One sentence for an HTTP error from the Hub."""
    status = err.response.status_code if getattr(err, "response", None) is not None else None
    server = (getattr(err, "server_message", None) or "").strip().replace("\n", " ")
    detail = f" ({server})" if server else ""
    if status == 401:
        has_token = _resolved_token() is not None
        return (
            f"the Hub refused the token (HTTP 401){detail}: set HF_TOKEN to a token with write access to "
            f"{repo_id.split('/')[0]}, or run `hf auth login`"
            if has_token
            else "no Hub token is set (HTTP 401): set HF_TOKEN or run `hf auth login`"
        )
    if status == 403:
        return f"the token may not write to {repo_id} (HTTP 403){detail}"
    if status == 412:
        return (
            f"{where} changed on the Hub while publishing (someone else committed); nothing was committed: "
            "check the repo and run the command again to publish on top of the new head"
        )
    if status == 404:
        return f"{where} was not found on the Hub (HTTP 404){detail}"
    return f"the Hub refused to publish {where} (HTTP {status}){detail}; nothing was committed"


def _print_dry_run(result: PublishResult, folder: Path, exists: bool | None, create_pr: bool) -> None:
    """What would be uploaded and deleted, the commit and the card metadata, and what was checked on
    the Hub (`exists` is None when the Hub could not be asked); nothing is sent."""
    import yaml

    visibility = "private" if result.private else "public"
    target = f"{result.repo_id}@{result.revision}" + (" (pull request)" if create_pr else "")
    print(f"dry run: would publish {folder} to {target}" + (" (new repo)" if exists is False else ""))
    print(f"commit message: {result.commit_message}")
    print("commit description:")
    for line in result.commit_description.splitlines():
        print(f"  {line}")
    print(f"upload ({len(result.files)} files):")
    for name in result.files:
        path = folder / name
        print(
            f"  {name}  "
            + (f"{path.stat().st_size:,} bytes" if path.exists() else "(rendered when publishing)")
        )
    if exists is not None:
        print(f"delete ({len(result.deleted)} stale files):")
        for name in result.deleted:
            print(f"  {name}")
    print("card metadata:")
    print(yaml.safe_dump(result.metadata, sort_keys=False).rstrip())
    if exists is None:
        print(f"not checked, because {_unreachable()} (run it again with the Hub to check):")
        for check in result.unchecked:
            print(f"  {check}")
        return
    print("checked on the Hub:")
    state = f"exists, {visibility}" if exists else f"does not exist yet; it would be created {visibility}"
    print(f"  {result.repo_id} {state}")
    print("  the card metadata passes the Hub's validation")
