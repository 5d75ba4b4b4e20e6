"""Shard-streamed export (hubprune/shard_export.py) and the plans applied with it: `prune --plan`,
config-only methods that never load the model, and Hub sources that download only kept shards.

The bar is the in-memory path: the same plan applied with `apply_plan(..., sublayers="zero")`
and written by `save_pretrained` gives the same bytes in every weight file, the index and both
configs. Sources and outputs are cut into many small shards so renaming, shard cutting and the
index are all exercised.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModelForCausalLM

from hubprune.cli import main
from hubprune.export import write_plain
from hubprune.methods import Budget
from hubprune.pipeline import SourceOptions, load, prune, prune_from_plan
from hubprune.plan import Manifest, Plan, Unit
from hubprune.shape import Dims
from hubprune.surgery import apply_plan
from tests.tiny import FAMILIES, SAMPLE_TEXT, save_tiny

SHARD = "60KB"  # a tiny block is ~120 KB: every output block spans several shards
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def sharded_source(
    folder: Path, family: str, *, dtype: torch.dtype = torch.float32, shard: str = "100KB"
) -> Path:
    """A tiny model saved as a Hub repo holds a large one: several shards and an index."""
    save_tiny(folder, family)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size=shard)
    return folder


def in_memory(source: Path, plan: Plan, out: Path, dtype: str = "float32") -> Path:
    """The reference: load, apply the plan as the plain export does, save_pretrained."""
    loaded = load(SourceOptions(str(source), dtype=dtype))
    apply_plan(loaded.model, loaded.adapter, plan, sublayers="zero")
    out.mkdir()
    write_plain(loaded.model, loaded.tokenizer, out, max_shard_size=SHARD)
    return out


def model_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors" or p.name in MODEL_FILES)


def assert_same_bytes(expected: Path, actual: Path) -> None:
    names = model_files(expected)
    assert names == model_files(actual) and len(names) > 4, "a multi-shard export with its index"
    for name in names:
        assert (expected / name).read_bytes() == (actual / name).read_bytes(), f"{name} differs"


def hand_plan(source: Path, units: list[Unit]) -> Plan:
    config = json.loads((source / "config.json").read_text())
    return Plan("hand", "block", units, dims=Dims.from_config(config).to_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_block_export_is_byte_identical(family, tmp_path, monkeypatch):
    """Removing blocks 0 and 2 renames every kept block and slices the per-layer config lists;
    the streamed export must match the in-memory one byte for byte, and never load the model."""
    source = sharded_source(tmp_path / "src", family)
    plan = hand_plan(source, [Unit("block", 0), Unit("block", 2)])
    expected = in_memory(source, plan, tmp_path / "memory")
    monkeypatch.setattr("hubprune.pipeline.load_model", _no_loading)
    manifest = prune_from_plan(SourceOptions(str(source)), plan, tmp_path / "streamed", max_shard_size=SHARD)
    assert manifest.stages["prune"]["streamed_export"] is True
    assert_same_bytes(expected, tmp_path / "streamed")
    assert manifest.model_after["num_blocks"] == 2 and manifest.model_before["num_blocks"] == 4


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "phi3"])
def test_streamed_zero_filled_sublayers_match_the_in_memory_export(family, tmp_path):
    """Removed attention / MLP sublayers are written as zeros without reading them: same bytes as
    zero-filling in memory, and the reloaded export computes what the in-memory model computes."""
    source = sharded_source(tmp_path / "src", family)
    plan = hand_plan(source, [Unit("attn", 1), Unit("mlp", 2), Unit("block", 3)])
    expected = in_memory(source, plan, tmp_path / "memory")
    manifest = prune_from_plan(SourceOptions(str(source)), plan, tmp_path / "streamed", max_shard_size=SHARD)
    assert manifest.stages["prune"]["streamed_export"] is True
    assert manifest.export["zero_filled_units"] == ["attn 1", "mlp 2"]
    assert_same_bytes(expected, tmp_path / "streamed")
    ids = torch.tensor([[5, 17, 40, 3, 9, 60]])
    reference = load(SourceOptions(str(source), dtype="float32"))
    with torch.no_grad():
        dense = reference.model(ids).logits
        apply_plan(reference.model, reference.adapter, plan, sublayers="zero")
        streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed", dtype=torch.float32)
        assert torch.equal(streamed(ids).logits, reference.model(ids).logits)
        assert not torch.allclose(streamed(ids).logits, dense), "the plan must change the model"


def test_auto_dtype_keeps_the_checkpoint_dtype_and_explicit_casts(tmp_path):
    """ "auto" writes a bfloat16 checkpoint as bfloat16 (nothing is computed, so no CPU float32);
    --dtype float32 casts as loading in float32 would."""
    source = sharded_source(tmp_path / "src", "llama", dtype=torch.bfloat16, shard="50KB")
    plan = hand_plan(source, [Unit("block", 1)])
    prune_from_plan(SourceOptions(str(source)), plan, tmp_path / "auto", max_shard_size=SHARD)
    assert_same_bytes(in_memory(source, plan, tmp_path / "bf16", dtype="bfloat16"), tmp_path / "auto")
    prune_from_plan(
        SourceOptions(str(source), dtype="float32"), plan, tmp_path / "fp32", max_shard_size=SHARD
    )
    assert_same_bytes(in_memory(source, plan, tmp_path / "mem32"), tmp_path / "fp32")


def _no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_reverse_order_prune_streams_without_loading(tmp_path, monkeypatch):
    """`prune --method reverse-order` plans on the meta device and streams: no weights loaded,
    same files as applying its plan in memory."""
    source = sharded_source(tmp_path / "src", "qwen3")
    monkeypatch.setattr("hubprune.pipeline.load_model", _no_loading)
    manifest = prune(
        SourceOptions(str(source)), "reverse-order", Budget.parse(2), tmp_path / "out", max_shard_size=SHARD
    )
    assert manifest.plan.removed_blocks() == [2, 3] and manifest.stages["prune"]["streamed_export"]
    assert manifest.plan.budget["reached"]["params_total"]["removed_fraction"] > 0
    monkeypatch.undo()
    assert_same_bytes(in_memory(source, manifest.plan, tmp_path / "memory"), tmp_path / "out")


@pytest.mark.parametrize(
    ("units", "export_format"),
    [([Unit("heads", 1, (0,)), Unit("block", 3)], "plain"), ([Unit("attn", 1)], "compact")],
)
def test_plans_that_rewrite_tensors_load_the_model(units, export_format, tmp_path):
    """Narrowed blocks, or a compact export of a removed sublayer, rewrite tensors: --plan loads
    the model and exports as prune does, and the result loads."""
    source = save_tiny(tmp_path / "src", "llama")
    plan = hand_plan(source, units)
    manifest = prune_from_plan(
        SourceOptions(str(source)), plan, tmp_path / "out", export_format=export_format
    )
    assert manifest.stages["prune"]["streamed_export"] is False
    assert manifest.export["format"] == export_format
    assert manifest.plan.removed == units


def test_pickled_weights_fall_back_to_loading(tmp_path):
    """A checkpoint without safetensors cannot be streamed: prune loads it as before."""
    folder = save_tiny(tmp_path / "src", "llama")
    state = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save({k: v for k, v in state.items() if k != "lm_head.weight"}, folder / "pytorch_model.bin")
    manifest = prune(
        SourceOptions(str(folder), allow_pickle=True), "reverse-order", Budget.parse(1), tmp_path / "out"
    )
    assert "streamed_export" not in manifest.stages["prune"]
    assert manifest.model_after["num_blocks"] == 3


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory) -> Path:
    return sharded_source(tmp_path_factory.mktemp("plan") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "cal.txt"
    path.write_text(SAMPLE_TEXT)
    return path


def test_prune_plan_round_trip_from_inspect_json(llama_source, text_file, tmp_path, capsys):
    """inspect --json, then prune --plan: the plan given, applied without loading, equals pruning
    with the same method in memory; a run's hubprune.json works as a plan too."""
    cal = ["--calibration", str(text_file), "--samples", "4", "--seq-len", "32"]
    method = ["--method", "block-influence", "--amount", "2"]
    assert main(["inspect", str(llama_source), *method, *cal, "--json"]) == 0
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(capsys.readouterr().out)
    assert json.loads(plan_file.read_text())["family"] == "llama"
    shard = ["--max-shard-size", SHARD]
    assert main(["prune", str(llama_source), *method, *cal, *shard, "--out", str(tmp_path / "scored")]) == 0
    assert (
        main(["prune", str(llama_source), "--plan", str(plan_file), *shard, "--out", str(tmp_path / "a")])
        == 0
    )
    again = ["prune", str(llama_source), "--plan", str(tmp_path / "scored" / "hubprune.json")]
    assert main([*again, *shard, "--out", str(tmp_path / "b")]) == 0
    scored = Manifest.load(tmp_path / "scored")
    assert "streamed_export" not in scored.stages["prune"], "block influence computes: it loads the model"
    for run in ("a", "b"):
        manifest = Manifest.load(tmp_path / run)
        assert manifest.stages["prune"]["streamed_export"] is True
        assert manifest.plan.removed == scored.plan.removed and manifest.plan.method == "block-influence"
        assert manifest.plan.scores == scored.plan.scores and manifest.model_after == scored.model_after
        assert_same_bytes(tmp_path / "scored", tmp_path / run)
    assert Manifest.load(tmp_path / "a").stages["prune"]["plan_from"] == "plan.json"


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("make_plan", "extra", "message"),
    [
        (lambda d, p: _write(d / "bad.json", "{not json"), [], "is not valid JSON"),
        (lambda d, p: _write(d / "list.json", "[1, 2]"), [], "is not a hubprune plan"),
        (
            lambda d, p: _write(d / "none.json", json.dumps({"method": "x"})),
            [],
            "is not a hubprune plan (no 'removed')",
        ),
        (lambda d, p: str(d / "missing.json"), [], "does not exist"),
        (
            lambda d, p: _write(d / "fam.json", json.dumps({**p, "family": "qwen2"})),
            [],
            "made for a qwen2 model",
        ),
        (
            lambda d, p: _write(d / "six.json", json.dumps({**p, "dims": {**p["dims"], "num_blocks": 6}})),
            [],
            "made for a model with 6 blocks and",
        ),
        (lambda d, p: _write(d / "empty.json", json.dumps({**p, "removed": []})), [], "removes nothing"),
        (
            lambda d, p: _write(
                d / "far.json", json.dumps({**p, "removed": [{"kind": "block", "block": 9}]})
            ),
            [],
            "block 9 does not exist",
        ),
        (lambda d, p: _write(d / "ok.json", json.dumps(p)), ["--method", "random"], "leave out --method"),
    ],
)
def test_bad_plans_are_refused_in_one_sentence(llama_source, tmp_path, capsys, make_plan, extra, message):
    good = hand_plan(llama_source, [Unit("block", 1)]).to_dict()
    argv = [
        "prune",
        str(llama_source),
        "--plan",
        make_plan(tmp_path, good),
        *extra,
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hubprune: error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_prune_without_method_or_plan_is_refused(llama_source, tmp_path, capsys):
    assert main(["prune", str(llama_source), "--amount", "1", "--out", str(tmp_path / "o")]) == 1
    assert "needs --method and --amount, or --plan" in capsys.readouterr().err


def test_hub_source_downloads_only_the_shards_it_keeps(hub_server, tmp_path):
    """reverse-order on a Hub model: config and index first, then only the shards holding kept
    tensors; a shard holding only removed blocks is never requested, and the export is exact."""
    source = sharded_source(tmp_path / "src", "llama", shard="125KB")  # about one block a shard
    weight_map = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    removed = ("model.layers.2.", "model.layers.3.")
    dropped = {f for f in weight_map.values()} - {
        f for name, f in weight_map.items() if not name.startswith(removed)
    }
    assert dropped, "the test needs a shard that holds only removed blocks"
    api = HfApi(token=hub_server.token)
    api.create_repo("acme/sharded-llama", private=False)
    api.upload_folder(repo_id="acme/sharded-llama", folder_path=source)
    hub_server.requests.clear()
    manifest = prune(
        SourceOptions("acme/sharded-llama"),
        "reverse-order",
        Budget.parse(2),
        tmp_path / "out",
        max_shard_size=SHARD,
    )
    assert manifest.plan.removed_blocks() == [2, 3] and manifest.source["kind"] == "hub"
    fetched = {path.rsplit("/", 1)[1] for method, path in hub_server.requests if "/resolve/" in path}
    assert fetched >= {"config.json", "model.safetensors.index.json"}
    assert not fetched & dropped, f"downloaded {sorted(fetched & dropped)}, which hold only removed blocks"
    assert set(weight_map.values()) - dropped <= fetched
    assert_same_bytes(in_memory(source, manifest.plan, tmp_path / "memory"), tmp_path / "out")
    shutil.rmtree(tmp_path / "src")
