"""The evaluation stage (hubprune.evaluation, hubprune.speed, `hubprune eval`).

Tiny random models keep these fast; one slow test uses the real SmolLM2 weights to check that
hubprune's in-memory evaluation agrees item by item with the plain `lm_eval` command line, and
that removing 6 blocks makes perplexity on real text worse.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubprune import evaluation
from hubprune.cli import main
from hubprune.errors import RecipeError, SourceError
from hubprune.evaluation.perplexity import nll_sum
from hubprune.methods import Budget
from hubprune.pipeline import SourceOptions, prune
from hubprune.plan import Manifest
from hubprune.speed import measure_speed
from tests.tiny import SAMPLE_TEXT, char_tokenizer, save_tiny, tiny_model

TINY = dict(perplexity_seq_len=64, perplexity_max_tokens=512, batch_size=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama (4 blocks) and a run folder with its last block removed."""
    root = tmp_path_factory.mktemp("eval")
    base = save_tiny(root / "base", "llama")
    run = root / "run"
    prune(SourceOptions(str(base)), "reverse-order", Budget.parse("1", "units"), run)
    text = root / "text.txt"
    text.write_text(SAMPLE_TEXT.replace(". ", ".\n"))
    return {"base": base, "run": run, "text": text, "cache": root / "cache"}


