"""Keep local paths out of what is published: the manifest, the model card and the commit text.

A run folder is the future Hub repo, so an absolute path recorded in it (a cache folder under the
home directory, a calibration file in /tmp) would publish the machine's layout and the user's
name. Local sources and files are named ``local:<file name>`` instead; their content is pinned by
the SHA-256 the records keep beside them (``file_sha256``, ``token_ids_sha256``). Relative paths
(``../pruned``, ``data/train.jsonl``) say nothing about the machine and are kept, so records that
are resolved against the run folder (``from_run``) still work.
"""

from __future__ import annotations

import re
from typing import TypeVar

LOCAL_PREFIX = "local:"

# An absolute path of at least two segments (`/home/me/x`, `~/data/cal.txt`), not part of a URL
# (`https://host/a/b`), a Hub id (`owner/name`) or a ratio (`(a)/π`, one segment).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/:@-])~?/[^/\s'\"`<>|,;()\[\]{}]+(?:/[^/\s'\"`<>|,;()\[\]{}]*)+")

T = TypeVar("T")


def public_path(path: str) -> str:
    """`/home/me/data/cal.txt` -> `local:cal.txt`: the name a published file uses for a local path."""
    name = next((part for part in reversed(path.split("/")) if part and part != "~"), "")
    return LOCAL_PREFIX + name


def public_text(text: str) -> str:
    """`text` with every absolute local path in it replaced by its :func:`public_path`."""
    return _ABSOLUTE_PATH.sub(lambda match: public_path(match.group(0)), text)


def public_record(value: T) -> T:
    """A copy of a JSON-like record (dicts, lists, tuples, strings) with :func:`public_text` applied
    to every string, keys included; other values are kept as they are."""
    if isinstance(value, str):
        return public_text(value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {public_record(k): public_record(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return type(value)(public_record(v) for v in value)  # type: ignore[return-value]
    return value
