"""The one-tensor-at-a-time safetensors writer: the same bytes as safetensors and save_pretrained."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hubprune.tensor_writer import write_safetensors, write_sharded
from tests.tiny import tiny_model


def _meta(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in tensors.items()}


def test_same_bytes_as_safetensors_for_every_dtype(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32]
    dtypes += [torch.int16, torch.int8, torch.uint8, torch.bool]
    tensors = {f"t{9 - i}.w": (torch.randn(3, i + 1, generator=g) * 10).to(dt) for i, dt in enumerate(dtypes)}
    tensors.update(scalar=torch.tensor(3.0), **{"b.x": torch.randn(5, generator=g)})
    save_file(tensors, tmp_path / "a.safetensors", metadata={"format": "pt"})
    write_safetensors(tmp_path / "b.safetensors", _meta(tensors), tensors.__getitem__, {"format": "pt"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_same_files_as_save_pretrained_when_sharded(tmp_path: Path) -> None:
    model = tiny_model("phi3")
    model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    state = model.state_dict()
    (tmp_path / "ours").mkdir()
    written = write_sharded(
        _meta(state),
        state.__getitem__,
        tmp_path / "ours",
        max_shard_size="40KB",
        total_parameters=model.num_parameters(),
    )
    theirs = sorted(p.name for p in (tmp_path / "hf").glob("model*.safetensors*"))
    assert len(theirs) > 2 and sorted(written) == theirs
    for name in theirs:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name


def test_holds_one_made_tensor_at_a_time(tmp_path: Path) -> None:
    shapes = {f"layer.{i}.weight": (64, 64) for i in range(6)}
    made: list[weakref.ref] = []

    def make(name: str) -> torch.Tensor:
        gc.collect()
        assert all(ref() is None for ref in made), "an earlier tensor is still held"
        tensor = torch.full(shapes[name], float(len(made)))
        made.append(weakref.ref(tensor))
        return tensor

    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    write_safetensors(tmp_path / "x.safetensors", meta, make)
    assert len(made) == len(shapes)


def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    meta = {"w": torch.empty(2, 3, device="meta")}
    with pytest.raises(ValueError, match=r"w was made with shape \(3, 2\)"):
        write_safetensors(tmp_path / "x.safetensors", meta, lambda _: torch.zeros(3, 2))
