"""Block-streamed scoring (:mod:`hubprune.streaming`): the model as an empty skeleton, one block
read from its safetensors files at a time, gives the same scores and plans as the loaded model.

What these catch: a layer-wise engine that feeds a block the wrong mask or rotary embeddings
(sliding-window families differ per block), accumulates in another order, leaves more than one
block resident, or resumes a killed run from the wrong block; `--stream` accepted by a method
that needs the whole model; the automatic choice not recorded in the manifest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubprune.cli import main
from hubprune.methods import Budget
from hubprune.pipeline import CalibrationOptions, SourceOptions, load, score
from hubprune.plan import Manifest
from tests.tiny import FAMILIES, SAMPLE_TEXT, save_tiny

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "block-influence": (Budget(2), {}),
    "angular": (Budget(2), {}),
    "perplexity": (Budget(1), {}),
    "wanda-sp": (Budget(0.25), {}),
    "slicegpt": (Budget(0.25), {"multiple_of": 8}),
    "dynamic-slicing": (Budget(0.25), {"multiple_of": 8}),
}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text(SAMPLE_TEXT, encoding="utf-8")
    return path


def _numbers(plan) -> list[float]:
    """Every number in the plan's per-unit scores, in order."""
    out: list[float] = []
    for record in plan.scores:
        for _key, value in sorted(record.items()):
            values = value if isinstance(value, list) else [value]
            out += [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return out


def _both(folder: Path, method: str, text_file: Path, samples: int = 5, seq_len: int = 16):
    budget, params = METHODS[method]
    calibration = CalibrationOptions(dataset=str(text_file), samples=samples, seq_len=seq_len)
    plans = []
    for stream in (False, True):
        loaded = load(SourceOptions(str(folder), stream=stream), method=method)
        assert (loaded.weights is not None) == stream
        plans.append(
            score(loaded, method, budget, calibration=calibration, batch_size=2, method_params=params)
        )
    return plans


def _assert_same(in_memory, streamed) -> None:
    assert [u.name for u in streamed.removed] == [u.name for u in in_memory.removed]
    a, b = _numbers(in_memory), _numbers(streamed)
    assert len(a) == len(b) and a
    torch.testing.assert_close(
        torch.tensor(b, dtype=torch.float64), torch.tensor(a, dtype=torch.float64), rtol=1e-5, atol=0
    )
    assert in_memory.tensors.keys() == streamed.tensors.keys()
    for name, tensor in in_memory.tensors.items():
        torch.testing.assert_close(streamed.tensors[name], tensor, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_block_and_width_scores_equal_in_memory_ones(family, tmp_path, text_file):
    folder = save_tiny(tmp_path / family, family)
    for method in ("block-influence", "angular", "perplexity", "wanda-sp"):
        _assert_same(*_both(folder, method, text_file))


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_streamed_slicing_pca_equals_in_memory(family, tmp_path, text_file):
    folder = save_tiny(tmp_path / family, family)
    for method in ("slicegpt", "dynamic-slicing"):
        _assert_same(*_both(folder, method, text_file))


def test_only_one_block_is_ever_resident(tmp_path, text_file, monkeypatch):
    from hubprune.streaming import StreamedWeights

    folder = save_tiny(tmp_path / "llama", "llama", num_layers=4)
    loaded = load(SourceOptions(str(folder), stream=True), method="block-influence")
    blocks = list(loaded.adapter.blocks(loaded.model))
    assert all(p.is_meta for p in loaded.model.parameters())  # nothing read yet
    loads = []
    original = StreamedWeights.load

    def checked_load(self, module):
        resident = [i for i, b in enumerate(blocks) if not next(b.parameters()).is_meta]
        assert resident == [], f"block {resident} still resident while loading another module"
        loads.append(blocks.index(module) if module in blocks else type(module).__name__)
        original(self, module)

    monkeypatch.setattr(StreamedWeights, "load", checked_load)
    calibration = CalibrationOptions(dataset=str(text_file), samples=4, seq_len=16)
    score(loaded, "block-influence", Budget(1), calibration=calibration, batch_size=2)
    assert loads == ["Embedding", 0, 1, 2, 3]
    assert all(p.is_meta for p in loaded.model.parameters())  # everything released again


@pytest.mark.slow
def test_smollm2_streamed_block_influence_equals_in_memory(smollm2_dir):
    in_memory, streamed = _both(smollm2_dir, "block-influence", REPO / "README.md", samples=4, seq_len=64)
    _assert_same(in_memory, streamed)


def test_stream_with_a_whole_model_method_is_refused(tmp_path, capsys):
    folder = save_tiny(tmp_path / "llama", "llama")
    argv = [
        "prune",
        str(folder),
        "--method",
        "finercut",
        "--amount",
        "2",
        "--stream",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "method 'finercut' needs the whole model in memory" in err and "--device auto" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_model_too_large_for_memory_is_streamed_and_recorded(tmp_path, text_file, monkeypatch):
    import hubprune.pipeline as pipeline

    folder = save_tiny(tmp_path / "llama", "llama")
    monkeypatch.setattr(pipeline, "available_memory", lambda device: 1000)  # bytes: nothing fits
    out = tmp_path / "out"
    argv = ["prune", str(folder), "--method", "block-influence", "--amount", "1", "--calibration", str(text_file),
            "--samples", "4", "--seq-len", "16", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    stage = Manifest.load(out).stages["prune"]
    assert stage["streamed"] is True and "GiB free" in stage["stream_reason"]
    assert main([*argv[:-1], str(tmp_path / "forced"), "--no-stream"]) == 0
    assert Manifest.load(tmp_path / "forced").stages["prune"]["streamed"] is False
    assert Manifest.load(tmp_path / "forced").plan.removed == Manifest.load(out).plan.removed
    # the streamed plan is exported shard by shard, without loading the model, to the same bytes
    assert (
        stage["streamed_export"] is True
        and "streamed_export" not in Manifest.load(tmp_path / "forced").stages["prune"]
    )
    weights = sorted(p.name for p in out.glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in (tmp_path / "forced").glob("*.safetensors"))
    for name in [*weights, "config.json"]:
        assert (out / name).read_bytes() == (tmp_path / "forced" / name).read_bytes(), name


def test_killed_streamed_run_resumes_after_the_last_finished_block(tmp_path, text_file):
    folder = save_tiny(tmp_path / "llama", "llama", num_layers=4)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HUBPRUNE_CACHE": str(cache)}

    def argv(out: str, *extra: str) -> list[str]:
        return ["prune", str(folder), "--method", "angular", "--amount", "1", "--calibration", str(text_file),
                "--samples", "4", "--seq-len", "16", "--out", str(tmp_path / out), *extra]  # fmt: skip

    command = [sys.executable, "-m", "hubprune", *argv("resumed", "--stream", "--resumable")]
    killed = subprocess.run(
        command, env={**env, "HUBPRUNE_FAULT": "stream-checkpoint-2"}, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(list((cache / "checkpoints").glob("*.pt"))) == 1 and not (tmp_path / "resumed").exists()
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list((cache / "checkpoints").glob("*.pt"))
    assert main(argv("straight")) == 0
    a, b = Manifest.load(tmp_path / "resumed"), Manifest.load(tmp_path / "straight")
    assert a.stages["prune"]["stream_resumed_at_block"] == {"angular": 2}
    assert a.plan.removed == b.plan.removed and a.plan.scores == b.plan.scores


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_streamed_slicing_export_is_byte_identical(family, tmp_path, text_file):
    """A streamed sliced export reads the dense tensors from the files one at a time; slicing
    streams unless told not to."""
    folder = save_tiny(tmp_path / family, family)
    outs = {}
    for flag in ("--no-stream", "--stream", "default"):
        outs[flag] = tmp_path / flag.strip("-")
        argv = ["prune", str(folder), "--method", "slicegpt", "--amount", "0.25", "--method-arg", "multiple_of=8",
                "--format", "compact", "--calibration", str(text_file), "--samples", "4", "--seq-len", "16",
                "--out", str(outs[flag])]  # fmt: skip
        assert main(argv if flag == "default" else [*argv, flag]) == 0
    files = {p.name for p in outs["--stream"].iterdir()} - {"hubprune.json"}
    assert any(name.endswith(".safetensors") for name in files)
    assert files == {p.name for p in outs["--no-stream"].iterdir()} - {"hubprune.json"}
    for name in files:
        assert (outs["--stream"] / name).read_bytes() == (outs["--no-stream"] / name).read_bytes(), name
    a, b, default = (Manifest.load(out) for out in outs.values())
    assert (
        b.stages["prune"]["streamed"] and a.model_before == b.model_before and a.model_after == b.model_after
    )
    assert a.export == b.export
    assert not a.stages["prune"]["streamed"]
    assert default.stages["prune"]["streamed"] and "slicegpt" in default.stages["prune"]["stream_reason"]
