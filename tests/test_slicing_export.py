"""SliceGPT / dynamic slicing end to end: the sliced export is the model the bases describe.

Truths: with slicing 0 (rotation only) the dense model's own logits; with slicing, the dense model
run with its stream projected onto the bases (:func:`hubprune.rotation.projected`), which shares
no code with the export (no folding, no rotated weights, no shortcut matrices, no remote code).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hubprune.arch import adapter_for
from hubprune.cli import main
from hubprune.cost import model_cost, plan_cost
from hubprune.export_hetero import load_hetero
from hubprune.methods import Budget
from hubprune.pipeline import CalibrationOptions, SourceOptions, prune
from hubprune.plan import Manifest
from hubprune.rotation import Bases, projected
from tests.test_finercut import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.tiny import SAMPLE_TEXT, save_tiny, tiny_model

ROTATABLE = ("llama", "mistral", "qwen2", "qwen3", "phi3")
IDS = torch.randint(4, 100, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    text = SAMPLE_TEXT * 2
    path.write_text("\n".join(text[i : i + 200] for i in range(0, len(text), 200)), encoding="utf-8")
    return path


def _prune(source: Path, out: Path, calib: Path, method: str = "slicegpt", amount=0.25, **params) -> Manifest:
    return prune(
        SourceOptions(str(source), dtype="float32"),
        method,
        Budget(amount) if amount else None,
        out,
        calibration=CalibrationOptions(dataset=str(calib), samples=8, seq_len=24),
        method_params=params,
        batch_size=4,
        export_format="compact",
    )


def _stock(folder: Path):
    return AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, attn_implementation="eager", dtype=torch.float32
    ).eval()


def _generate(model, use_cache: bool) -> torch.Tensor:
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=0)
    return model.generate(IDS[:1, :12], **kwargs)


@pytest.mark.parametrize("family", ROTATABLE)
@torch.no_grad()
def test_rotated_export_reproduces_the_dense_model_and_sliced_matches_projection(
    family: str, tmp_path: Path, calib: Path
) -> None:
    source = save_tiny(tmp_path / "base", family)
    dense_model = tiny_model(family)
    dense = dense_model(IDS).logits
    # Slicing 0: the rotation alone. Norms folded, every weight rotated, shortcuts, untied head.
    rotated = _prune(source, tmp_path / "rotated", calib, amount=None)
    reloaded = load_hetero(tmp_path / "rotated", dtype=torch.float32)
    assert any(k.endswith("attn_shortcut.weight") for k in reloaded.state_dict())
    torch.testing.assert_close(reloaded(IDS).logits, dense, atol=1e-4, rtol=0)
    assert rotated.export["slicing"]["hidden_sizes"] == [64] * 4

    # Slicing 25%: the export equals the dense model run on the projected stream.
    manifest = _prune(source, tmp_path / "sliced", calib)
    bases = Bases.from_tensors(manifest.plan.tensors, 4)
    assert bases.widths == [48] * 4
    with projected(dense_model, adapter_for(dense_model), bases):
        truth = dense_model(IDS).logits
    assert (truth - dense).abs().max() > 1e-2
    ours, stock = load_hetero(tmp_path / "sliced", dtype=torch.float32), _stock(tmp_path / "sliced")
    torch.testing.assert_close(ours(IDS).logits, truth, atol=1e-4, rtol=0)
    torch.testing.assert_close(stock(IDS).logits, ours(IDS).logits, atol=1e-5, rtol=0)
    assert torch.equal(_generate(stock, True), _generate(stock, False))

    # The parameters are what the cost model predicted from the plan, shortcuts and head included.
    predicted = plan_cost(dense_model, adapter_for(dense_model), manifest.plan.shape())
    assert sum(p.numel() for p in ours.parameters()) == predicted["params_total"]
    assert manifest.model_after["params_total"] == predicted["params_total"]
    assert manifest.plan.budget["reached"]["params_total"]["after"] == predicted["params_total"]
    assert (
        model_cost(ours, adapter=adapter_for(dense_model))["flops_per_token"] == predicted["flops_per_token"]
    )
    slicing = manifest.export["slicing"]
    assert slicing["shortcut_params"] == 4 * (48 * 48 + 48 * 48) - 48 * 48 + 48 * 64
    assert slicing["lm_head_untied"] is bool(dense_model.config.tie_word_embeddings)


@torch.no_grad()
def test_dynamic_slicing_exports_per_block_widths(tmp_path: Path, calib: Path) -> None:
    source = save_tiny(tmp_path / "base", "qwen2")
    manifest = _prune(source, tmp_path / "dyn", calib, "dynamic-slicing", 0.3, base=0.05)
    widths = manifest.export["slicing"]["hidden_sizes"]
    assert len(set(widths)) > 1
    config = json.loads((tmp_path / "dyn" / "config.json").read_text())
    assert config["rotated_residual"] is True and config["tie_word_embeddings"] is False
    model = tiny_model("qwen2")
    with projected(model, adapter_for(model), Bases.from_tensors(manifest.plan.tensors, 4)):
        truth = model(IDS).logits
    torch.testing.assert_close(_stock(tmp_path / "dyn")(IDS).logits, truth, atol=1e-4, rtol=0)


def test_lora_recovery_heals_a_sliced_model_and_keeps_its_format(tmp_path: Path, calib: Path) -> None:
    from hubprune.recover import recover, recovery_settings

    source = save_tiny(tmp_path / "base", "llama")
    _prune(source, tmp_path / "sliced", calib, amount=0.25)
    settings = recovery_settings(
        data=str(calib), seq_len=24, max_steps=6, lr=1e-2, batch_size=4, eval_fraction=0.2, mode="lora",
        lora={"r": 4, "alpha": 8},
    )  # fmt: skip
    record = recover(tmp_path / "sliced", tmp_path / "healed", settings)
    assert record.stages["recover"]["eval_loss_after"] < record.stages["recover"]["eval_loss_before"]
    config = json.loads((tmp_path / "healed" / "config.json").read_text())
    assert config["rotated_residual"] is True
    healed, before = load_hetero(tmp_path / "healed"), load_hetero(tmp_path / "sliced")
    assert not any("lora" in k for k in healed.state_dict())
    with torch.no_grad():
        assert not torch.allclose(healed(IDS).logits, before(IDS).logits, atol=1e-4)
        torch.testing.assert_close(
            _stock(tmp_path / "healed")(IDS).logits, healed(IDS).logits, atol=1e-5, rtol=0
        )


def _exit_code(argv: list[str]) -> int | None:
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        return exit_info.code


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "slicegpt", "--amount", "0.25"], "pass --format compact"),
        (
            ["--method", "slicegpt", "--amount", "0.25", "--format", "nemotron-nas"],
            "nemotron-nas format cannot",
        ),
        (
            ["--method", "slicegpt", "--amount", "1.5", "--format", "compact"],
            "neither a whole count nor a fraction",
        ),
        (["--method", "slicegpt", "--amount", "0", "--format", "compact"], "must be positive"),
        (["--method", "slicegpt", "--amount", "2", "--format", "compact"], "fraction of the hidden width"),
        (
            [
                "--method",
                "dynamic-slicing",
                "--amount",
                "0.2",
                "--method-arg",
                "base=0.3",
                "--format",
                "compact",
            ],
            "SB must be at most SP",
        ),
        (
            [
                "--method",
                "slicegpt",
                "--amount",
                "0.2",
                "--method-arg",
                "min_width=128",
                "--format",
                "compact",
            ],
            "larger than the hidden size",
        ),
        (
            [
                "--method",
                "slicegpt",
                "--amount",
                "0.9",
                "--method-arg",
                "min_width=32",
                "--format",
                "compact",
            ],
            "below min_width=32",
        ),
    ],
)
def test_bad_slicing_input_ends_in_one_sentence(tmp_path: Path, calib: Path, capsys, args, message) -> None:
    source = save_tiny(tmp_path / "base", "llama")
    argv = ["prune", str(source), *args, "--calibration", str(calib), "--samples", "4", "--seq-len", "16"]
    assert _exit_code([*argv, "--out", str(tmp_path / "out")]) not in (0, None)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_gemma_is_refused_before_loading_weights(tmp_path: Path, calib: Path, capsys) -> None:
    source = save_tiny(tmp_path / "base", "gemma2")
    (source / "model.safetensors").write_bytes(b"not weights")  # never read
    assert _exit_code(["prune", str(source), "--method", "slicegpt", "--amount", "0.2", "--format", "compact",
                       "--calibration", str(calib), "--out", str(tmp_path / "out")]) not in (0, None)  # fmt: skip
    assert "sandwich norms" in capsys.readouterr().err
