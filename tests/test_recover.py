"""Recovery fine-tuning: partial and LoRA on tiny models (and, marked slow, on the real SmolLM2).

What these catch: training that does not lower the held-out loss, a merged/partial model whose
exported folder loads differently from the model in memory, tied embeddings changed without
the user asking, an input run folder modified by recovery, and bad settings that fail late or
with an unclear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hubprune import export as export_mod
from hubprune.errors import DataError, RecipeError
from hubprune.methods import Budget
from hubprune.pipeline import SourceOptions, prune
from hubprune.plan import Manifest
from hubprune.recover import prepare_data, recover, recovery_settings, training_curve
from tests.tiny import SAMPLE_TEXT, char_tokenizer, save_tiny

REPO = Path(__file__).resolve().parents[1]
PROBE = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny tied-embedding Llama with its last block removed, as a run folder."""
    root = tmp_path_factory.mktemp("recover")
    save_tiny(root / "base", "llama", num_layers=4)
    prune(SourceOptions(str(root / "base"), device="cpu"), "reverse-order", Budget.parse(1), root / "pruned")
    return root / "pruned"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "notes.txt"
    path.write_text(
        "\n".join(SAMPLE_TEXT[i : i + 200] for i in range(0, len(SAMPLE_TEXT), 200)), encoding="utf-8"
    )
    return path


def _settings(text_file: Path, **overrides):
    values = dict(
        data=str(text_file),
        seq_len=32,
        max_steps=8,
        lr=3e-3,
        batch_size=4,
        eval_fraction=0.2,
        logging_steps=2,
    )
    values.update(overrides)
    return recovery_settings(**values)


def _folder_digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


@pytest.fixture
def captured(monkeypatch) -> dict:
    """Logits of the exact model object handed to write_plain, before it is written."""
    seen: dict = {}
    original = export_mod.write_plain

    def spy(model, *args, **kwargs):
        with torch.no_grad():
            seen["logits"] = model(PROBE).logits.clone()
        seen["model"] = model
        return original(model, *args, **kwargs)

    monkeypatch.setattr(export_mod, "write_plain", spy)
    return seen


