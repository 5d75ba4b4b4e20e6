"""User mistakes end in one `hubprune: error:` sentence (a HubpruneError), never a traceback.

What these catch: a ValueError/KeyError/NotImplementedError escaping on user input (unit kinds,
speed settings, method arguments, sublayer options), `hubprune inspect --method finercut`
crashing on its table, and method arguments checked only after the model is loaded.
"""

from __future__ import annotations

import pytest

from hubprune.arch import adapter_for
from hubprune.cli import main
from hubprune.errors import HubpruneError
from hubprune.plan import Plan, Unit
from tests.tiny import SAMPLE_TEXT, save_tiny, tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny-llama", "llama", num_layers=2)


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line]
    assert len(err) == 1 and err[0].startswith("hubprune: error: "), err
    return err[0]


def test_inspect_finercut_prints_scores_and_the_greedy_steps(tiny_dir, tmp_path, capsys):
    """Would catch the KeyError: 'rank' of a FinerCut plan, or a table without its steps."""
    (tmp_path / "cal.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    argv = ["inspect", str(tiny_dir), "--method", "finercut", "--amount", "2"]
    assert main([*argv, "--calibration", str(tmp_path / "cal.txt"), "--samples", "4", "--seq-len", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["unit", "score", "step", "removed"]
    rows = {line.split()[0] + " " + line.split()[1]: line.split()[2:] for line in lines[1:5]}
    assert set(rows) == {"attn 0", "mlp 0", "attn 1", "mlp 1"}
    marked = sorted(row[1:] for row in rows.values() if len(row) == 3)
    assert marked == [["0", "x"], ["1", "x"]], "the two removed sublayers, with their step"
    steps = lines[lines.index("") + 1 :]
    assert steps[0].split() == ["step", "removed", "divergence", "params", "removed"]
    assert [s.split()[0] for s in steps[1:]] == ["0", "1"] and all(s.endswith("%") for s in steps[1:])


@pytest.mark.parametrize(
    ("method_args", "message"),
    [
        (
            ["--method-arg", "depth=3"],
            "method 'reverse-order' has no parameter 'depth'; its parameters: none",
        ),
        (["--method", "finercut", "--method-arg", "divergence=jsd"], "unknown FinerCut divergence 'jsd'"),
        (["--method-arg", "=3"], "--method-arg expects KEY=VALUE, got '=3'"),
    ],
)
def test_bad_method_args_fail_before_loading(method_args, message, tmp_path, capsys):
    """Would catch method arguments checked only after the model loaded (here: there is none)."""
    argv = ["inspect", str(tmp_path / "no-model"), *method_args]
    if "--method" not in argv:
        argv += ["--method", "reverse-order"]
    assert main(argv) == 1
    assert message in one_error_line(capsys)


def test_unknown_unit_kind_in_a_manifest_is_one_line(tiny_dir, tmp_path, capsys):
    """Would catch a hand-edited or foreign hubprune.json ending in a ValueError traceback."""
    out = tmp_path / "run"
    assert (
        main(["prune", str(tiny_dir), "--method", "reverse-order", "--amount", "1", "--out", str(out)]) == 0
    )
    manifest = out / "hubprune.json"
    manifest.write_text(manifest.read_text().replace('"kind": "block"', '"kind": "layer"'))
    capsys.readouterr()
    assert main(["card", str(out)]) == 1
    assert "unknown unit kind 'layer'; expected one of: block, attn, mlp" in one_error_line(capsys)


def test_library_mistakes_are_hubprune_errors():
    """Would catch user-reachable library checks raising bare ValueError/NotImplementedError."""
    from hubprune.speed import measure_speed
    from hubprune.sublayers import check_units, is_removed
    from hubprune.surgery import apply_plan

    model = tiny_model("llama", num_layers=2)
    adapter = adapter_for(model)
    with pytest.raises(HubpruneError, match=r"^unknown unit kind 'layer'"):
        Unit("layer", 0)
    with pytest.raises(HubpruneError, match=r"got repeats=0, warmup=-1$"):
        measure_speed(model, repeats=0, warmup=-1)
    with pytest.raises(HubpruneError, match=r"got new_tokens=2.5$"):
        measure_speed(model, new_tokens=2.5)
    with pytest.raises(HubpruneError, match="KV group 2 of block 0 does not exist"):
        apply_plan(model, adapter, Plan("x", "heads", [Unit("heads", 0, indices=(2,))]))
    with pytest.raises(HubpruneError, match="sublayers must be 'remove' or 'zero', got 'drop'"):
        apply_plan(model, adapter, Plan("x", "sublayer", [Unit("mlp", 0)]), sublayers="drop")
    with pytest.raises(HubpruneError, match="block 1 is not a sublayer unit"):
        check_units([Unit("block", 1)], 2)
    with pytest.raises(HubpruneError, match="not a sublayer kind: 'attention'"):
        is_removed(adapter.blocks(model)[0], adapter, "attention")


# -- bad files and settings: each one sentence, found before the long work (issue: reliability) --


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_dir):
    """A broken model of each kind, a finished run folder and folders that only look like one."""
    import json
    import shutil

    root = tmp_path_factory.mktemp("bad")
    corrupt = root / "corrupt"
    shutil.copytree(tiny_dir, corrupt)
    weights = next(corrupt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad_config = root / "bad-config"
    shutil.copytree(tiny_dir, bad_config)
    (bad_config / "config.json").write_text("{not json", encoding="utf-8")
    run = root / "run"
    assert (
        main(["prune", str(tiny_dir), "--method", "reverse-order", "--amount", "1", "--out", str(run)]) == 0
    )
    truncated = root / "truncated"
    shutil.copytree(run, truncated)
    (truncated / "hubprune.json").write_text((run / "hubprune.json").read_text()[:200], encoding="utf-8")
    no_plan = root / "no-plan"
    shutil.copytree(run, no_plan)
    manifest = json.loads((run / "hubprune.json").read_text())
    del manifest["plan"]
    (no_plan / "hubprune.json").write_text(json.dumps(manifest), encoding="utf-8")
    text = root / "cal.txt"
    text.write_text(SAMPLE_TEXT, encoding="utf-8")
    return {
        "tiny": tiny_dir,
        "corrupt": corrupt,
        "bad-config": bad_config,
        "run": run,
        "truncated": truncated,
        "no-plan": no_plan,
        "text": text,
        "weights-file": weights,
        "out": root / "out",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["prune", "{corrupt}", "--method", "reverse-order", "--amount", "1", "--out", "{out}"],
            "cannot be read",
        ),
        (
            ["prune", "{bad-config}", "--method", "reverse-order", "--amount", "1", "--out", "{out}"],
            "not valid JSON",
        ),
        (
            ["prune", "{weights-file}", "--method", "reverse-order", "--amount", "1", "--out", "{out}"],
            "is a file",
        ),
        (
            ["prune", "{tiny}", "--method", "reverse-order", "--amount", "nan", "--out", "{out}"],
            "finite number",
        ),
        (
            [
                "prune",
                "{tiny}",
                "--method",
                "reverse-order",
                "--amount",
                "1",
                "--batch-size",
                "0",
                "--out",
                "{out}",
            ],
            "--batch-size must be at least 1",
        ),
        (
            [
                "prune",
                "{tiny}",
                "--method",
                "reverse-order",
                "--amount",
                "1",
                "--max-shard-size",
                "banana",
                "--out",
                "{out}",
            ],
            "--max-shard-size must be a size",
        ),
        (
            [
                "prune",
                "{tiny}",
                "--method",
                "reverse-order",
                "--amount",
                "1",
                "--device",
                "tpu9",
                "--out",
                "{out}",
            ],
            "not a device torch knows",
        ),
        (
            ["prune", "{tiny}", "--method", "reverse-order", "--amount", "1", "--out", "{weights-file}/x"],
            "is not writable",
        ),
        (
            ["recover", "{tiny}", "--mode", "partial", "--data", "{text}", "--out", "{out}"],
            "not a hubprune run folder",
        ),
        (
            ["eval", "{truncated}", "--tasks", "offline:piqa", "--no-perplexity"],
            "not a valid hubprune manifest",
        ),
        (
            ["eval", "{no-plan}", "--tasks", "offline:piqa", "--no-perplexity"],
            "not a valid hubprune manifest (no 'plan')",
        ),
        (["card", "{truncated}"], "not a valid hubprune manifest"),
    ],
)
def test_bad_files_and_settings_are_one_line(bad_inputs, argv, message, capsys):
    """Would catch a SafetensorError, JSONDecodeError, KeyError, ValueError or RuntimeError
    escaping as a traceback, or a setting found only after scoring."""
    argv = [a.format(**{k: str(v) for k, v in bad_inputs.items()}) if "{" in a else a for a in argv]
    assert main(argv) == 1
    assert message in one_error_line(capsys)
    assert not bad_inputs["out"].exists()


def test_recipe_problems_found_by_validate(bad_inputs, tmp_path, capsys):
    """A recipe that would fail mid-run fails `hubprune validate` instead: amount .nan, a missing
    local training file, an unknown evaluation task."""
    base = f"out: {tmp_path / 'r'}\nsource: {{model: {bad_inputs['tiny']}}}\n"
    cases = {
        "nan": (base + "prune: {method: reverse-order, amount: .nan}\n", "finite number"),
        "data": (
            base + "prune: {method: reverse-order, amount: 1}\nrecover: {mode: partial, data: ./nope.txt}\n",
            "training data file ./nope.txt does not exist",
        ),
        "task": (
            base
            + "prune: {method: reverse-order, amount: 1}\nevaluate: {tasks: [offline:piqa, offline:nosuch]}\n",
            "unknown offline task 'offline:nosuch'",
        ),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        assert main(["validate", str(path)]) == 1
        assert message in capsys.readouterr().err, name


def test_eval_keeps_its_results_when_the_run_folder_cannot_take_them(bad_inputs, monkeypatch, capsys):
    """Would catch results thrown away (or a traceback) when eval/results.json cannot be written."""
    import json
    import re

    from hubprune import rundir

    original = rundir.atomic_write_text

    def read_only(path, text):
        if "hubprune-eval-" not in str(path):
            raise OSError(30, "Read-only file system")
        return original(path, text)

    monkeypatch.setattr(rundir, "atomic_write_text", read_only)
    argv = ["eval", str(bad_inputs["run"]), "--tasks", "offline:piqa", "--limit", "2", "--no-perplexity"]
    assert main(argv) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after lm-eval's own progress lines
    assert line.startswith("hubprune: error: ")
    assert "Read-only file system" in line and "results were saved to" in line
    kept = re.search(r"saved to (\S+\.json)", line).group(1)
    with open(kept, encoding="utf-8") as fh:
        report = json.load(fh)
    assert report["tasks"]["offline_piqa"]
