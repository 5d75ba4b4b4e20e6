"""Resumable state of a long scoring run, kept in the hubprune cache between attempts.

A search that runs for hours (policy gradient) saves its state every few steps; re-running the
same command after a crash or a kill continues from the last save instead of starting over.
The file is named after everything that makes two runs the same (source, method, parameters,
budget, calibration tokens, seed, batch size), so a changed setting starts afresh and a stale
file is never mixed in. It is removed once the plan is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from hubprune import offline

logger = logging.getLogger(__name__)


def run_key(identity: dict[str, Any]) -> str:
    """A short stable name for a run's identity (any JSON-serialisable record)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Checkpoint:
    """One run's state file: `load` (None when there is none), `save` (atomic), `clear`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_run(cls, identity: dict[str, Any]) -> Checkpoint:
        """The checkpoint of the run `identity` describes, under ``$HUBPRUNE_CACHE/checkpoints``."""
        return cls(offline.cache_dir() / "checkpoints" / f"{run_key(identity)}.pt")

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=True)
        logger.warning("Resuming from the checkpoint at step %s (%s)", state.get("step"), self.path)
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` next to the file and rename it into place: a kill never leaves half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        torch.save(state, partial)
        os.replace(partial, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
