"""Everything that talks to the Hugging Face Hub. It knows nothing about pruning methods.

Downloads go through `huggingface_hub.snapshot_download` (retries, caching, auth). The token is
whatever huggingface_hub resolves (`HF_TOKEN`, `hf auth login`); it is never read, printed or
stored here. Hub errors become :class:`~hubprune.errors.SourceError` with one sentence.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hubprune.errors import HubUnreachableError, SourceError

#: Seconds to wait for a TCP connection to the Hub before calling it unreachable.
REACHABLE_TIMEOUT_S = 3.0

# What a model folder needs; weights are added below by format.
_BASE_PATTERNS = [
    "*.json",
    "*.jinja",
    "*.model",
    "*.txt",
    "*.tiktoken",
    "*.py",
    "LICENSE*",
    "NOTICE*",
    "USE_POLICY*",
    "README.md",
]
LICENSE_PATTERNS = ("LICENSE*", "NOTICE*", "USE_POLICY*", "Notice*", "LICENCE*")
#: What to use instead of a Hub model when the Hub cannot be reached.
OFFLINE_MODEL_ALTERNATIVES = (
    "use the bundled offline:smollm2-135m-instruct, a local model folder or a .gguf file instead"
)


@dataclass(frozen=True)
class Pulled:
    """A downloaded snapshot: where it is and which commit it is."""

    repo_id: str
    revision: str | None
    sha: str
    local_dir: Path


@functools.cache
def _endpoint_reachable(endpoint: str, offline_mode: bool) -> bool:
    if offline_mode:
        return False
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=REACHABLE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether the Hub endpoint (``HF_ENDPOINT``) accepts a TCP connection; ``HF_HUB_OFFLINE`` means no.

    One connection attempt with a short timeout, remembered for the process, so a machine without
    network learns it in seconds instead of after huggingface_hub's retries with backoff.
    """
    from huggingface_hub import constants

    return _endpoint_reachable(constants.ENDPOINT, bool(constants.HF_HUB_OFFLINE))


def require_hub(what: str, alternative: str) -> None:
    """Raise :class:`HubUnreachableError` naming `what` needed the Hub and the offline `alternative`."""
    if not hub_reachable():
        raise HubUnreachableError(
            f"{what} needs the Hugging Face Hub, which is unreachable from here; {alternative}"
        )


def validate_repo_id(repo_id: str) -> None:
    """Raise SourceError unless `repo_id` is a well-formed `owner/name` (or `name`) Hub id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as _validate

    try:
        _validate(repo_id)
    except HFValidationError as err:
        raise SourceError(
            f"'{repo_id}' is not a valid Hub repo id (expected owner/name with letters, digits, '-', '_', '.')"
        ) from err


def pull(
    repo_id: str,
    revision: str | None = None,
    *,
    allow_pickle: bool = False,
    cache_dir: str | None = None,
    weight_files: Collection[str] | None = None,
) -> Pulled:
    """Download a model repo's config, tokenizer, license files and weights.

    Only `*.safetensors` weights are fetched unless `allow_pickle` (pickled `.bin` files can run
    code when loaded). `weight_files` names the only weight files to fetch (empty: none, only the
    config, the safetensors index, tokenizer and license files), for a caller that learns from the
    index which shards it needs. The commit sha is the snapshot folder's name. With the Hub
    unreachable, a snapshot already in the local cache is used as is; otherwise the error comes in
    seconds and names the offline alternatives, instead of after the client's retries.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    validate_repo_id(repo_id)
    if weight_files is None:
        patterns = _BASE_PATTERNS + ["*.safetensors"] + (["*.bin", "*.pt"] if allow_pickle else [])
    else:
        patterns = _BASE_PATTERNS + sorted(weight_files)
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                cache_dir=cache_dir,
                local_files_only=not hub_reachable(),
            )
        )
    except GatedRepoError as err:
        raise SourceError(f"{where} is gated: accept its terms on the Hub and set HF_TOKEN") from err
    except RepositoryNotFoundError as err:
        raise SourceError(
            f"model repo {repo_id} was not found on the Hub (or it is private and no valid token is set)"
        ) from err
    except RevisionNotFoundError as err:
        raise SourceError(f"revision '{revision}' does not exist in {repo_id}") from err
    except LocalEntryNotFoundError as err:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub is unreachable"
        raise HubUnreachableError(
            f"{where} is not in the local cache and {why}; {OFFLINE_MODEL_ALTERNATIVES}"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise SourceError(f"the Hub refused to serve {where} (HTTP {status})") from err
    has_weights = any(path.glob("*.safetensors")) or (allow_pickle and any(path.glob("*.bin")))
    if weight_files is None and not has_weights:
        hint = "" if allow_pickle else " (pickled .bin weights are only fetched with --allow-pickle)"
        raise SourceError(f"{where} has no safetensors weights{hint}")
    return Pulled(repo_id=repo_id, revision=revision, sha=path.name, local_dir=path)