@pytest.fixture
def cache(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HUBPRUNE_CACHE", str(tiny["cache"]))
    return tiny["cache"]


def _check_rows(report: dict) -> None:
    """delta and retained % must follow from the values in the same row."""
    rows = [row for metrics in report["tasks"].values() for row in metrics.values()]
    if report["perplexity"]:
        rows.append(report["perplexity"]["metric"])
    for row in rows:
        for role in report["roles"][1:]:
            assert row["delta"][role] == pytest.approx(row[role] - row["base"])
            if row["base"] and row[role]:
                ratio = row[role] / row["base"] if row["higher_is_better"] else row["base"] / row[role]
                assert row["retained_pct"][role] == pytest.approx(100 * ratio)


def test_run_report_validates_and_is_self_consistent(
    tiny: dict[str, Path], cache: Path, capsys: pytest.CaptureFixture
) -> None:
    """One evaluation of a run folder: the JSON schema, the recorded settings, lm-eval's config
    block, size/cost before and after, speed fields, and the manifest summary for the card.
    Then `hubprune eval` on the same folder: the table, and both models' results read from the
    cache (keyed by their files and the settings), equal to the first computation."""
    report = evaluation.evaluate_run(
        tiny["run"],
        tasks=["offline:piqa"],
        limit=6,
        perplexity_data=str(tiny["text"]),
        speed=True,
        speed_options={"prompt_tokens": 8, "new_tokens": 2, "repeats": 2},
        **TINY,
    )
    evaluation.validate_report(report)
    assert json.loads((tiny["run"] / "eval" / "results.json").read_text()) == report
    assert report["roles"] == ["base", "pruned"] and report["final"] == "pruned"
    _check_rows(report)
    settings = report["settings"]
    assert settings["limit"] == 6 and settings["n_samples"]["offline_piqa"]["effective"] == 6
    assert settings["task_versions"] == {"offline_piqa": 1.0} and settings["n_shot"] == {"offline_piqa": 0}
    assert (settings["batch_size"], settings["dtype"], settings["device"], settings["seed"]) == (
        4,
        "float32",
        "cpu",
        0,
    )
    assert report["lm_eval"]["pruned"]["config"]["limit"] == 6  # lm-eval's own block, kept
    assert set(report["tasks"]["offline_piqa"]) == {"acc", "acc_norm"}
    ppl = report["perplexity"]
    assert ppl["seq_len"] == 64 and ppl["stride"] == 64 and ppl["bos_prepended"] is False
    assert ppl["metric"]["base"] != ppl["metric"]["pruned"]
    assert all(math.isfinite(ppl["metric"][r]) and ppl["metric"][r] > 1 for r in report["roles"])
    base, pruned = report["cost"]["base"], report["cost"]["pruned"]
    assert (pruned["num_blocks"], base["num_blocks"]) == (3, 4)
    for key in ("params_total", "bytes_on_disk", "flops_per_token", "kv_cache_bytes_per_token"):
        assert pruned[key] < base[key], key
    assert report["cost"]["change"]["pruned"]["kv_cache_bytes_per_token"] == pytest.approx(-0.25)
    for role in report["roles"]:
        speed = report["speed"][role]
        assert speed["prefill_tokens_per_s"] > 0 and speed["decode_tokens_per_s"] > 0
        assert speed["device_name"]
    summary = Manifest.load(tiny["run"]).stages["evaluate"]
    assert summary["results"] == "eval/results.json"
    assert summary["tasks"]["offline_piqa"]["metric"] == "acc_norm"
    assert summary["perplexity"]["pruned"] == ppl["metric"]["pruned"]
    assert "prune" in Manifest.load(tiny["run"]).stages  # the other stages' records survive

    args = ["eval", str(tiny["run"]), "--tasks", "offline:piqa", "--limit", "6", "--batch-size", "4"]
    args += ["--perplexity-data", str(tiny["text"]), "--seq-len", "64", "--max-tokens", "512"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "retained" in out and "offline_piqa" in out and "ppl@64" in out and "KV cache" in out
    second = json.loads((tiny["run"] / "eval" / "results.json").read_text())
    assert second["models"]["base"]["cached"] is True and second["models"]["pruned"]["cached"] is True
    assert report["models"]["pruned"]["cached"] is False
    assert second["tasks"] == report["tasks"]  # the cache holds the numbers first computed
    assert second["perplexity"]["metric"] == report["perplexity"]["metric"]
    assert second["speed"] is None


def test_recovered_run_reports_three_columns(tiny: dict[str, Path], cache: Path, tmp_path: Path) -> None:
    """A recovered folder: its own model is "recovered", the pruned numbers come from the run it
    was recovered from (manifest stages.recover.from_run). No tasks: perplexity and cost only,
    as a recipe's evaluate stage may ask."""
    from safetensors.torch import load_file, save_file

    recovered = tmp_path / "recovered"
    shutil.copytree(tiny["run"], recovered)
    shard = next(recovered.glob("*.safetensors"))
    weights = load_file(shard)
    torch.manual_seed(1)
    weights = {k: v + 0.05 * torch.randn_like(v) if v.dim() == 2 else v for k, v in weights.items()}
    save_file(weights, shard, metadata={"format": "pt"})
    manifest = Manifest.load(recovered)
    manifest.stages["recover"] = {"from_run": str(tiny["run"]), "method": "lora"}
    manifest.save(recovered)
    report = evaluation.evaluate_run(recovered, tasks=[], perplexity_data=str(tiny["text"]), **TINY)
    evaluation.validate_report(report)
    assert report["roles"] == ["base", "pruned", "recovered"] and report["final"] == "recovered"
    _check_rows(report)
    ppl = report["perplexity"]["metric"]
    assert ppl["recovered"] != ppl["pruned"]
    assert report["tasks"] == {} and report["lm_eval"] == {} and report["settings"]["tasks"] == []
    assert set(report["cost"]) == {"base", "pruned", "recovered", "change"}
    # the report is published with the run folder: local folders by name only
    assert report["models"]["pruned"]["path"] == f"local:{tiny['run'].name}"
    assert report["models"]["recovered"]["path"] == f"local:{recovered.name}"
    assert Manifest.load(recovered).stages["evaluate"]["final"] == "recovered"


def test_bad_input_is_one_clear_error(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    """limit <= 0, a run folder without a model, a missing folder: each a HubpruneError whose one
    sentence the CLI prints, raised before any model is loaded."""
    with pytest.raises(RecipeError, match="--limit must be a positive"):
        evaluation.evaluate_run(tiny["run"], tasks=["offline:piqa"], limit=0)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(tiny["run"] / "hubprune.json", empty / "hubprune.json")
    with pytest.raises(SourceError, match=r"empty-run has no model \(config.json is missing\)"):
        evaluation.evaluate_run(empty, tasks=["offline:piqa"])
    (empty / "config.json").write_text((tiny["run"] / "config.json").read_text())
    with pytest.raises(SourceError, match=r"has no model \(weights"):
        evaluation.evaluate_run(empty, tasks=["offline:piqa"])
    with pytest.raises(SourceError, match="does not exist"):
        evaluation.evaluate_run(tmp_path / "nowhere", tasks=["offline:piqa"])
    assert main(["eval", str(tiny["run"]), "--tasks", "offline:piqa", "--limit", "-1"]) == 1
    assert "hubprune: error: --limit must be a positive" in capsys.readouterr().err
    with pytest.raises(RecipeError, match="nothing to evaluate"):
        evaluation.evaluate_run(tiny["run"], tasks=[], perplexity=False)


def test_offline_run_defaults_to_offline_text(
    tiny: dict[str, Path], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A run pruned from an `offline:` model, evaluated with no --perplexity-data, is measured on
    offline:xsum (not WikiText from the Hub), and the report and the CLI say so. Would catch: the
    Hub default used for an offline run, or a default chosen silently."""
    from hubprune.evaluation import runner

    run = tmp_path / "offline-run"
    shutil.copytree(tiny["run"], run)
    manifest = Manifest.load(run)
    manifest.source["spec"] = "offline:smollm2-135m-instruct"
    manifest.save(run)
    resolve = runner._resolve  # the tiny base stands in for the offline model
    monkeypatch.setattr(
        runner,
        "_resolve",
        lambda role, spec, *a, **k: resolve(role, str(tiny["base"]) if role == "base" else spec, *a, **k),
    )
    monkeypatch.setattr("hubprune.hub.hub_reachable", lambda: False)
    assert main(["eval", str(run), "--seq-len", "64", "--max-tokens", "512", "--batch-size", "4"]) == 0
    assert "perplexity text: offline:xsum, the default for an offline model" in capsys.readouterr().out
    data = json.loads((run / "eval" / "results.json").read_text())["perplexity"]["data"]
    assert data["spec"] == "offline:xsum" and data["kind"] == "offline" and data["text_column"] == "document"


def test_data_is_checked_before_any_model(tiny: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """eval and prune load their text before loading weights (prune: before downloading a Hub
    model; a local model's config is read first, which costs nothing): a missing file is a
    DataError and a Hub default without the Hub a fast HubUnreachableError naming the offline
    options; a prune from an offline: source calibrates on offline text. Would catch: text loaded
    after the weights or the download, or a Hub default for an offline source."""
    import time

    from hubprune import pipeline
    from hubprune.errors import DataError, HubUnreachableError
    from hubprune.evaluation import runner

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was resolved before the data was checked")

    monkeypatch.setattr(runner, "_resolve", no_model)
    monkeypatch.setattr(pipeline, "load", no_model)
    with pytest.raises(DataError, match="missing.txt does not exist"):
        evaluation.evaluate_run(tiny["run"], tasks=[], perplexity_data=str(tmp_path / "missing.txt"))
    missing = pipeline.CalibrationOptions(dataset=str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="missing.txt does not exist"):
        prune(
            SourceOptions(str(tiny["base"])), "perplexity", Budget(1), tmp_path / "out", calibration=missing
        )
    with monkeypatch.context() as hub_model:
        hub_model.setattr(pipeline, "resolve_source", no_model)  # a Hub id: nothing downloaded first
        with pytest.raises(DataError, match="missing.txt does not exist"):
            prune(
                SourceOptions("owner/model"), "perplexity", Budget(1), tmp_path / "out", calibration=missing
            )
    monkeypatch.setattr("hubprune.hub.hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="--perplexity-data offline:xsum .*--no-perplexity"):
        evaluation.evaluate_run(tiny["run"], tasks=[])
    with pytest.raises(HubUnreachableError, match="--calibration offline:lee-background"):
        prune(SourceOptions(str(tiny["base"])), "perplexity", Budget(1), tmp_path / "out2")
    assert time.perf_counter() - start < 5
    offline_text = pipeline.calibration_text(pipeline.CalibrationOptions(), "offline:smollm2-135m-instruct")
    assert offline_text.source == "offline:lee-background" and len(offline_text.texts) == 300


def test_perplexity_windows_match_a_direct_computation() -> None:
    """Disjoint windows must equal nll_sum's per-window NLL; with overlap, every
    token after the first is scored exactly once; one window covering everything equals the
    whole-sequence NLL whatever the stride."""
    model, tokenizer = tiny_model("llama"), char_tokenizer()
    text = SAMPLE_TEXT[:256]  # one token per character: exactly 4 windows of 64
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    n = len(ids)
    assert n == 256
    disjoint = evaluation.text_perplexity(model, tokenizer, [text], seq_len=64, max_tokens=n)
    nll, count = 0.0, 0
    for start in range(0, n, 64):
        part, k = nll_sum(model, ids[None, start : start + 64], torch.ones(1, 64, dtype=torch.long))
        nll, count = nll + part, count + k
    assert (disjoint["windows"], disjoint["scored_tokens"]) == (4, count) == (4, 4 * 63)
    assert disjoint["nll"] == pytest.approx(nll, rel=1e-5)
    assert disjoint["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    overlap = evaluation.text_perplexity(model, tokenizer, [text[:250]], seq_len=64, stride=32, max_tokens=n)
    assert overlap["scored_tokens"] == 250 - 1
    whole_nll, whole_count = nll_sum(model, ids[None], torch.ones(1, n, dtype=torch.long))
    single = evaluation.text_perplexity(model, tokenizer, [text], seq_len=n, stride=7, max_tokens=n)
    assert single["scored_tokens"] == whole_count == n - 1
    assert single["nll"] == pytest.approx(whole_nll, rel=1e-5)


def test_row_reads_lower_is_better_the_right_way() -> None:
    row = evaluation.metric_row({"base": 20.0, "pruned": 40.0}, higher_is_better=False)
    assert row["retained_pct"]["pruned"] == pytest.approx(50.0) and row["delta"]["pruned"] == 20.0
    row = evaluation.metric_row({"base": 0.5, "pruned": 0.4, "recovered": None}, higher_is_better=True)
    assert row["retained_pct"] == {"pruned": pytest.approx(80.0), "recovered": None}


def test_speed_fields_are_positive() -> None:
    result = measure_speed(tiny_model("llama"), prompt_tokens=8, new_tokens=3, repeats=2, warmup=1)
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert len(result["prefill_samples"]) == 2 and result["device"] == "cpu" and result["device_name"]


@pytest.mark.slow
def test_smollm2_in_memory_matches_lm_eval_cli_and_pruning_hurts_perplexity(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    """The same pruned SmolLM2 scored in memory by hubprune and by the stock `lm_eval` command
    line on its exported folder: same accuracy, same choice on every item. And, as a sanity
    check on real text, 6 removed blocks make perplexity worse."""
    from hubprune.export import export_plain
    from hubprune.pipeline import load
    from hubprune.plan import Plan, Unit
    from hubprune.surgery import apply_plan
    from hubprune.tasks import build_pack, resolve_tasks

    loaded = load(SourceOptions(str(smollm2_dir), dtype="float32", device="cpu"))
    model, tokenizer = loaded.model, loaded.tokenizer
    text = evaluation.load_perplexity_text(evaluation.EvalSettings(tasks=[], perplexity_data="offline:xsum"))
    kwargs = dict(seq_len=256, max_tokens=1024, batch_size=8)
    base_ppl = evaluation.text_perplexity(model, tokenizer, text.texts, **kwargs)["perplexity"]
    apply_plan(model, loaded.adapter, Plan("manual", "block", [Unit("block", b) for b in range(12, 18)]))
    pruned_ppl = evaluation.text_perplexity(model, tokenizer, text.texts, **kwargs)["perplexity"]
    assert 5 < base_ppl < 100 and pruned_ppl > base_ppl

    folder = tmp_path / "pruned"
    export_plain(model, tokenizer, folder)
    settings = evaluation.EvalSettings(tasks=["offline:piqa"], limit=20, batch_size=8)
    resolved = resolve_tasks(settings.tasks)
    ours = evaluation.run_lm_eval(model, tokenizer, resolved, settings, log_samples=True)
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "hf"]
    command += ["--model_args", f"pretrained={folder},dtype=float32", "--tasks", "offline_piqa"]
    command += ["--include_path", str(build_pack()), "--limit", "20", "--batch_size", "8", "--device", "cpu"]
    command += ["--seed", "0", "--output_path", str(out), "--log_samples"]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    theirs = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [
        json.loads(line) for line in next(out.rglob("samples_offline_piqa_*.jsonl")).read_text().splitlines()
    ]
    assert theirs["results"]["offline_piqa"]["acc,none"] == ours["results"]["offline_piqa"]["acc,none"]
    assert (
        theirs["results"]["offline_piqa"]["acc_norm,none"] == ours["results"]["offline_piqa"]["acc_norm,none"]
    )
    mine = {s["doc_id"]: s for s in ours["samples"]["offline_piqa"]}
    assert sorted(mine) == sorted(s["doc_id"] for s in samples) == list(range(20))
    for sample in samples:
        assert sample["acc"] == mine[sample["doc_id"]]["acc"]
        ll_cli = [float(r[0]) for r in sample["filtered_resps"]]
        ll_ours = [float(r[0]) for r in mine[sample["doc_id"]]["filtered_resps"]]
        assert ll_cli == pytest.approx(ll_ours, abs=1e-3)
