"""Text for calibration, recovery and perplexity: one loader and one way to cut token windows.

:func:`load_rows` reads an ``offline:NAME`` text, a local .txt/.jsonl/.json/.parquet/.csv file
(with ``datasets``' text/json/parquet/csv builders) or a Hub dataset id, and records where it
came from; :func:`load_texts` keeps one column of it as documents. :func:`token_windows` joins
and tokenises documents and cuts windows of ``seq_len`` tokens, with BOS prepended when the
tokenizer adds one to ordinary input, at seeded random starts (the calibration sampling of
SliceGPT and GPTQ), disjoint starts (packed training text) or every ``stride`` tokens
(perplexity, with the first scored position of each window).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from hubprune import offline
from hubprune.errors import DataError
from hubprune.plan import Calibration, token_ids_sha256

# Defaults for users with the Hub: FinerCut's and SliceGPT's calibration set.
DEFAULT_DATASET = "wikitext"
DEFAULT_DATASET_CONFIG = "wikitext-2-raw-v1"
#: Calibration text when the model itself is an ``offline:`` one: no Hub needed at all.
OFFLINE_DEFAULT = "offline:lee-background"

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_TEXT_SUFFIXES = (".txt", ".cor", ".text", ".md")


@dataclass
class TextProvenance:
    """Where text came from, as the manifest records it: enough to find the same text again."""

    source: str
    kind: str
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    text_column: str | None = None
    file_sha256: str | None = None


@dataclass
class TextSource(TextProvenance):
    """Documents plus where they came from."""

    texts: list[str] = field(default_factory=list)


@dataclass
class Rows(TextProvenance):
    """A loaded table (a ``datasets.Dataset``) and its provenance; `text_column` is the column
    an ``offline:`` text keeps its documents in (None: the caller's choice, default ``text``)."""

    dataset: Any = None
    columns: list[str] = field(default_factory=list)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def offline_alternative() -> str:
    """The offline text names, for messages that suggest them."""
    return ", ".join(f"{offline.PREFIX}{name}" for name in offline.TEXTS)


def check_text_spec(spec: str, what: str) -> None:
    """Cheap checks of a text source, without loading it: an `offline:` name must exist and a local
    file must be there (for recipe validation, before a run starts)."""
    if spec.startswith(offline.PREFIX):
        offline.text_path(spec)  # raises for an unknown name or a missing package
    elif _is_local(spec) and not Path(spec).expanduser().is_file():
        raise DataError(f"{what} file {spec} does not exist")


def _is_local(spec: str) -> bool:
    return (
        Path(spec).expanduser().exists()
        or spec.startswith((".", "/", "~"))
        or Path(spec).suffix.lower() in (*_TEXT_SUFFIXES, *_BUILDERS)
    )


def _read_file(path: Path, what: str) -> Any:
    """A local file as a `datasets.Dataset`: one row per line (.txt), per JSON record, or per row."""
    import datasets

    suffix = path.suffix.lower()
    builder = "text" if suffix in _TEXT_SUFFIXES else _BUILDERS.get(suffix)
    if builder is None:
        raise DataError(
            f"unsupported {what} file type '{suffix}' for {path}; use .txt, .jsonl, .json, .parquet or .csv"
        )
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a few local rows: "Generating train split" bars are noise
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets wraps parser errors in several types; the user needs one line
        if not path.read_bytes().strip():
            raise DataError(f"{what} {path} contains no text") from err
        cause = err.__cause__ or err
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DataError(f"{path} is not a readable {builder} file ({first})") from err
    finally:
        if not quiet:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """datasets and huggingface_hub in offline mode for one call: only the local cache is read."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _load_hub(
    spec: str, config: str | None, split: str, revision: str | None, what: str, alternative: str
) -> Any:
    """A Hub dataset split; without the Hub, the local datasets cache or a fast HubUnreachableError."""
    import datasets

    from hubprune.hub import hub_reachable, require_hub

    if not hub_reachable():
        try:
            with _hub_offline():
                return datasets.load_dataset(spec, config, split=split, revision=revision)
        except Exception:  # not in the local cache either: say so now, not after a minute of retries
            require_hub(f"{what} '{spec}'", alternative)
    try:
        return datasets.load_dataset(spec, config, split=split, revision=revision)
    except Exception as err:  # datasets raises many types; the user needs the one line
        raise DataError(f"could not load {what} '{spec}' (config {config}, split {split}): {err}") from err


def _dataset_sha(repo_id: str, revision: str | None) -> str | None:
    """The resolved commit of a Hub dataset, for provenance (best effort: None offline)."""
    from hubprune.hub import hub_reachable

    if not hub_reachable():
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception:  # provenance is best effort; the data itself loaded fine
        return revision


def load_rows(
    spec: str,
    *,
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
    what: str = "data",
    alternative: str | None = None,
) -> Rows:
    """A table from `offline:NAME`, a local file, or a Hub dataset id (with `config`/`split`).

    `what` names the data in messages; `alternative` is what to suggest when a Hub dataset is
    asked for and the Hub is unreachable (default: the offline texts or a local file).
    """
    if spec.startswith(offline.PREFIX):
        path, column = offline.text_path(spec)
        return _rows(
            _read_file(path, what), spec, "offline", text_column=column, file_sha256=_file_sha256(path)
        )
    if _is_local(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"{what} file {spec} does not exist")
        return _rows(_read_file(path, what), str(path), "file", file_sha256=_file_sha256(path))
    alternative = alternative or f"use offline text ({offline_alternative()}) or a local file"
    dataset = _load_hub(spec, config, split, revision, what, alternative)
    return _rows(
        dataset, spec, "hub-dataset", revision=_dataset_sha(spec, revision), config=config, split=split
    )


def _rows(dataset: Any, source: str, kind: str, **info: Any) -> Rows:
    return Rows(source, kind, dataset=dataset, columns=list(dataset.column_names), **info)


def load_texts(
    spec: str,
    *,
    config: str | None = None,
    split: str = "train",
    text_column: str | None = None,
    revision: str | None = None,
    what: str = "calibration data",
    alternative: str | None = None,
) -> TextSource:
    """Documents (the non-empty values of one column) from what :func:`load_rows` reads."""
    rows = load_rows(spec, config=config, split=split, revision=revision, what=what, alternative=alternative)
    column = text_column or rows.text_column or "text"
    if column not in rows.columns:
        raise DataError(
            f"{what} {rows.source} has no '{column}' column (it has: {', '.join(rows.columns)}); "
            "pass the text column with --text-column"
        )
    texts = [str(t) for t in rows.dataset[column] if t is not None and str(t).strip()]
    if not texts:
        raise DataError(f"{what} {spec} contains no text")
    provenance = {f.name: getattr(rows, f.name) for f in fields(TextProvenance)}
    provenance["text_column"] = column if rows.kind == "hub-dataset" else text_column or rows.text_column
    return TextSource(**provenance, texts=texts)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of ordinary input (Llama 3 and Gemma do; SmolLM2 doesn't)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("hello")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _token_stream(
    tokenizer: Any, texts: list[str], separator: str, max_tokens: int | None
) -> tuple[list[int], int]:
    """The documents joined by `separator`, tokenised without special tokens; with `max_tokens`,
    documents are tokenised one by one (separator in front) until the budget is met, then cut.
    Returns the ids and the number of documents used."""
    if max_tokens is None:
        return tokenizer(separator.join(texts), add_special_tokens=False)["input_ids"], len(texts)
    ids: list[int] = []
    used = 0
    for text in texts:
        if len(ids) >= max_tokens:
            break
        ids.extend(tokenizer((separator if ids else "") + text, add_special_tokens=False)["input_ids"])
        used += 1
    return ids[:max_tokens], used


@dataclass
class TokenWindows:
    """Token windows cut from one stream. Each window is BOS (when `bos_prepended`) followed by
    stream tokens; ``scored_from[i]`` is the first position of window i whose token is a
    prediction target (position 0 never is: nothing precedes it)."""

    windows: list[list[int]]
    scored_from: list[int]
    bos_prepended: bool
    stream_tokens: int
    documents_used: int
    seq_len: int
    stride: int | None = None

    def tensor(self) -> torch.Tensor:
        """The windows as one [n, seq_len] tensor (all windows must have the same length)."""
        return torch.tensor(self.windows, dtype=torch.long)

    def score_mask(self, rows: list[int]) -> torch.Tensor:
        """[len(rows), T] ones where a token of those (equally long) windows is scored."""
        width = len(self.windows[rows[0]])
        positions = torch.arange(width)
        return torch.stack([(positions >= self.scored_from[r]).long() for r in rows])


def _strided_spans(n: int, body: int, stride: int, first: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored stream position) of windows every `stride` tokens; the last
    window is full length and ends at the last token; every token from `first` on is scored once."""
    spans, scored_until, start = [], first, 0
    while scored_until < n:
        end = min(start + body, n)
        spans.append((start, end, scored_until))
        scored_until = end
        if end == n:
            break
        start += stride
        if start + body > n:  # last window: full length, ending at the last token
            start = max(0, n - body)
    return spans


def token_windows(
    tokenizer: Any,
    texts: list[str],
    *,
    seq_len: int,
    policy: Literal["random", "disjoint", "strided"],
    samples: int = 0,
    seed: int = 0,
    stride: int | None = None,
    separator: str | None = None,
    max_tokens: int | None = None,
    name: str = "the text",
) -> TokenWindows:
    """Join and tokenise `texts`, then cut windows of `seq_len` tokens, BOS included.

    The documents are joined with `separator` (default: the EOS token, else a blank line) and
    tokenised without special tokens (cut at `max_tokens`). When the tokenizer puts BOS in front
    of ordinary input, every window is BOS + ``seq_len - 1`` stream tokens; BOS is context,
    never a target. Start positions, by `policy`:

    * ``random``: `samples` starts drawn with a torch generator seeded by `seed` (windows may
      overlap); all tokens but the first are targets. Too little text is a DataError.
    * ``disjoint``: consecutive full windows; a partial tail is dropped.
    * ``strided``: a start every `stride` tokens (default `seq_len`); the last window ends at
      the last token. Only tokens no earlier window scored are targets, so every stream token
      after the first is scored exactly once and has at least ``seq_len - stride`` tokens of
      context in its window (text shorter than a window gives one shorter window).
    """
    add_bos = tokenizer_adds_bos(tokenizer)
    body = seq_len - 1 if add_bos else seq_len
    prefix = [tokenizer.bos_token_id] if add_bos else []
    if separator is None:
        separator = tokenizer.eos_token or "\n\n"
    ids, used = _token_stream(tokenizer, texts, separator, max_tokens)
    n = len(ids)
    if policy == "random":
        if n < body:
            raise DataError(
                f"{name} has only {n} tokens; one sample needs {body} (lower --seq-len or give more text)"
            )
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, n - body + 1, (samples,), generator=generator).tolist()
        spans = [(s, s + body, s) for s in starts]
    elif policy == "disjoint":
        spans = [(s, s + body, s) for s in range(0, n - body + 1, body)]
    elif policy == "strided":
        if n < 2:
            raise DataError(f"{name} has fewer than 2 tokens")
        stride = min(stride or body, body)
        spans = _strided_spans(n, body, stride, 0 if add_bos else 1)
    else:
        raise ValueError(f"unknown window policy {policy!r}")
    return TokenWindows(
        windows=[prefix + ids[s:e] for s, e, _ in spans],
        # stream position p sits at window position p - s + len(prefix); a window's first
        # position has nothing before it and is context only
        scored_from=[max(first - s + len(prefix), 1) for s, _, first in spans],
        bos_prepended=add_bos,
        stream_tokens=n,
        documents_used=used,
        seq_len=seq_len,
        stride=stride,
    )


