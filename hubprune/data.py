"""Calibration text: a Hub dataset, a local .txt/.jsonl/.parquet file, or bundled offline text.

`load_texts` returns documents; `build_calibration` turns them into `samples` windows of
`seq_len` tokens at seeded random offsets of the concatenated, tokenised text (the sampling used
by SliceGPT and GPTQ), with BOS prepended when the tokenizer adds one to ordinary input.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubprune import offline
from hubprune.errors import DataError
from hubprune.plan import Calibration, token_ids_sha256

# Defaults for users with the Hub: FinerCut's and SliceGPT's calibration set.
DEFAULT_DATASET = "wikitext"
DEFAULT_DATASET_CONFIG = "wikitext-2-raw-v1"


@dataclass
class TextSource:
    """Documents plus where they came from."""

    texts: list[str]
    source: str
    kind: str
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    text_column: str | None = None
    file_sha256: str | None = None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_file(path: Path, text_column: str | None) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".cor", ".text", ".md"):
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    column = text_column or "text"
    if suffix in (".jsonl", ".json"):
        texts = []
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number} is not valid JSON ({err.msg})") from None
                if column not in row:
                    raise DataError(
                        f"{path}:{number} has no '{column}' field; pass the text column with --text-column"
                    )
                texts.append(str(row[column]))
        return texts
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if column not in table.column_names:
            raise DataError(f"{path} has no '{column}' column (it has: {', '.join(table.column_names)})")
        return [str(t) for t in table.column(column).to_pylist() if t is not None]
    raise DataError(f"unsupported text file type '{suffix}' for {path}; use .txt, .jsonl or .parquet")


def load_texts(
    spec: str,
    *,
    config: str | None = None,
    split: str = "train",
    text_column: str | None = None,
    revision: str | None = None,
) -> TextSource:
    """Documents from `offline:NAME`, a local file, or a Hub dataset id (with `config`/`split`)."""
    if spec.startswith(offline.PREFIX):
        path, column = offline.text_path(spec)
        texts = _read_file(path, text_column or column)
        source = TextSource(
            texts, spec, "offline", text_column=text_column or column, file_sha256=_file_sha256(path)
        )
    elif (
        Path(spec).expanduser().exists()
        or spec.startswith((".", "/", "~"))
        or Path(spec).suffix in (".txt", ".jsonl", ".parquet")
    ):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"calibration file {spec} does not exist")
        texts = _read_file(path, text_column)
        source = TextSource(texts, str(path), "file", text_column=text_column, file_sha256=_file_sha256(path))
    else:
        source = _load_hub_dataset(
            spec, config=config, split=split, text_column=text_column or "text", revision=revision
        )
    source.texts = [t for t in source.texts if t.strip()]
    if not source.texts:
        raise DataError(f"calibration data {spec} contains no text")
    return source


def _load_hub_dataset(
    spec: str, *, config: str | None, split: str, text_column: str, revision: str | None
) -> TextSource:
    """Load a Hub dataset split with `datasets`; the resolved commit goes into the provenance."""
    import datasets

    try:
        ds = datasets.load_dataset(spec, config, split=split, revision=revision)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        raise DataError(f"could not load dataset '{spec}' (config {config}, split {split}): {err}") from None
    if text_column not in ds.column_names:
        raise DataError(
            f"dataset '{spec}' has no '{text_column}' column (it has: {', '.join(ds.column_names)})"
        )
    resolved = revision
    try:
        from huggingface_hub import HfApi

        resolved = HfApi().dataset_info(spec, revision=revision).sha
    except Exception:  # provenance is best effort; the data itself loaded fine
        pass
    return TextSource(
        [str(t) for t in ds[text_column] if t],
        spec,
        "hub-dataset",
        revision=resolved,
        config=config,
        split=split,
        text_column=text_column,
    )


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of ordinary input (Llama 3 and Gemma do; SmolLM2 doesn't)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("hello")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


@dataclass
class CalibrationBatch:
    """Token windows and their provenance. All windows are full, so `attention_mask` is all ones."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    info: Calibration

    def batches(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
    add_bos = tokenizer_adds_bos(tokenizer)
    body = seq_len - 1 if add_bos else seq_len
    separator = tokenizer.eos_token or "\n\n"
    ids = tokenizer(separator.join(source.texts), add_special_tokens=False)["input_ids"]
    if len(ids) < body:
        raise DataError(
            f"calibration data {source.source} has only {len(ids)} tokens; one sample needs {body} "
            f"(lower --seq-len or give more text)"
        )
    tokens = torch.tensor(ids, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - body + 1, (samples,), generator=generator)
    windows = torch.stack([tokens[s : s + body] for s in starts.tolist()])
    if add_bos:
        bos = torch.full((samples, 1), tokenizer.bos_token_id, dtype=torch.long)
        windows = torch.cat([bos, windows], dim=1)
    info = Calibration(
        source=source.source,
        kind=source.kind,
        samples=samples,
        seq_len=seq_len,
        seed=seed,
        token_ids_sha256=token_ids_sha256(windows),
        total_tokens_available=len(ids),
        bos_prepended=add_bos,
        revision=source.revision,
        config=source.config,
        split=source.split,
        text_column=source.text_column,
        file_sha256=source.file_sha256,
    )
    return CalibrationBatch(windows, torch.ones_like(windows), info)
