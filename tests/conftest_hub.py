"""pytest plugin: one fake Hub (``tests/hub_server.py``) for the session, and the ``hub_server`` fixture.

huggingface_hub reads ``HF_ENDPOINT`` (and ``HF_HOME``, ``HF_HUB_DISABLE_XET``, ...) once, when
``huggingface_hub.constants`` is first imported (a bare ``import huggingface_hub`` is lazy and does not, but
``from huggingface_hub import HfApi`` or importing transformers does). So the server is started, and the environment pointed at it, when *this module is imported* -- not
in a fixture. Load it before anything imports huggingface_hub (or transformers, or hubprune), e.g. in
``tests/conftest.py``::

    pytest_plugins = ["tests.conftest_hub"]

with no top-level import of huggingface_hub / transformers / hubprune in that conftest (pytest imports the
plugins of a conftest right after the conftest itself, before it collects any test module). ``pytest -p
tests.conftest_hub`` works too. The ``hub_server`` fixture fails loudly if huggingface_hub was imported first
and so talks to another endpoint.

Subprocesses started by the tests inherit the environment, so they use the fake Hub too.

(PYTEST_DONT_REWRITE: no asserts here, and no warning when a test module imported this before pytest did.)
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub_server import HubServer

HUB_TOKEN = "hf_test_fake_hub_write_token"  # the only token the fake Hub accepts
HUB = HubServer(token=HUB_TOKEN).start()
HF_HOME = tempfile.mkdtemp(prefix="fake-hub-hf-home-")

_IMPORTED_TOO_LATE = "huggingface_hub.constants" in sys.modules
os.environ.update(
    {
        "HF_ENDPOINT": HUB.endpoint,
        "HF_HOME": HF_HOME,  # an empty cache and no saved token
        "HF_HUB_CACHE": os.path.join(HF_HOME, "hub"),
        "HF_TOKEN": "",  # no token unless a test passes one (HUB_TOKEN, or a wrong one)
        "HF_HUB_DISABLE_XET": "1",  # uploads take the preupload + LFS batch + PUT + commit path
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
    }
)
_no_proxy = [os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or "", "127.0.0.1", "localhost"]
os.environ["no_proxy"] = os.environ["NO_PROXY"] = ",".join(
    filter(None, _no_proxy)
)  # httpx would proxy loopback
for _var in ("HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_ENABLE_HF_TRANSFER"):
    os.environ.pop(_var, None)


@atexit.register
def _cleanup() -> None:
    HUB.stop()
    shutil.rmtree(HF_HOME, ignore_errors=True)


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """The session's fake Hub, emptied for this test: ``.endpoint``, ``.token``, ``.reject_yaml``,
    ``.drop_next_lfs_upload``, ``.race_next_commit``, ``.on_request``, ``.concurrent_commit(repo_id)``, ``.files(repo_id)``,
    ``.requests``. Fails the test if the fake Hub hit an internal error while serving it."""
    from huggingface_hub import constants, hf_api

    if {constants.ENDPOINT, hf_api.api.endpoint} != {HUB.endpoint}:
        pytest.fail(
            f"huggingface_hub talks to {constants.ENDPOINT}, not the fake Hub at {HUB.endpoint}: it was imported"
            f" before tests.conftest_hub (imported too late: {_IMPORTED_TOO_LATE}). Load the plugin first, e.g."
            ' `pytest_plugins = ["tests.conftest_hub"]` in tests/conftest.py.'
        )
    HUB.reset()
    yield HUB
    errors, HUB.errors = HUB.errors, []
    if errors:
        pytest.fail("the fake Hub failed while serving this test:\n" + "\n".join(errors))


@pytest.fixture
def unreachable_endpoint() -> str:
    """An ``HF_ENDPOINT`` where nothing listens (a loopback port just released): a Hub that cannot be reached."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory) -> Path:
    """A tiny Llama pruned by one block with hubprune's own pipeline: a real run folder."""
    from hubprune.methods import Budget
    from hubprune.pipeline import SourceOptions, prune
    from tests.tiny import save_tiny

    root = tmp_path_factory.mktemp("publish")
    base = save_tiny(root / "base", "llama", num_layers=4)
    run = root / "run"
    prune(
        SourceOptions(spec=str(base), base_model="test-org/tiny-llama"), "reverse-order", Budget.parse(1), run
    )
    return run


@pytest.fixture
def run_dir(pruned_run, tmp_path) -> Path:
    """A fresh copy of the run folder for one test (publish re-renders its card)."""
    return Path(shutil.copytree(pruned_run, tmp_path / "run"))