def _reload(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _embeddings(folder: Path) -> torch.Tensor:
    return _reload(folder).model.embed_tokens.weight.detach()


def _check_export(out: Path, captured: dict) -> torch.nn.Module:
    """The folder loads with stock transformers and gives the in-memory model's logits."""
    reloaded = _reload(out)
    with torch.no_grad():
        logits = reloaded(PROBE).logits
    torch.testing.assert_close(logits, captured["logits"], rtol=1e-5, atol=1e-5)
    return reloaded


def test_partial_lowers_loss_exports_plain_and_keeps_tied_embeddings(tiny_run, text_file, tmp_path, captured):
    """Default partial run: loss goes down, reload matches, tied embeddings and the input are untouched."""
    before = _folder_digest(tiny_run)
    out = tmp_path / "partial"
    manifest = recover(tiny_run, out, _settings(text_file, mode="partial", last_k=2))
    record = manifest.stages["recover"]
    assert record["eval_loss_after"] < record["eval_loss_before"]
    assert not Path(record["from_run"]).is_absolute(), "an absolute local path would be published"
    assert (out / record["from_run"]).resolve() == Path(tiny_run).resolve()
    assert record["trained_modules"] == ["model.layers.1", "model.layers.2", "model.norm"]
    assert record["tied_embeddings_choice"] == "freeze" and "unchanged" in record["tied_embeddings"]
    assert record["curve"]["train_loss"] and record["steps"] == 8
    assert "prune" in manifest.stages and Manifest.load(out).stages["recover"]["mode"] == "partial"
    reloaded = _check_export(out, captured)
    assert reloaded.config.tie_word_embeddings
    torch.testing.assert_close(reloaded.model.embed_tokens.weight, _embeddings(tiny_run), rtol=0, atol=0)
    assert not torch.equal(reloaded.model.norm.weight, _reload(tiny_run).model.norm.weight)
    assert _folder_digest(tiny_run) == before, "recovery modified its input run folder"
    assert not Path(f"{out}.checkpoints").exists(), "checkpoints are removed once the run folder is written"


def test_lora_merges_into_plain_weights(tiny_run, text_file, tmp_path, captured):
    """LoRA is merged: the folder has no adapter tensors in the weights and reloads to the same logits."""
    out = tmp_path / "lora"
    settings = _settings(text_file, mode="lora", lr=1e-2, lora={"r": 4, "alpha": 8, "save_adapter": True})
    record = recover(tiny_run, out, settings).stages["recover"]
    assert record["eval_loss_after"] < record["eval_loss_before"]
    assert record["lora_merged"] and record["adapter_dir"] == "adapter"
    assert (out / "adapter" / "adapter_config.json").is_file()
    reloaded = _check_export(out, captured)
    assert not any("lora" in name for name in reloaded.state_dict())
    torch.testing.assert_close(reloaded.model.embed_tokens.weight, _embeddings(tiny_run), rtol=0, atol=0)
    assert not torch.allclose(reloaded(PROBE).logits, _reload(tiny_run)(PROBE).logits), "nothing was learned"


@pytest.mark.parametrize("choice", ["train", "untie"])
def test_tied_embeddings_change_only_when_asked(tiny_run, text_file, tmp_path, captured, choice):
    """`train` changes the shared matrix (still tied); `untie` trains a separate lm_head only.

    (`train` also runs with gradient checkpointing, so that option is exercised too.)
    """
    out = tmp_path / choice
    settings = _settings(
        text_file,
        mode="partial",
        max_steps=2,
        tied_embeddings=choice,
        gradient_checkpointing=choice == "train",
    )
    manifest = recover(tiny_run, out, settings)
    assert manifest.stages["recover"]["tied_embeddings_choice"] == choice
    reloaded = _check_export(out, captured)
    original = _embeddings(tiny_run)
    embed, head = reloaded.model.embed_tokens.weight, reloaded.lm_head.weight
    if choice == "train":
        assert reloaded.config.tie_word_embeddings and torch.equal(embed, head)
        assert not torch.equal(embed, original)
    else:
        assert not reloaded.config.tie_word_embeddings
        assert torch.equal(embed, original) and not torch.equal(head, original)
        assert manifest.model_after["params_total"] > Manifest.load(tiny_run).model_after["params_total"]


def test_bad_settings_fail_clearly(tiny_run, text_file, tmp_path):
    """k beyond the remaining blocks, unknown LoRA targets, a missing text column, lr <= 0."""
    with pytest.raises(RecipeError, match="last_k is 9 but the model has only 3 blocks left"):
        recover(tiny_run, tmp_path / "a", _settings(text_file, mode="partial", last_k=9))
    with pytest.raises(RecipeError, match=r"'q_projj' match no linear module.*q_proj"):
        recover(
            tiny_run, tmp_path / "b", _settings(text_file, mode="lora", lora={"target_modules": ["q_projj"]})
        )
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"body": SAMPLE_TEXT[:300]}) + "\n" for _ in range(4)), encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"no 'text' column.*it has: body"):
        recover(tiny_run, tmp_path / "c", _settings(rows, mode="partial", format="text"))
    with pytest.raises(RecipeError, match=r"lr: Input should be greater than 0"):
        recovery_settings(mode="partial", data="x.txt", lr=0)
    with pytest.raises(RecipeError, match="max_steps"):
        recovery_settings(mode="partial", data="x.txt", epochs=1, max_steps=3)
    with pytest.raises(RecipeError, match="--out must differ"):
        recover(tiny_run, tiny_run, _settings(text_file, mode="partial"))
    assert not any((tmp_path / name).exists() for name in "abc"), "a failed run left an output folder"


def test_cli_reports_bad_lr_in_one_line(tiny_run, capsys):
    from hubprune.cli import main

    code = main(
        ["recover", str(tiny_run), "--mode", "lora", "--data", "x.txt", "--lr", "-1", "--out", "unused"]
    )
    assert code == 1
    assert "lr: Input should be greater than 0 (got: -1.0)" in capsys.readouterr().err


def test_instruction_rows_use_the_chat_template_and_mask_the_prompt(tmp_path):
    """Alpaca-style rows go through the tokenizer's chat template; the loss is on the answer only."""
    tokenizer = char_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    rows = tmp_path / "alpaca.jsonl"
    data = [{"instruction": f"Say {i}", "input": "", "output": f"ok {i}"} for i in range(10)]
    rows.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    prepared = prepare_data(tokenizer, recovery_settings(mode="partial", data=str(rows), seq_len=64))
    assert prepared.info["format"] == "instruction" and prepared.info["chat_template"]
    example = prepared.train[0]

    def decode(ids: list[int]) -> str:  # the char tokenizer's decode() puts spaces between characters
        return "".join(tokenizer.convert_ids_to_tokens(ids))

    text = decode(example["input_ids"])
    assert text.startswith("<s>user: Say") and "</s><s>assistant: ok" in text
    answer = decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    )
    assert answer.startswith("ok ") and answer.endswith("</s>") and "assistant" not in answer
    assert prepared.info["train_examples"] + prepared.info["eval_examples"] == 10


