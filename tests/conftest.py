"""Test settings. The environment is fixed before anything imports huggingface_hub, which reads
it once: no real token can be used, telemetry is off, and the Hub cache is a throwaway folder."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_TOKEN"] = ""
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hubprune-test-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# The loopback Hub: starts a server and points HF_ENDPOINT at it before any test module imports
# huggingface_hub (see tests/conftest_hub.py).
pytest_plugins = ["tests.conftest_hub"]


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct weights as a transformers folder (converted once, cached)."""
    from hubprune import offline

    folder, _ = offline.model_folder("offline:smollm2-135m-instruct")
    return folder
