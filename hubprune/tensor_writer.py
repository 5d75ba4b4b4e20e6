"""Write safetensors shards one tensor at a time, byte-identical to ``save_pretrained``.

``safetensors.torch.save_file`` serialises a whole shard in memory before writing it, so an
export whose tensors are *computed* (a sliced model's rotated weights) would hold every tensor of
a shard, and then a second copy of their bytes. Here the header is written first from the
tensors' shapes and dtypes (known beforehand, from a meta-device model), then each tensor is made
by `get`, written and dropped: peak memory is one tensor. The layout is the one safetensors
writes (tensors sorted by dtype alignment, then name; a compact JSON header padded with spaces to
8 bytes), so the files are the same bytes as ``save_pretrained``'s; tests compare them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

logger = logging.getLogger("hubprune.tensor_writer")

#: transformers' file names (``transformers.utils.SAFE_WEIGHTS_NAME`` / ``SAFE_WEIGHTS_INDEX_NAME``).
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

#: safetensors' dtype names, in the order of its Rust `Dtype` enum (the sort key of a file's
#: tensors, larger first).
_DTYPES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.uint64: "U64",
}
_RANK = {dtype: rank for rank, dtype in enumerate(_DTYPES)}


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Hand memory freed by tensors back to the operating system (glibc keeps freed blocks of up
    to 32 MB in its heap, so the resident size of a process that makes and drops many tensors
    keeps growing; ``malloc_trim`` releases them). A no-op where the C library has no such call."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def file_order(meta: Mapping[str, torch.Tensor]) -> list[str]:
    """The order safetensors lays out `meta`'s tensors in a file: larger dtypes first, then by name."""
    unknown = sorted({str(t.dtype) for t in meta.values() if t.dtype not in _DTYPES})
    if unknown:
        raise ValueError(f"no safetensors dtype for {unknown[0]}")
    return sorted(meta, key=lambda name: (-_RANK[meta[name].dtype], name))


def write_safetensors(
    path: Path,
    meta: Mapping[str, torch.Tensor],
    get: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write one safetensors file holding the tensors named in `meta` (meta-device tensors giving
    each one's shape and dtype), each made by `get(name)` just before it is written. A tensor
    whose shape or dtype differs from `meta`'s raises ValueError (the file is left incomplete:
    write into a staging folder)."""
    order = file_order(meta)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name in order:
        tensor = meta[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for name in order:
            tensor = get(name)
            expected = meta[name]
            if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
                raise ValueError(
                    f"{name} was made with shape {tuple(tensor.shape)} {tensor.dtype}, "
                    f"expected {tuple(expected.shape)} {expected.dtype}"
                )
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            handle.write(memoryview(data.view(torch.uint8).numpy()))
            del tensor, data
            release_freed_memory()


def write_sharded(
    meta: Mapping[str, torch.Tensor],
    get: Callable[[str], torch.Tensor],
    folder: Path,
    *,
    max_shard_size: str | int,
    total_parameters: int,
) -> list[str]:
    """Write the tensors of `meta` (in ``save_pretrained``'s order) into `folder` as shards cut
    the way ``save_pretrained`` cuts them, with the index when there are several; each tensor is
    made by `get(name)` when its turn comes. Returns the files written."""
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(
        dict(meta),
        filename_pattern=WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"),
        max_shard_size=max_shard_size,
    )
    for number, (file, names) in enumerate(split.filename_to_tensors.items(), start=1):
        write_safetensors(folder / file, {n: meta[n] for n in names}, get, metadata={"format": "pt"})
        logger.info("wrote %s (%d/%d)", file, number, len(split.filename_to_tensors))
    written = list(split.filename_to_tensors)
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": total_parameters, **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(INDEX_NAME)
    return written