@dataclass
class CalibrationBatch:
    """Token windows and their provenance. All windows are full, so `attention_mask` is all ones."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    info: Calibration

    def batches(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The windows `batch_size` rows at a time, as (input_ids, attention_mask) pairs."""
        return [
            (self.input_ids[i : i + batch_size], self.attention_mask[i : i + batch_size])
            for i in range(0, len(self.input_ids), batch_size)
        ]


def build_calibration(
    tokenizer: Any,
    source: TextSource,
    *,
    samples: int,
    seq_len: int,
    seed: int,
    max_positions: int | None = None,
) -> CalibrationBatch:
    """Tokenise the documents and cut `samples` windows of `seq_len` tokens at seeded offsets."""
    if samples <= 0:
        raise DataError(f"the number of calibration samples must be positive, got {samples}")
    if seq_len < 2:
        raise DataError(f"the sequence length must be at least 2 tokens, got {seq_len}")
    if max_positions is not None and seq_len > max_positions:
        raise DataError(
            f"sequence length {seq_len} is longer than the model allows ({max_positions} positions)"
        )
    cut = token_windows(
        tokenizer,
        source.texts,
        seq_len=seq_len,
        policy="random",
        samples=samples,
        seed=seed,
        name=f"calibration data {source.source}",
    )
    windows = cut.tensor()
    info = Calibration(
        source=source.source,
        kind=source.kind,
        samples=samples,
        seq_len=seq_len,
        seed=seed,
        token_ids_sha256=token_ids_sha256(windows),
        total_tokens_available=cut.stream_tokens,
        bos_prepended=cut.bos_prepended,
        revision=source.revision,
        config=source.config,
        split=source.split,
        text_column=source.text_column,
        file_sha256=source.file_sha256,
    )
    return CalibrationBatch(windows, torch.ones_like(windows), info)
