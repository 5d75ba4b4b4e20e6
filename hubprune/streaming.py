"""Models larger than memory: the model as an empty skeleton whose parts are read from its
safetensors files when a computation needs them, and released afterwards.

:class:`StreamedWeights` builds the model on the meta device (buffers such as rope frequencies
are computed for real) and materialises one module at a time, the embeddings, one decoder block,
the final norm and head, from the checkpoint's files (memory-mapped; each file is closed after
the read, so its pages do not stay resident). The layer-wise engine in
:mod:`hubprune.methods.capture` uses it to run the calibration batches through one block at a
time, the scheme of SliceGPT and Wanda: only the embeddings (at the start), the current block and
the activations are ever resident.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubprune.arch import ArchAdapter
from hubprune.errors import RecipeError, SourceError

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def weight_map(folder: Path) -> dict[str, str] | None:
    """Tensor name -> file, from the safetensors index (or a single ``model.safetensors``); None
    when the folder has neither (pickled weights, or not yet downloaded)."""
    if (folder / INDEX_FILE).is_file():
        return dict(json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"])
    if (folder / SINGLE_FILE).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / SINGLE_FILE), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), SINGLE_FILE)
    return None


class TensorFiles:
    """The tensors of a checkpoint folder by name, read on demand from its safetensors files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        weights = weight_map(self.folder)
        if weights is None:
            raise SourceError(
                f"{self.folder} has no safetensors weights to stream (model.safetensors or its index)"
            )
        self.weight_map: dict[str, str] = weights

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def read(self, names: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors, in `dtype` (None: as stored), copied out of the file, which is closed
        again: a safetensors tensor is a view of the memory-mapped file, whose pages would
        otherwise stay resident as long as the tensor lives."""
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        for name in names:  # one file opening per tensor: at most one tensor's pages are mapped
            with safe_open(str(self.folder / self.weight_map[name]), framework="pt") as handle:
                mapped = handle.get_tensor(name)
                out[name] = mapped.clone() if dtype in (None, mapped.dtype) else mapped.to(dtype)
                del mapped
        return out


class FileStateDict(MutableMapping[str, torch.Tensor]):
    """A model's state dict whose tensors stay in the checkpoint files until asked for: each read
    returns a fresh tensor in `dtype`, `pop` forgets the name. An export that reads a dense state dict
    tensor by tensor (:class:`hubprune.rotation.SlicedWeights`) thus never holds it whole."""

    def __init__(self, files: TensorFiles, dtype: torch.dtype) -> None:
        self.files, self.dtype = files, dtype
        self._names = dict.fromkeys(files.weight_map)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self.files.read([name], self.dtype)[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        raise TypeError("the checkpoint's state dict is read-only")

    def __delitem__(self, name: str) -> None:
        del self._names[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


def skeleton(
    folder: str | Path, dtype: torch.dtype, trust_remote_code: bool = False, config: Any = None
) -> nn.Module:
    """The model in `folder` (of `config` when given) with every parameter on the meta device (no
    memory), its buffers (rope frequencies) computed and its generation config read as
    ``from_pretrained`` reads them, in eval mode."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = config or AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # as from_pretrained does: a tied head is the embeddings' parameter, counted once
    if model.can_generate():  # transformers' GenerationMixin.adjust_generation_fn
        try:
            model.generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:
            model.generation_config = GenerationConfig.from_pretrained(
                folder, config_file_name="config.json", _from_model_config=True
            )
    return model.eval()


class StreamedWeights:
    """A skeleton model and the files its weights come from: `resident(module)` materialises a
    module from the files for the duration of a `with`, then returns it to the meta device."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        files: TensorFiles,
        device: str | torch.device,
        *,
        resumable: bool = False,
    ) -> None:
        self.model, self.adapter, self.files = model, adapter, files
        self.device = torch.device(device)
        #: Save activations after every block so that a killed run resumes (:func:`run_blocks`).
        self.resumable = resumable
        #: Per streamed pass that resumed from a checkpoint, the block it resumed at.
        self.resumed_from: dict[str, int] = {}
        self.dtype = next(model.parameters()).dtype
        self._names = {id(m): name for name, m in model.named_modules()}
        for module in model.modules():  # computed buffers (rope) follow the computation's device
            for key, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.device.type != "meta":
                    module._buffers[key] = buffer.to(self.device)
        missing = [n for n in self._checkpoint_names(model) if n not in files and not self._tied_head(n)]
        if missing:
            raise SourceError(
                f"the checkpoint in {files.folder} does not hold {missing[0]} under the name the model uses "
                f"({len(missing)} tensors differ); it cannot be streamed: load it whole (drop --stream)"
            )

    def _checkpoint_names(self, module: nn.Module) -> list[str]:
        prefix = self._names[id(module)]
        return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(remove_duplicate=False)]

    def _tied_head(self, name: str) -> bool:
        return name == f"{self.adapter.lm_head}.weight" and bool(
            getattr(self.model.config, "tie_word_embeddings", False)
        )

    def block(self, index: int) -> nn.Module:
        return self.adapter.blocks(self.model)[index]

    def load(self, module: nn.Module) -> None:
        """Read `module`'s parameters from the files onto the device (a tied head from the embeddings)."""
        prefix = self._names[id(module)]
        names = self._checkpoint_names(module)
        stored = [n if not self._tied_head(n) else f"{self.adapter.embed}.weight" for n in names]
        state = {  # one tensor at a time on the host, however large the block
            name[len(prefix) + 1 :] if prefix else name: self.files.read([source], self.dtype)[source].to(
                self.device
            )
            for name, source in zip(names, stored, strict=True)
        }
        module.load_state_dict(state, strict=True, assign=True)

    def release(self, module: nn.Module) -> None:
        """Free `module`'s parameters (back to the meta device), tying a tied head again."""
        module.to("meta")
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def activation_device(self, states: list[torch.Tensor]) -> torch.device:
        """Where the activations between blocks live: on the compute device while they take at most
        a quarter of its free memory, else in CPU memory (moved over one batch at a time)."""
        size = sum(s.numel() * s.element_size() for s in states)
        if self.device.type == "cpu" or size <= 0.25 * available_memory(self.device):
            return self.device
        logger.info("Activations (%.1f GiB) spill to CPU memory between blocks", size / 2**30)
        return torch.device("cpu")

    def after_checkpoint(self, next_block: int) -> None:
        """Test hook: a fault point after the activations before block `next_block` are saved."""
        from hubprune.rundir import fault_point

        fault_point(f"stream-checkpoint-{next_block}")

    @contextmanager
    def resident(self, *modules: nn.Module) -> Iterator[None]:
        """`modules` materialised inside the `with`, released after it (also on an error)."""
        try:
            for module in modules:
                self.load(module)
            yield
        finally:
            for module in modules:
                self.release(module)


def available_memory(device: str | torch.device) -> int:
    """Bytes free for a model on `device`: free GPU memory, or the host's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import psutil

        return int(psutil.virtual_memory().available)


#: Fraction of the free memory a loaded model may take before hubprune streams it instead:
#: the rest is for activations, the scoring itself and the export.
FITS_FRACTION = 0.7


def tensor_headers(folder: str | Path, names: Mapping[str, str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """(shape, safetensors dtype) of each tensor in `names` (tensor -> file), from the file
    headers alone."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for name, file in names.items():
        by_file.setdefault(file, []).append(name)
    out = {}
    for file, tensors in by_file.items():
        with safe_open(str(Path(folder) / file), framework="pt") as handle:
            for name in tensors:
                piece = handle.get_slice(name)
                out[name] = (tuple(piece.get_shape()), piece.get_dtype())
    return out


def loaded_bytes(folder: str | Path, dtype: torch.dtype | str) -> int | None:
    """What the safetensors weights in `folder` take in memory once loaded in `dtype` ("auto": as
    stored), from the files' headers; None when the folder has none."""
    weights = weight_map(Path(folder))
    if weights is None:
        return None
    return sum(
        math.prod(shape) * (_STORED_BYTES.get(stored, 4) if dtype == "auto" else dtype.itemsize)
        for shape, stored in tensor_headers(folder, weights).values()
    )


_STORED_BYTES = {
    "F64": 8,
    "I64": 8,
    "F32": 4,
    "I32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U8": 1,
    "I8": 1,
    "BOOL": 1,
}


def refuse_whole_model_method(method: str) -> RecipeError:
    """The error for `--stream` with a method that needs every block resident at once."""
    return RecipeError(
        f"method '{method}' needs the whole model in memory at once and cannot stream it block by block; "
        "drop --stream and load it on several GPUs with --device auto (accelerate's big-model inference), "
        "or choose a streaming method (block-influence, angular, perplexity, wanda-sp, reverse-order, random)"
    )
