"""The plan and the manifest: JSON round trips and what the manifest must record."""

from __future__ import annotations

import json

import pytest
import torch

from hubprune.errors import RecipeError
from hubprune.plan import MANIFEST_NAME, Calibration, Manifest, Plan, Unit, library_versions, token_ids_sha256


def make_plan() -> Plan:
    return Plan(
        method="block-influence",
        unit_kind="block",
        removed=[Unit("block", 2)],
        scores=[{"unit": Unit("block", i), "score": 0.1 * i, "rank": i} for i in range(4)],
        score_meaning="lowest removed first",
        budget={"requested": {"amount": 1, "by": "units"}},
        calibration=Calibration("offline:lee-background", "offline", 4, 32, 0, "ab" * 32, 1000, False),
        seed=0,
        search_cost={"engine": "cached", "wall_s": 1.5, "flops_per_row": {"attn": [1, 2]}},
    )


def test_manifest_round_trip_and_sorted_json(tmp_path):
    manifest = Manifest(
        source={"spec": "owner/model", "base_model": "owner/model", "sha": "a" * 40},
        family="llama",
        plan=make_plan(),
        model_before={"num_blocks": 4},
        model_after={"num_blocks": 3},
    )
    path = manifest.save(tmp_path)
    assert path.name == MANIFEST_NAME
    text = path.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["schema_version"] == 1 and data["hubprune_version"]
    assert {"torch", "transformers", "huggingface-hub"} <= data["versions"].keys()
    assert data["plan"]["search_cost"] == {
        "engine": "cached",
        "wall_s": 1.5,
        "flops_per_row": {"attn": [1, 2]},
    }
    assert data["plan"]["calibration"]["token_ids_sha256"] == "ab" * 32
    assert Manifest.load(tmp_path) == manifest


def test_unit_validation_and_names():
    assert Unit("attn", 3).name == "attn 3"
    assert Unit.from_dict(Unit("heads", 1, indices=(0, 2)).to_dict()) == Unit("heads", 1, indices=(0, 2))
    with pytest.raises(RecipeError, match="^unknown unit kind 'layer'; expected one of: block, attn, mlp,"):
        Unit("layer", 0)


def test_token_hash_depends_on_values_and_dtype_free():
    a = torch.tensor([[1, 2, 3]])
    assert token_ids_sha256(a) == token_ids_sha256(a.to(torch.int32)) == token_ids_sha256([[1, 2, 3]])
    assert token_ids_sha256(a) != token_ids_sha256(torch.tensor([[1, 2, 4]]))


def test_library_versions_name_the_stack():
    versions = library_versions()
    assert versions["hubprune"] and versions["torch"] and versions["python"]


def test_summary_names_sublayers_and_zero_fill():
    """Would catch: a sublayer plan summarised as blocks, or a zero-filled export claiming savings."""
    from hubprune.describe import summary

    plan = Plan(
        method="finercut",
        unit_kind="sublayer",
        removed=[Unit("attn", 3), Unit("mlp", 1)],
        budget={"reached": {"units_total": 8}},
    )
    stats = {"num_blocks": 4, "params_total": 1000}
    manifest = Manifest(source={}, family="llama", plan=plan, model_before=stats, model_after=stats)
    manifest.export = {"zero_filled": True}
    line = summary(manifest)
    assert (
        line.startswith("removed 1 attention and 1 MLP sublayers with finercut")
        and "nothing is saved" in line
    )
    assert "blocks" not in line.split(":")[0]
