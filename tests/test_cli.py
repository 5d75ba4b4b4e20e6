"""The `hubprune` command: the happy path on a tiny model, and one clear line for each user mistake."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from hubprune.cli import main
from hubprune.plan import Manifest
from tests.tiny import SAMPLE_TEXT, save_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "cal.txt"
    path.write_text(SAMPLE_TEXT)
    return path


def cal_args(text_file):
    return ["--calibration", str(text_file), "--samples", "4", "--seq-len", "32"]


def test_prune_writes_a_loadable_folder_and_manifest(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "prune",
            str(tiny_dir),
            "--method",
            "block-influence",
            "--amount",
            "2",
            "--out",
            str(out),
            *cal_args(text_file),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "removed 2 of 4 blocks" in printed and str(out) in printed
    manifest = Manifest.load(out)
    assert manifest.plan.method == "block-influence" and len(manifest.plan.removed) == 2
    assert manifest.source["kind"] == "local" and manifest.plan.calibration.samples == 4
    assert manifest.model_after["num_blocks"] == 2 == AutoConfig.from_pretrained(out).num_hidden_layers
    assert AutoModelForCausalLM.from_pretrained(out)(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 128)


def test_inspect_json_scores_every_block(tiny_dir, text_file, capsys):
    assert main(["inspect", str(tiny_dir), "--method", "angular", "--json", *cal_args(text_file)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["scores"]) == 4 and plan["removed"] == []
    assert main(["inspect", str(tiny_dir), "--method", "reverse-order", "--amount", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["unit", "score", "rank", "removed"] and table[4].endswith("x")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "./does-not-exist"], "local model folder ./does-not-exist does not exist"),
        (["prune", "not a repo!"], "is not a valid Hub repo id"),
        (["prune", "{tiny}", "--amount", "0"], "amount must be positive"),
        (["prune", "{tiny}", "--amount", "4"], "would remove all 4 blocks"),
        (["prune", "{tiny}", "--amount", "1.5"], "neither a whole count nor a fraction"),
        (["prune", "{tiny}", "--method", "shortgpt"], "unknown method 'shortgpt'"),
        (["prune", "{tiny}", "--method", "block-influence", "--calibration", "{empty}"], "contains no text"),
        (
            [
                "prune",
                "{tiny}",
                "--method",
                "block-influence",
                "--seq-len",
                "1000",
                "--calibration",
                "{text}",
            ],
            "longer than the model allows (256 positions)",
        ),
        (["prune", "{gpt2}"], "'gpt2' is not supported"),
    ],
)
def test_user_mistakes_are_one_clear_line(argv, message, tiny_dir, text_file, tmp_path, capsys):
    """Would catch: a traceback, a zero exit, or a message that does not say what is wrong."""
    (tmp_path / "empty.txt").write_text("")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2).save_pretrained(gpt2)
    values = {
        "tiny": str(tiny_dir),
        "empty": str(tmp_path / "empty.txt"),
        "text": str(text_file),
        "gpt2": str(gpt2),
    }
    argv = [a.format(**values) for a in argv]
    defaults = {"--method": "reverse-order", "--amount": "1", "--out": str(tmp_path / "out")}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    assert main(argv) == 1
    # Progress bars (weights loading) may precede the error; the error itself is one line.
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line]
    assert len(err) == 1 and err[0].startswith("hubprune: error: ") and message in err[0]
    assert not (tmp_path / "out").exists(), "a failed run left an output folder"


def test_no_traceback_from_the_console_script(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hubprune",
            "prune",
            "owner/",
            "--method",
            "random",
            "--amount",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "is not a valid Hub repo id" in result.stderr


def test_refuses_to_overwrite_an_existing_run(tiny_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("someone's card")
    assert (
        main(
            [
                "prune",
                str(tiny_dir),
                "--method",
                "reverse-order",
                "--amount",
                "1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 1
    )
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "README.md").read_text() == "someone's card"


def test_help_for_every_verb():
    from hubprune.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert {"pull", "inspect", "prune", "ls"} <= set(verbs)
    for name, sub in verbs.items():
        assert sub.format_help().startswith("usage: hubprune " + name)


def test_local_pickle_weights_need_allow_pickle(tmp_path, capsys):
    from tests.tiny import char_tokenizer, tiny_model

    folder = tmp_path / "pickled"
    model = tiny_model("llama")
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # transformers 5 only writes safetensors
    char_tokenizer().save_pretrained(folder)
    argv = ["prune", str(folder), "--method", "reverse-order", "--amount", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert main([*argv, "--allow-pickle"]) == 0


@pytest.mark.parametrize("debug", [False, True])
def test_hubprune_debug_shows_the_cause_chain(hub_server, debug):
    """Catches HUBPRUNE_DEBUG=1 hiding the library error behind hubprune's (`from None`), or a normal
    run printing more than the one-line message."""
    env = {**os.environ, "HUBPRUNE_DEBUG": "1" if debug else ""}
    result = subprocess.run(
        [sys.executable, "-m", "hubprune", "pull", "acme/does-not-exist"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    if debug:
        assert "huggingface_hub.errors.RepositoryNotFoundError" in result.stderr
        assert "The above exception was the direct cause of the following exception" in result.stderr
        assert result.stderr.rstrip().splitlines()[-1].startswith("hubprune.errors.SourceError: model repo")
    else:
        assert result.stderr.splitlines() == [
            "hubprune: error: model repo acme/does-not-exist was not found on the Hub "
            "(or it is private and no valid token is set)"
        ]
