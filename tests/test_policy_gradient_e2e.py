"""`prune --method policy-gradient` end to end on tiny models, through the command line.

Every granularity (heads, channels, heads and channels, blocks), exported plain and compact,
reloads with the logits of the in-memory pruned model (the source with the manifest's plan
applied); the exports go through `eval`, `recover`, `card` and `publish --dry-run`; the same
seed gives the same mask and another seed another search; a run killed by SIGKILL right after a
checkpoint resumes from it and ends where an uninterrupted run ends; bad input is one line.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hubprune.arch import adapter_for
from hubprune.cli import main
from hubprune.formats import load_folder
from hubprune.plan import PLAN_TENSORS_NAME, Manifest
from hubprune.rundir import FAULT_ENV
from hubprune.surgery import apply_plan
from tests.test_finercut import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.test_width_export import IDS, _generate, _reload
from tests.tiny import SAMPLE_TEXT, save_tiny

REPO = Path(__file__).resolve().parents[1]

#: granularity -> (family, budget arguments). Two families: Llama, and Qwen3 (q/k norms, sliding windows).
CASES = {
    "heads": ("qwen3", ["--amount", "0.25", "--budget-by", "units"]),  # 2 of 8 KV groups
    "channels": ("llama", ["--amount", "0.25", "--budget-by", "params"]),
    "heads,channels": ("llama", ["--amount", "0.25", "--budget-by", "params"]),
    "blocks": ("qwen3", ["--amount", "1"]),
}


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private HUBPRUNE_CACHE: checkpoints and cached base results of these runs only."""
    path = tmp_path_factory.mktemp("pg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HUBPRUNE_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pg")
    for family in ("llama", "qwen3"):
        save_tiny(root / family, family)
    (root / "text.txt").write_text(
        "\n".join(SAMPLE_TEXT[i : i + 200] for i in range(0, len(SAMPLE_TEXT), 200))
    )
    (root / "one-window.txt").write_text(SAMPLE_TEXT[:32])  # 32 tokens: every seed cuts the same windows
    return root


