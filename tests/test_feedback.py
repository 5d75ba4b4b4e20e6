"""What the user sees while waiting or browsing: progress bars that say what they count, and
`hubprune ls offline` with headers and every offline evaluation task.

What these catch: a "Scoring blocks" bar whose total is the batch count, and offline tasks that
exist but are not listed.
"""

from __future__ import annotations

from hubprune.cli import main


def test_ls_offline_lists_models_texts_and_tasks_under_headers(capsys):
    from hubprune import offline, tasks

    assert main(["ls", "offline"]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert [h.split(" (")[0] for h in heads] == ["models", "texts", "evaluation tasks"]
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    expected = {f"offline:{n}" for n in [*offline.MODELS, *offline.TEXTS, *tasks.PACK, "all"]}
    assert listed == expected
    tasks_part = out.split("evaluation tasks")[1]
    assert "offline:piqa" in tasks_part and "offline:xsum" not in tasks_part


def test_block_scoring_bar_names_the_blocks_and_counts_batches(capsys):
    from hubprune.arch import adapter_for
    from hubprune.data import TextSource, build_calibration
    from hubprune.methods.capture import stream_blocks
    from tests.tiny import SAMPLE_TEXT, char_tokenizer, tiny_model

    model = tiny_model("llama", num_layers=4)  # 4 blocks; 5 samples in batches of 2: 3 batches
    batch = build_calibration(
        char_tokenizer(), TextSource("s", "file", texts=[SAMPLE_TEXT]), samples=5, seq_len=8, seed=0
    )
    seen = []
    masks = list(stream_blocks(model, adapter_for(model), batch, 2, lambda i, *_: seen.append(i)))
    assert len(masks) == 3 and seen == [0, 1, 2, 3] * 3
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    first = next(line for line in bar if line.startswith("Scoring"))
    assert first.startswith("Scoring 4 blocks:") and "0/3 [" in first and "batch/s" in first, bar


def test_package_docstring_points_at_functions_that_exist():
    """Catches `help(hubprune)` naming a function that was renamed or moved."""
    import importlib
    import re

    import hubprune

    names = re.findall(r":(?:func|class):`~?([\w.]+)`", hubprune.__doc__)
    assert len(names) >= 8 and "hubprune.run.run_recipe" in names
    for name in names:
        module, _, attr = name.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr)), name
