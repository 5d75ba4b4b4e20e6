"""Every error hubprune raises on purpose.

Each one means "the user asked for something that cannot be done" and carries a message of
one sentence that the CLI prints as is. Anything else escaping the CLI is a bug and keeps its
traceback. Messages never contain a token.
"""


class HubpruneError(Exception):
    """Base class: a user-facing problem with a one-sentence explanation."""


class RecipeError(HubpruneError, ValueError):
    """An option or recipe field is invalid (bad amount, unknown method, malformed value)."""


class SourceError(HubpruneError, OSError):
    """The model source cannot be used: malformed repo id, unknown repo or revision, missing
    local folder, no safetensors weights (without `--allow-pickle`), unreachable Hub."""


class HubUnreachableError(SourceError):
    """A Hub default (a model or dataset id) was asked for but the Hub cannot be reached; the
    message names the offline alternative (a local path or an ``offline:`` name)."""


class UnsupportedArchitectureError(HubpruneError, ValueError):
    """The model family has no adapter in `hubprune.arch`; the message lists the supported ones."""


class BudgetError(HubpruneError, ValueError):
    """The pruning budget is impossible: nothing to remove, or everything."""


class DataError(HubpruneError, ValueError):
    """Calibration or training text is empty, too short, or misses the named column."""


class ExportError(HubpruneError, OSError):
    """The output folder cannot be written (exists and not empty, or the model is inconsistent)."""


class PublishError(HubpruneError):
    """Publishing to the Hub failed or was refused; nothing was half-published."""