def test_resuming_from_the_final_checkpoint_records_what_was_trained(tiny_run, text_file, tmp_path):
    """A run killed after training, before its folder was written, resumes from the last checkpoint.

    Would catch transformers' extra step past `max_steps` on such a resume (7 steps recorded for
    6, a later epoch, an extra loss point) or a record that differs from an uninterrupted run's.
    """
    settings = _settings(text_file, mode="partial", max_steps=6, save_steps=3, logging_steps=1)
    whole = recover(tiny_run, tmp_path / "whole", settings.model_copy(update={"keep_checkpoints": True}))
    checkpoints = Path(f"{tmp_path / 'whole'}.checkpoints")
    assert (checkpoints / "checkpoint-6" / "trainer_state.json").is_file()
    resumed = recover(
        tiny_run, tmp_path / "resumed", settings.model_copy(update={"checkpoint_dir": str(checkpoints)})
    )
    a, b = whole.stages["recover"], resumed.stages["recover"]
    assert b["resumed_from"] == "checkpoint-6" and a["resumed_from"] is None
    assert b["steps"] == a["steps"] == 6 and b["epochs"] == a["epochs"]
    assert b["curve"]["train_loss"] == a["curve"]["train_loss"] and b["curve"]["train_loss"][-1][0] == 6
    assert b["eval_loss_after"] == a["eval_loss_after"]
    assert (
        _folder_digest(tmp_path / "resumed")["model.safetensors"]
        == _folder_digest(tmp_path / "whole")["model.safetensors"]
    )


def test_training_curve_summary_is_short_and_keeps_the_ends():
    history = [{"step": s, "loss": 10.0 - s / 100} for s in range(1, 201)] + [{"step": 200, "eval_loss": 7.5}]
    curve = training_curve(history, {"eval_loss": 9.0}, {"eval_loss": 7.5})
    assert len(curve["train_loss"]) <= 61 and curve["train_loss"][-1] == [200, 8.0]
    assert curve["train_loss_min"] == 8.0 and curve["train_loss_first"] == 9.99
    assert curve["eval_loss"] == [[0, 9.0], [200, 7.5]]
    assert curve["eval_perplexity_before"] == pytest.approx(8103.08, rel=1e-4)


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
def test_accelerate_launch_runs_recovery_on_two_cpu_processes(tiny_run, text_file, tmp_path):
    """`accelerate launch` with the example CPU config trains with DDP over 2 processes."""
    out = tmp_path / "ddp"
    command = [
        "accelerate", "launch", "--config_file", str(REPO / "examples/accelerate/cpu-2proc.yaml"),
        "--main_process_port", str(29500 + os.getpid() % 1000),
        "-m", "hubprune", "recover", str(tiny_run), "--mode", "partial", "--data", str(text_file),
        "--seq-len", "32", "--max-steps", "3", "--batch-size", "2", "--lr", "3e-3", "--eval-fraction", "0.2",
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = Manifest.load(out).stages["recover"]
    assert (record["world_size"], record["engine"], record["steps"]) == (2, "ddp", 3)
    assert record["effective_batch_size"] == 4
    assert done.stdout.count("wrote ") == 1, "only the main process reports"


@pytest.mark.slow
def test_smollm2_partial_and_lora_lower_held_out_loss(smollm2_dir, tmp_path):
    """The bar on a small budget: SmolLM2 without its last 6 blocks, 2 steps of each mode on real text."""
    pruned = tmp_path / "r6"
    prune(SourceOptions(str(smollm2_dir), device="cpu"), "reverse-order", Budget.parse(6), pruned)
    common = dict(
        data="offline:lee-background", seq_len=48, max_steps=2, batch_size=2, eval_fraction=0.01,
        max_eval_examples=1, logging_steps=1, device="cpu",
    )  # fmt: skip
    for mode, lr in (("partial", 1e-3), ("lora", 2e-3)):
        record = recover(pruned, tmp_path / mode, recovery_settings(mode=mode, lr=lr, **common)).stages[
            "recover"
        ]
        assert record["eval_loss_after"] < record["eval_loss_before"] - 0.1, (mode, record["curve"])