def _argv(
    root: Path, granularity: str, out: Path, *extra: str, steps: int = 6, text: str = "text.txt"
) -> list[str]:
    family, budget = CASES[granularity]
    return [
        "prune",
        str(root / family),
        "--method",
        "policy-gradient",
        *budget,
        "--method-arg",
        f"granularity={granularity}",
        "--method-arg",
        f"steps={steps}",
        "--calibration",
        str(root / text),
        "--samples",
        "4",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def run(root: Path) -> Callable[[str, str], Path]:
    """The run folder of `granularity` exported in `fmt` (pruned once per module)."""
    done: dict[tuple[str, str], Path] = {}

    def get(granularity: str, fmt: str) -> Path:
        if (granularity, fmt) not in done:
            out = root / "runs" / f"{granularity.replace(',', '+')}-{fmt}"
            assert main(_argv(root, granularity, out, "--format", fmt)) == 0
            done[granularity, fmt] = out
        return done[granularity, fmt]

    return get


def _probabilities(folder: Path) -> dict[str, torch.Tensor]:
    tensors = Manifest.load(folder).plan.tensors
    return {k: v for k, v in tensors.items() if k.count(".") == 1}  # policy_gradient.<pool>: the final ones


@pytest.mark.parametrize("granularity", list(CASES))
@torch.no_grad()
def test_exports_reload_with_the_in_memory_logits(granularity: str, root: Path, run) -> None:
    """Would catch a plan that the exports do not honour (wrong units sliced or zero-filled, a
    block kept), a compact folder stock transformers or hubprune cannot load, or a broken cache."""
    family = CASES[granularity][0]
    source = _reload(root / family, remote=False)
    dense_params = sum(p.numel() for p in source.parameters())
    dense = source(input_ids=IDS, use_cache=False).logits
    for fmt in ("plain", "compact"):
        folder = run(granularity, fmt)
        manifest = Manifest.load(folder)
        assert manifest.plan.method == "policy-gradient" and manifest.plan.removed
        assert manifest.plan.search_cost["forward_passes"] == 6 * 2  # steps x k
        assert len(manifest.plan.curve) == 6 and set(_probabilities(folder))
        truth_model = apply_plan(copy.deepcopy(source), adapter_for(source), manifest.plan)
        truth = truth_model(input_ids=IDS, use_cache=False).logits
        assert (truth - dense).abs().max() > 1e-4, "the plan removed nothing"
        ours = load_folder(folder, dtype=torch.float32, device="cpu")
        stock = _reload(folder, remote=fmt == "compact")
        for reloaded in (ours, stock):
            torch.testing.assert_close(
                reloaded(input_ids=IDS, use_cache=False).logits, truth, atol=1e-5, rtol=0
            )
        if fmt == "compact":
            assert (
                sum(p.numel() for p in stock.parameters())
                == manifest.model_after["params_total"]
                < dense_params
            )
            assert torch.equal(_generate(stock, True), _generate(stock, False))
    plain, compact = (Manifest.load(run(granularity, fmt)).plan.removed for fmt in ("plain", "compact"))
    assert plain == compact


@pytest.mark.parametrize("granularity", ["heads,channels", "blocks"])
def test_eval_recover_card_and_publish_on_a_compact_export(
    granularity: str, run, root: Path, tmp_path: Path, capsys
) -> None:
    """Would catch a verb that refuses (or miscounts) a policy-gradient compact export, or a
    recovery that writes it back in another format."""
    folder = tmp_path / "run"
    shutil.copytree(run(granularity, "compact"), folder)
    text = str(root / "text.txt")
    args = ["eval", str(folder), "--perplexity-data", text, "--seq-len", "16", "--max-tokens", "128"]
    assert main([*args, "--batch-size", "2"]) == 0
    results = json.loads((folder / "eval" / "results.json").read_text())
    pruned, base = results["cost"]["pruned"], results["cost"]["base"]
    assert pruned["params_total"] == Manifest.load(folder).model_after["params_total"] < base["params_total"]
    assert results["perplexity"]["metric"]["pruned"] > 1

    recovered = tmp_path / "recovered"
    argv = ["recover", str(folder), "--mode", "lora", "--data", text, "--seq-len", "32"]
    assert (
        main([*argv, "--max-steps", "2", "--batch-size", "2", "--lr", "3e-3", "--out", str(recovered)]) == 0
    )
    manifest = Manifest.load(recovered)
    assert manifest.stages["recover"]["lora_merged"] and manifest.plan.method == "policy-gradient"
    assert manifest.export["format"] == Manifest.load(folder).export["format"]
    with torch.no_grad():
        before = load_folder(folder, dtype=torch.float32, device="cpu")(input_ids=IDS).logits
        after = load_folder(recovered, dtype=torch.float32, device="cpu")(input_ids=IDS).logits
    assert not torch.allclose(before, after), "recovery trained nothing"

    for target in (folder, recovered):
        assert main(["card", str(target), "--repo", "test-org/pg"]) == 0
        assert "policy-gradient" in (target / "README.md").read_text().lower()
        assert main(["publish", str(target), "--repo", "test-org/pg", "--private", "--dry-run"]) == 0
    assert "hubprune: error" not in capsys.readouterr().err


def test_same_seed_same_mask_other_seed_other_search(root: Path, tmp_path: Path) -> None:
    """Would catch a search that ignores the seed (unseeded or fixed-seed sampling) or is not
    reproducible. The calibration text is one window long, so both seeds see the same tokens."""
    runs = {}
    for name, seed in (("first", "0"), ("again", "0"), ("other", "1")):
        argv = _argv(root, "heads,channels", tmp_path / name, "--seed", seed, text="one-window.txt")
        assert main(argv) == 0
        runs[name] = Manifest.load(tmp_path / name).plan
    first, again, other = runs["first"], runs["again"], runs["other"]
    assert first.calibration.token_ids_sha256 == other.calibration.token_ids_sha256, "the test lost its point"
    assert again.removed == first.removed and again.curve == first.curve
    for name, probs in _probabilities(tmp_path / "first").items():
        assert torch.equal(_probabilities(tmp_path / "again")[name], probs)
        assert not torch.equal(_probabilities(tmp_path / "other")[name], probs), name
    assert [p["loss"] for p in other.curve] != [p["loss"] for p in first.curve]


def test_sigkill_after_a_checkpoint_resumes_to_the_same_mask(root: Path, tmp_path: Path, monkeypatch) -> None:
    """Would catch a checkpoint never written or not found again, a resume that restarts from
    step 0 or loses the RNG state or the baseline (another mask), or a checkpoint left behind."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HUBPRUNE_CACHE", str(cache))
    extra = ["--method-arg", "checkpoint_every=2"]
    argv = _argv(root, "heads,channels", tmp_path / "resumed", *extra, steps=10)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HUBPRUNE_CACHE": str(cache)}
    command = [sys.executable, "-m", "hubprune", *argv]
    killed = subprocess.run(
        command, env={**env, FAULT_ENV: "policy-checkpoint-4"}, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(list((cache / "checkpoints").glob("*.pt"))) == 1
    assert not (tmp_path / "resumed").exists()

    env.pop(FAULT_ENV, None)
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list((cache / "checkpoints").glob("*.pt"))
    assert main(_argv(root, "heads,channels", tmp_path / "straight", *extra, steps=10)) == 0
    a, b = Manifest.load(tmp_path / "resumed").plan, Manifest.load(tmp_path / "straight").plan
    assert (a.search_cost["resumed_from_step"], b.search_cost["resumed_from_step"]) == (4, 0)
    assert a.removed == b.removed and len(a.curve) == 10 and a.curve == b.curve
    for name, probs in _probabilities(tmp_path / "straight").items():
        assert torch.equal(_probabilities(tmp_path / "resumed")[name], probs), name
    assert (tmp_path / "resumed" / PLAN_TENSORS_NAME).is_file()


@pytest.mark.parametrize(
    ("granularity", "extra", "message"),
    [
        ("heads", ["--method-arg", "granularity=rows"], "granularity must be one of heads, channels"),
        ("heads", ["--method-arg", "k=1"], "k (masks per step) must be a whole number >= 2, got 1"),
        ("heads", ["--method-arg", "lr=0"], "lr must be a learning rate above 0, got 0"),
        ("heads", ["--method-arg", "lr=-1"], "lr must be a learning rate above 0, got -1"),
        ("channels", ["--budget-by", "kv"], "pruning channels cannot reduce the KV cache"),
        ("blocks", ["--amount", "4"], "amount 4 would remove all 4 blocks"),
        (
            "heads",
            ["--amount", "0.6"],
            "would leave blocks narrower than the minimum widths (min_kv_groups=1",
        ),
    ],
)
def test_bad_input_is_one_clear_line(
    granularity: str, extra: list[str], message: str, root: Path, tmp_path: Path, capsys
) -> None:
    """Would catch a traceback, a zero exit, or a message that does not say what is wrong."""
    out = tmp_path / "out"
    assert main(_argv(root, granularity, out, *extra)) == 1  # later flags win over the case's budget
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line]
    assert len(err) == 1 and err[0].startswith("hubprune: error: ") and message in err[0], err
    assert not out.exists()


def test_device_auto_places_the_model_with_accelerate_and_searches(
    root: Path, tmp_path: Path, monkeypatch
) -> None:
    """`--device auto` loads through accelerate's device_map="auto" (here: every block on the
    CPU, the only device) and the search, masks and gates run there; the plan equals the one of
    an ordinary CPU run."""
    from transformers import AutoModelForCausalLM

    placed = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        placed.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    assert main(_argv(root, "blocks", tmp_path / "auto", "--device", "auto", "--dtype", "float32")) == 0
    assert placed == ["auto"]
    assert main(_argv(root, "blocks", tmp_path / "cpu", "--device", "cpu")) == 0
    auto, cpu = (Manifest.load(tmp_path / name).plan for name in ("auto", "cpu"))
    assert auto.removed == cpu.removed and auto.curve == cpu.curve
