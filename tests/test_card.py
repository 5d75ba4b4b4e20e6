"""The model card: strict rendering, the snapshot of a fixed run, metadata, sections left out, pictures.

Snapshots live in tests/snapshots/. After an intended change of the card, regenerate them with
``HUBPRUNE_UPDATE_SNAPSHOTS=1 pytest tests/test_card.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hubprune import card
from hubprune.plan import Calibration, Manifest, Plan, Unit

SNAPSHOTS = Path(__file__).parent / "snapshots"
VERSIONS = {"hubprune": "0.1.0", "python": "3.11.7", "torch": "2.13.0", "transformers": "5.23.0"}


def block_manifest() -> Manifest:
    """A fixed whole-block run: Llama-licensed Hub base, Hub calibration data, recovery, a recipe."""
    scores = [0.31, 0.12, 0.08, 0.05, 0.07, 0.22]
    order = sorted(range(6), key=lambda i: scores[i])
    plan = Plan(
        method="block-influence",
        unit_kind="block",
        removed=[Unit("block", 3), Unit("block", 4)],
        scores=[{"unit": Unit("block", i), "score": s, "rank": order.index(i)} for i, s in enumerate(scores)],
        score_meaning="BI = 1 - mean cos(h_in, h_out); the lowest is removed first",
        budget={"requested": {"amount": 2, "by": "units"}, "reached": {"units_removed": 2}},
        calibration=Calibration(
            source="wikitext",
            kind="hub-dataset",
            samples=32,
            seq_len=256,
            seed=0,
            token_ids_sha256="ab" * 32,
            total_tokens_available=100000,
            bos_prepended=True,
            revision="b08601e",
            config="wikitext-2-raw-v1",
            split="train",
        ),
        seed=0,
    )
    return Manifest(
        source={
            "spec": "meta-llama/Llama-3.2-1B@main",
            "kind": "hub",
            "local_dir": None,
            "base_model": "meta-llama/Llama-3.2-1B",
            "revision": "main",
            "sha": "4e20de362430cd3b72f300e6b0f18e50e7166e08",
            "license": "llama3.2",
        },
        family="llama",
        plan=plan,
        model_before={
            "num_blocks": 6,
            "params_total": 1_235_814_400,
            "params_non_embedding": 973_144_064,
            "tied_embeddings": True,
            "dtype": "bfloat16",
            "kv_cache_bytes_per_token": 24576,
        },
        model_after={
            "num_blocks": 4,
            "params_total": 1_037_000_000,
            "params_non_embedding": 774_000_000,
            "tied_embeddings": True,
            "dtype": "bfloat16",
            "kv_cache_bytes_per_token": 16384,
        },
        export={"format": "plain", "files": ["config.json", "model.safetensors"]},
        stages={
            "prune": {"load_s": 1.0, "score_s": 2.0, "batch_size": 8},
            "recover": {
                "mode": "partial",
                "from_run": "/home/someone/out/pruned",
                "last_k": 3,
                "data": "yahma/alpaca-cleaned",
                "data_kind": "hub-dataset",
                "max_steps": 200,
                "learning_rate": 1e-05,
                "curve": [{"step": 1, "loss": 3.0}],
            },
        },
        recipe="# hubprune run recipe.yaml\nsource: meta-llama/Llama-3.2-1B\nmethod: block-influence\namount: 2\n",
        versions=dict(VERSIONS),
        created_at="2026-01-01T00:00:00+00:00",
        hubprune_version="0.1.0",
    )


def eval_report() -> dict[str, Any]:
    """An `eval/results.json` shaped as `hubprune eval` writes it (delta / retained per role)."""

    def row(base: float, pruned: float, recovered: float, higher: bool = True) -> dict[str, Any]:
        ret = (lambda v: 100 * v / base) if higher else (lambda v: 100 * base / v)
        return {
            "base": base,
            "pruned": pruned,
            "recovered": recovered,
            "higher_is_better": higher,
            "delta": {"pruned": pruned - base, "recovered": recovered - base},
            "retained_pct": {"pruned": ret(pruned), "recovered": ret(recovered)},
        }

    return {
        "roles": ["base", "pruned", "recovered"],
        "final": "recovered",
        "settings": {
            "limit": 50,
            "num_fewshot": None,
            "batch_size": 8,
            "lm_eval_version": "0.4.13",
            "seed": 0,
        },
        "tasks": {
            "piqa": {"acc": row(0.74, 0.62, 0.69), "acc_norm": row(0.75, 0.63, 0.7)},
            "boolq": {"acc": row(0.64, 0.58, 0.62)},
        },
        "perplexity": {"data": {"spec": "wikitext"}, "seq_len": 512, "metric": row(9.5, 30.25, 14.0, False)},
        "cost": {
            "base": {
                "params_total": 1_235_814_400,
                "bytes_on_disk": 2_471_628_800,
                "flops_per_token": 2.47e9,
            },
            "pruned": {
                "params_total": 1_037_000_000,
                "bytes_on_disk": 2_074_000_000,
                "flops_per_token": 2.07e9,
            },
            "recovered": {
                "params_total": 1_037_000_000,
                "bytes_on_disk": 2_074_000_000,
                "flops_per_token": 2.07e9,
            },
        },
        "speed": {
            r: {"prefill_tokens_per_s": v, "decode_tokens_per_s": v / 50, "device_name": "NVIDIA H100"}
            for r, v in (("base", 9000.0), ("pruned", 11000.0), ("recovered", 11000.0))
        },
    }


def sublayer_manifest() -> Manifest:
    """A fixed FinerCut run as methods/finercut.py records it: attention/MLP sublayers, one-shot
    scores with `removed_at_step`, a greedy trace (0-based `step`, `removed`, `divergence`),
    compact export, no evaluation."""
    steps = [(Unit("attn", 5), 0.011), (Unit("attn", 4), 0.023), (Unit("mlp", 5), 0.047)]
    order = {u: i for i, (u, _) in enumerate(steps)}
    candidates = [Unit(kind, b) for b in range(6) for kind in ("attn", "mlp")]
    plan = Plan(
        method="finercut",
        unit_kind="sublayer",
        removed=sorted((u for u, _ in steps), key=lambda u: (u.block, u.kind)),
        scores=[
            {"unit": u, "score": 0.01 * (i + 1), "params": 1000, "removed_at_step": order.get(u)}
            for i, u in enumerate(candidates)
        ],
        score_meaning="js-official divergence between the dense and pruned next-token distributions",
        params={"divergence": "js-official", "search": "greedy"},
        trace=[
            {"step": i, "removed": u.to_dict(), "name": u.name, "divergence": v, "candidates": []}
            for i, (u, v) in enumerate(steps)
        ],
        budget={"requested": {"amount": 0.25, "by": "units"}},
        seed=0,
    )
    return Manifest(
        source={
            "spec": "offline:smollm2-135m-instruct",
            "kind": "offline",
            "local_dir": "/x",
            "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "license": "apache-2.0",
        },
        family="llama",
        plan=plan,
        model_before={
            "num_blocks": 6,
            "params_total": 20_000_000,
            "params_non_embedding": 12_000_000,
            "tied_embeddings": False,
        },
        model_after={
            "num_blocks": 6,
            "params_total": 17_500_000,
            "params_non_embedding": 9_500_000,
            "tied_embeddings": False,
        },
        export={"format": "compact"},
        versions=dict(VERSIONS),
        created_at="2026-01-01T00:00:00+00:00",
        hubprune_version="0.1.0",
    )


def write_run(folder: Path, manifest: Manifest, *, report: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest.save(folder)
    (folder / "config.json").write_text("{}\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}), encoding="utf-8")
    if report is not None:
        (folder / "eval").mkdir(exist_ok=True)
        (folder / "eval" / "results.json").write_text(json.dumps(report), encoding="utf-8")
    return folder


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("HUBPRUNE_UPDATE_SNAPSHOTS") or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not os.environ.get("HUBPRUNE_UPDATE_SNAPSHOTS"):
            pytest.fail(f"snapshot {path} did not exist and was written; review and commit it")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from its snapshot (see module docstring)"
    )


def test_strict_undefined_fails_on_any_missing_variable(tmp_path):
    """Catches a template that references a variable build_context does not provide (a typo would
    otherwise render as nothing): every variable is declared, and dropping any one fails."""
    import jinja2
    from jinja2 import meta

    env = card.environment()
    source = (card.template_dir() / card.TEMPLATE_NAME).read_text(encoding="utf-8")
    used = meta.find_undeclared_variables(env.parse(source))
    template = env.get_template(card.TEMPLATE_NAME)
    local = block_manifest()
    local.source.update({"kind": "local", "spec": "/models/x", "base_model": None})
    failed = set()
    runs = ((block_manifest(), eval_report()), (sublayer_manifest(), None), (local, None))
    for i, (manifest, report) in enumerate(runs):
        folder = write_run(tmp_path / str(i), manifest, report=report)
        context = card.build_context(folder, repo_id="test-org/pruned")
        assert used <= set(context), f"template uses variables the context lacks: {used - set(context)}"
        template.render(**context)
        for name in sorted(used):
            try:
                template.render(**{k: v for k, v in context.items() if k != name})
            except jinja2.UndefinedError:
                failed.add(name)
    # Between these runs every variable is reached, so every one of them is checked strictly.
    assert failed == used, f"rendering without these did not fail: {sorted(used - failed)}"


def test_unknown_variable_in_template_raises(tmp_path):
    """Catches an environment that is not strict: a misspelt variable must raise."""
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        card.environment().from_string("{{ base_modle }}").render(base_model="x")


def test_card_snapshot_block_run_with_eval_and_recovery(tmp_path):
    """Catches any unintended change of the rendered card for a fixed manifest and report."""
    folder = write_run(tmp_path / "run", block_manifest(), report=eval_report())
    (folder / "LICENSE").write_text("LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\n", encoding="utf-8")
    (folder / "USE_POLICY.md").write_text("policy\n", encoding="utf-8")
    path = card.render_card(folder, repo_id="test-org/llama-3.2-1b-bi2")
    assert "/home/someone" not in path.read_text(encoding="utf-8")  # no local paths in a public card
    check_snapshot("card_block_eval_recover.md", path.read_text(encoding="utf-8"))
    check_snapshot("layer_map_block.svg", (folder / "layer_map.svg").read_text(encoding="utf-8"))


def test_card_snapshot_sublayer_run_with_trace(tmp_path):
    """Catches changes in the sublayer card: attention/MLP rows, the trace plot, the compact quick start."""
    folder = write_run(tmp_path / "run", sublayer_manifest())
    path = card.render_card(folder, repo_id="test-org/smollm2-finercut")
    text = path.read_text(encoding="utf-8")
    check_snapshot("card_sublayer_trace.md", text)
    check_snapshot("layer_map_sublayer.svg", (folder / "layer_map.svg").read_text(encoding="utf-8"))
    check_snapshot("search_trace_sublayer.svg", (folder / "search_trace.svg").read_text(encoding="utf-8"))


def test_metadata(tmp_path):
    """Catches wrong card metadata: base_model must be the Hub id, relation finetune (never merge),
    license copied, Hub datasets listed, tags, and model-index built from the evaluation."""
    from huggingface_hub import ModelCard

    folder = write_run(tmp_path / "run", block_manifest(), report=eval_report())
    data = ModelCard(card.render_card_text(folder, repo_id="test-org/pruned")).data.to_dict()
    assert data["base_model"] == "meta-llama/Llama-3.2-1B"
    assert data["base_model_relation"] == "finetune"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "llama3.2"
    assert data["datasets"] == ["wikitext", "yahma/alpaca-cleaned"]
    assert data["tags"] == ["hubprune", "pruned", "block-influence"]
    results = data["model-index"][0]["results"]
    assert data["model-index"][0]["name"] == "pruned"
    by_task = {r["dataset"]["name"]: r["metrics"][0] for r in results}
    assert by_task["piqa"] == {"type": "acc_norm", "value": 0.7, "name": "acc_norm"}  # headline, final role
    assert by_task["perplexity (wikitext)"]["value"] == 14.0


def test_sections_without_data_are_left_out(tmp_path):
    """Catches placeholders: no evaluation, recovery, license or speed data means no such section."""
    manifest = block_manifest()
    manifest.stages.pop("recover")
    manifest.source.pop("license")
    manifest.plan.calibration = None
    manifest.recipe = None
    text = card.render_card_text(write_run(tmp_path / "run", manifest), repo_id="test-org/pruned")
    for absent in (
        "## Evaluation",
        "## License",
        "Measured speed",
        "model-index",
        "Recovery",
        "datasets:",
        "None",
        "–",
    ):
        assert absent not in text, absent
    assert "It was not fine-tuned after pruning." in text
    assert "hubprune prune meta-llama/Llama-3.2-1B@main --method block-influence --amount 2" in text
    assert "## Size" in text and "## What was removed" in text


def test_local_base_is_never_named_as_base_model(tmp_path):
    """Catches a local path leaking into `base_model` (the Hub would link nothing)."""
    from huggingface_hub import ModelCard

    manifest = block_manifest()
    manifest.source.update({"spec": str(tmp_path), "kind": "local", "base_model": None})
    text = card.render_card_text(write_run(tmp_path / "run", manifest), repo_id="test-org/pruned")
    assert "base_model" not in ModelCard(text).data.to_dict()
    assert str(tmp_path) not in text.split("## Quick start")[1]


def test_attribution_for_llama_license(tmp_path):
    """Catches a missing "Built with Llama" on a Llama-licensed base, and license files not linked."""
    folder = write_run(tmp_path / "run", block_manifest())
    (folder / "LICENSE").write_text("terms\n", encoding="utf-8")
    text = card.render_card_text(folder, repo_id="test-org/pruned")
    assert "Built with Llama." in text
    assert "[LICENSE](LICENSE)" in text


def test_layer_map_shows_attention_and_mlp_separately():
    """Catches a sublayer plan drawn as whole blocks: two rows, one crossed cell per removed sublayer."""
    from hubprune.layer_map import layer_map_svg, trace_points

    manifest = sublayer_manifest()
    svg = layer_map_svg(manifest.plan, 6)
    assert ">attention</text>" in svg and ">MLP</text>" in svg
    assert svg.count("<title>attention 5: removed</title>") == 1
    assert svg.count(": removed</title>") == 3
    assert [p[:2] for p in trace_points(manifest.plan)] == [(1, 0.011), (2, 0.023), (3, 0.047)]
    blocks = layer_map_svg(block_manifest().plan, 6)
    assert ">attention</text>" not in blocks and blocks.count(": removed</title>") == 2


def test_card_shows_abandoned_candidates_as_lower_bounds(tmp_path):
    """Catches a candidate that FinerCut's bound stopped early shown as if scored (or as "–"): the
    tables say "≥ bound", the cost line counts them, the trace plot's closest other candidate is an
    open circle where it is a bound, and `inspect` prints ">=bound"."""
    from hubprune.cli.inspect import format_table
    from hubprune.layer_map import runner_up_points, trace_svg

    manifest = sublayer_manifest()
    plan = manifest.plan
    plan.scores[1].update(score=None, lower_bound=0.0123, abandoned_after_tokens=64)  # MLP 0
    plan.scores[10].update(score=None, lower_bound=0.5, abandoned_after_tokens=128)  # attention 5, removed
    plan.trace[0]["candidates"] = [
        {"unit": "attn 5", "score": 0.011},
        {"unit": "mlp 5", "score": None, "lower_bound": 0.02, "abandoned_after_tokens": 64},
        {"unit": "attn 4", "score": 0.03},
    ]
    plan.trace[1]["candidates"] = [{"unit": "attn 4", "score": 0.023}, {"unit": "mlp 5", "score": 0.04}]
    plan.calibration = block_manifest().plan.calibration
    folder = write_run(tmp_path / "run", manifest)
    raw = json.loads((folder / "hubprune.json").read_text(encoding="utf-8"))
    raw["plan"]["search_cost"] = {**SEARCH_COST, "bound": "on", "abandoned": 2}
    (folder / "hubprune.json").write_text(json.dumps(raw), encoding="utf-8")
    text = card.render_card_text(folder, repo_id="test-org/pruned")
    assert "| attention 5 | ≥ 0.5 | 1 | 0.011 |" in text  # the removed-units table
    assert "| MLP 0 | ≥ 0.0123 |  |" in text and "| MLP 1 | 0.04 |  |" in text  # all scores
    assert "5 candidate evaluations (2 of them stopped early" in text
    assert "; dashed, the closest candidate it did not remove at that step (an open circle" in text
    assert runner_up_points(plan) == [(1, 0.02, "mlp 5", True), (2, 0.04, "mlp 5", False)]
    svg = trace_svg(plan, value_name="divergence")
    assert svg.count('fill="#ffffff" stroke=') == 1 and "closest other, mlp 5 (&gt;= 0.02)" in svg
    table = format_table(plan)
    assert ">=0.0123" in table and ">=0.5" in table


def test_eval_rows_from_manifest_summary():
    """Catches a card that only understands eval/results.json and not the manifest's evaluate summary."""
    summary = {
        "final": "pruned",
        "roles": ["base", "pruned"],
        "tasks": {"piqa": {"metric": "acc", "base": 0.7, "pruned": 0.6, "retained_pct": {"pruned": 85.7}}},
        "perplexity": {"data": "offline:lee-background", "seq_len": 256, "base": 28.0, "pruned": 160.0},
    }
    rows = card.eval_rows(summary)
    assert [(r["task"], r["final"], r["retained"]) for r in rows] == [
        ("piqa", 0.6, 85.7),
        ("perplexity (offline:lee-background)", 160.0, None),
    ]
    assert rows[1]["higher_is_better"] is False


def test_card_verb_renders_and_rerenders(tmp_path, capsys):
    """Catches `hubprune card` not writing README.md and the pictures, not naming every file it
    wrote, or failing on a second run."""
    from hubprune.cli import main

    folder = write_run(tmp_path / "run", sublayer_manifest())
    assert main(["card", str(folder), "--repo", "test-org/x"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"wrote {folder / name}" for name in ("README.md", "layer_map.svg", "search_trace.svg")
    ]
    first = (folder / "README.md").read_text(encoding="utf-8")
    assert main(["card", str(folder), "--repo", "test-org/x"]) == 0
    assert (folder / "README.md").read_text(encoding="utf-8") == first
    assert (folder / "layer_map.svg").is_file() and (folder / "search_trace.svg").is_file()
    assert main(["card", str(tmp_path)]) == 1  # not a run folder: one line, exit 1
    assert "not a hubprune run folder" in capsys.readouterr().err


def test_zero_filled_export_is_called_what_it_is(tmp_path):
    """Catches a plain (zero-filled) sublayer export presented as smaller: the share removed is the
    plan's nominal one and the card says the weights are still stored."""
    manifest = sublayer_manifest()
    manifest.export = {"format": "plain"}
    manifest.model_after = dict(manifest.model_before)  # zero-filled: same stored parameters
    manifest.plan.budget = {"requested": {"amount": 3, "by": "units"}, "reached": {"params_fraction": 0.125}}
    text = card.render_card_text(write_run(tmp_path / "run", manifest), repo_id="test-org/pruned")
    assert "12.5% of the parameters (nominally: this export zero-fills them)" in text
    assert "**zero-filled**" in text and "no savings" in text
    assert "trust_remote_code" not in text


# -- hostile strings, repo ids, local paths, search cost ---------------------------------------------

HOSTILE = (
    '<script>alert(1)</script> <img src=x onerror="alert(2)"> [click](javascript:alert(3)) '
    "| cell ``` {{ 7*7 }} {% if true %}J{% endif %} -->"
)
HOSTILE_RECIPE = (
    "source: test-org/base\nnotes: |\n  ```\n  <script>alert(4)</script>\n   ````\n"
    "  {{ 7*7 }} {% raw %} {{ config }}\n"
)


def hostile_manifest() -> Manifest:
    """A FinerCut run whose every free-text field holds markup, backtick runs and Jinja syntax."""
    manifest = sublayer_manifest()
    plan = manifest.plan
    plan.params = {"divergence": HOSTILE, "search": "greedy", HOSTILE: "<b>bold</b>"}
    plan.score_meaning = HOSTILE
    plan.budget = {"requested": {"amount": HOSTILE, "by": HOSTILE}}
    plan.calibration = Calibration(
        source=HOSTILE,
        kind=HOSTILE,
        samples=2,
        seq_len=8,
        seed=0,
        token_ids_sha256=HOSTILE,
        total_tokens_available=100,
        bos_prepended=False,
        config=HOSTILE,
        split=HOSTILE,
        revision="``",
    )
    manifest.source.update(spec=HOSTILE, kind="local", base_model=HOSTILE, license=HOSTILE)
    manifest.source["license_name"] = HOSTILE
    manifest.source["license_link"] = "javascript:alert(5)"
    manifest.stages["recover"] = {"mode": HOSTILE, "data": HOSTILE, HOSTILE: HOSTILE}
    manifest.recipe = HOSTILE_RECIPE
    manifest.versions = {HOSTILE: HOSTILE}
    manifest.hubprune_version = HOSTILE
    return manifest


def hostile_report() -> dict[str, Any]:
    report = eval_report()
    report["tasks"] = {HOSTILE: {HOSTILE: report["tasks"]["piqa"]["acc"]}}
    report["settings"]["device"] = HOSTILE
    report["speed"]["base"]["device_name"] = HOSTILE
    return report


def test_hostile_strings_render_as_text(tmp_path):
    """Catches a user string acting as markup or code in the card: HTML tags, links, a table pipe,
    a backtick run closing the recipe's fence early, Jinja syntax evaluated; the card must still
    parse with huggingface_hub."""
    from huggingface_hub import ModelCard
    from markdown_it import MarkdownIt

    folder = write_run(tmp_path / "run", hostile_manifest(), report=hostile_report())
    path = card.render_card(folder, repo_id="test-org/pruned")
    text = path.read_text(encoding="utf-8")
    card_obj = ModelCard.load(path)
    assert card_obj.data.to_dict()["library_name"] == "transformers"
    tokens = MarkdownIt("commonmark").enable("table").parse(card_obj.text)
    inline = [child for t in tokens for child in (t.children or [])]
    html = [t.content for t in [*tokens, *inline] if t.type in ("html_block", "html_inline")]
    assert html, "the card's own <details> blocks should be seen as HTML"
    comment = html.pop(0)  # the marker comment: inert, and user text must not end it early
    assert comment.startswith(card.GENERATED_MARKER) and comment.rstrip().endswith("`hubprune card`. -->")
    for snippet in html:  # only the template's own tags are HTML
        assert all(bad not in snippet for bad in ("script", "img", "onerror", "<b>")), snippet
    links = [t.attrs.get("href") for t in inline if t.type == "link_open"]
    assert not any(str(href).startswith("javascript") for href in links), links
    fences = [t for t in tokens if t.type == "fence"]
    recipe = next(t for t in fences if t.info == "yaml")
    assert recipe.content == HOSTILE_RECIPE  # verbatim, in one piece, not closed by its ```` lines
    assert "{{ 7*7 }}" in recipe.content and "49" not in text  # Jinja never evaluates user strings
    # A table cell holds the whole hostile string as text: its pipe did not split the row.
    cells = [
        "".join(c.content for c in tokens[i + 1].children or [])
        for i, t in enumerate(tokens)
        if t.type in ("td_open", "th_open")
    ]
    assert HOSTILE in cells
    python = next(t for t in fences if t.info == "python")
    assert 'model_id = "test-org/pruned"' in python.content


def test_repo_id_is_validated_before_it_reaches_the_quick_start(tmp_path, capsys):
    """Catches a repo id pasted unchecked into the Python snippet and the `vllm serve` line, from
    `card --repo` or from a manifest's publish record; a local folder's name is quoted."""
    from hubprune.cli import main
    from hubprune.errors import SourceError

    evil = 'a/b"; __import__("os").system("id") #'
    folder = write_run(tmp_path / "run", sublayer_manifest())
    assert main(["card", str(folder), "--repo", evil]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hubprune: error:") and "not a valid Hub repo id" in err
    assert not (folder / "README.md").exists()
    manifest = sublayer_manifest()
    manifest.stages["publish"] = {"repo_id": evil}
    with pytest.raises(SourceError):
        card.render_card_text(write_run(tmp_path / "published", manifest))
    odd = write_run(tmp_path / 'x"; rm -rf ~ #', sublayer_manifest())
    text = card.render_card_text(odd)
    assert 'model_id = "x\\"; rm -rf ~ #"' in text
    assert "vllm serve 'x\"; rm -rf ~ #' --trust-remote-code" in text


def test_nothing_published_holds_a_local_path(tmp_path):
    """Catches absolute paths (the local source folder, the calibration file, the home folder)
    reaching the files `publish` uploads: README.md, hubprune.json, configs, pictures."""
    from hubprune.methods import Budget
    from hubprune.pipeline import CalibrationOptions, SourceOptions, prune
    from tests.tiny import save_tiny

    source = save_tiny(tmp_path / "models" / "my-model", "llama")
    calibration = tmp_path / "data" / "calibration.txt"
    calibration.parent.mkdir()
    calibration.write_text("\n".join(f"the quick brown fox {i} jumps" for i in range(200)), encoding="utf-8")
    out = tmp_path / "out"
    options = CalibrationOptions(dataset=str(calibration), samples=2, seq_len=16)
    prune(SourceOptions(str(source)), "block-influence", Budget(1), out, calibration=options)
    card.render_card(out)
    from hubprune.publish import local_files

    uploaded = local_files(out)  # what publish would send
    texts = {
        name: (out / name).read_text(encoding="utf-8")
        for name in uploaded
        if name.endswith((".md", ".json", ".svg"))
    }
    assert {"README.md", "hubprune.json", "config.json", "layer_map.svg"} <= set(texts)
    for name, text in texts.items():
        for local in (str(tmp_path), str(Path.home()), tmp_path.name):
            assert local not in text, f"{name} contains {local}"
    # The source as typed stays on this machine only, beside the manifest, for `hubprune eval`.
    assert ".hubprune-local.json" not in uploaded and (out / ".hubprune-local.json").is_file()
    manifest = Manifest.load(out)
    assert manifest.source["spec"] == str(source)
    assert json.loads(texts["hubprune.json"])["source"]["spec"] == "local:my-model"
    assert "`local:my-model`" in texts["README.md"]
    assert manifest.plan.calibration.source == "local:calibration.txt"
    assert manifest.plan.calibration.file_sha256  # the name is short; the hash pins the content
    assert "`local:calibration.txt`" in texts["README.md"]


def test_public_text_names_local_paths_and_keeps_the_rest():
    """Catches the path rule touching URLs, Hub ids, relative paths or formulas, or missing a path."""
    from hubprune.redact import public_record, public_text

    assert public_text("/home/me/.cache/hubprune/model/") == "local:model"
    assert public_text('out: ~/runs/x\ndata: "/tmp/a/cal.txt"') == 'out: local:x\ndata: "local:cal.txt"'
    for kept in ("https://huggingface.co/a/b", "owner/name", "../pruned", "arccos(cos(p, q))/π", "/x"):
        assert public_text(kept) == kept
    assert public_record({"/srv/a/b": ["/srv/c/d", 1]}) == {"local:b": ["local:d", 1]}


SEARCH_COST = {
    "engine": "cached",
    "wall_s": 12.34,
    "forward_flops": 2.0e9,
    "forward_flops_if_skipping": 2.0e9,
    "full_forward_calls": 1,
    "block_evaluations": 100,
    "flops_per_row": {"attn": [1e6] * 6, "mlp": [2e6] * 6, "head": 2e6},
}


def test_search_cost_line_for_finercut(tmp_path):
    """Catches FinerCut's search cost missing from the card, or its naive comparison computed from
    the wrong numbers: 3 greedy steps of 12, 11, 10 candidates over 4 sequences, each naive pass
    (6 blocks x 3 MFLOPs + 2 MFLOPs head) = 20 MFLOPs a sequence -> 33 x 4 x 20 M = 2.64 G."""
    manifest = sublayer_manifest()
    for step, count in zip(manifest.plan.trace, (12, 11, 10), strict=True):
        step["candidates"] = [{"unit": f"u{i}", "score": 0.1} for i in range(count)]
    manifest.plan.calibration = block_manifest().plan.calibration
    manifest.plan.calibration.samples = 4
    folder = write_run(tmp_path / "run", manifest)
    raw = json.loads((folder / "hubprune.json").read_text(encoding="utf-8"))
    raw["plan"]["search_cost"] = SEARCH_COST  # the record as methods/finercut.py stores it
    (folder / "hubprune.json").write_text(json.dumps(raw), encoding="utf-8")
    text = card.render_card_text(folder, repo_id="test-org/pruned")
    assert (
        "Search cost: 33 candidate evaluations in 12.3 s, 2.00 G forward FLOPs with the cached engine; "
        "the official naive search (a full forward pass per candidate, removed sublayers masked) needs "
        "2.64 G for the same candidates, 1.32× as many."
    ) in text
    assert "Search cost" not in card.render_card_text(write_run(tmp_path / "bi", block_manifest()))


def test_naive_flops_formula_matches_the_naive_engine():
    """Catches the card's estimate of the official search's FLOPs drifting from what the naive
    engine actually tallies for the same candidates on a tiny model."""
    from hubprune.arch import adapter_for
    from hubprune.methods.finercut import FinerCutParams, finercut_search
    from tests.test_finercut import _calibration
    from tests.tiny import tiny_model

    model, batch = tiny_model("llama"), _calibration()
    result = finercut_search(
        model,
        adapter_for(model),
        batch,
        FinerCutParams(engine="naive"),
        lambda removed: len(removed) >= 2,
        batch_size=2,
        progress=False,
    )
    evaluations = sum(len(scores) for scores in result.step_scores)
    estimate = card.naive_search_flops(result.stats["flops_per_row"], evaluations, batch.info.samples)
    assert estimate == pytest.approx(result.stats["forward_flops"], rel=1e-9)


# -- width plans: what each block keeps, the budget reached, the export ---------------------------------

HETEROGENEOUS = {
    "format": "compact",
    "schema": "hubprune heterogeneous (per_layer_config)",
    "trust_remote_code": True,
    "vllm_servable": False,
    "how_to_load": "AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)",
    "zero_filled": False,
}


def width_manifest(export: dict[str, Any]) -> Manifest:
    """The width plan of tests/test_layer_map.py (real dims and reached budget) in a fixed run."""
    from tests.test_layer_map import width_plan

    manifest = sublayer_manifest()
    manifest.plan = width_plan()
    manifest.model_before["num_blocks"] = 4
    manifest.export = export
    return manifest


def test_card_of_a_width_plan(tmp_path):
    """Catches a width plan rendered as a list of units: the card must give each block's kept heads,
    KV heads and channels, the budget asked and reached (parameters, FLOPs, KV cache), and the
    export: its schema, remote code in the quick start, no `vllm serve` for a model vLLM cannot serve."""
    manifest = width_manifest(dict(HETEROGENEOUS))
    reached = manifest.plan.budget["reached"]
    text = card.render_card_text(write_run(tmp_path / "run", manifest), repo_id="test-org/pruned")
    assert "| block | query heads | KV heads | MLP channels |" in text
    for row in ("| 0 | 4/4 | 2/2 | 96/96 |", "| 1 | 2/4 | 1/2 | 72/96 |", "| 2 | 4/4 | 2/2 | 48/96 |"):
        assert row in text
    assert "| 3 | removed | removed | removed |" in text
    assert "| unit | score |" not in text  # the width table replaces the per-unit list
    assert (
        "Budget asked: **20% of the units**. Reached, counted on the pruned shape with the removed weights really gone"
        in text
    )
    for key, label, fmt in (
        ("params_total", "parameters", card.fmt_params),
        ("flops_per_token", "FLOPs per token", card.fmt_flops),
        ("kv_cache_bytes_per_token", "KV cache per token", card.fmt_bytes),
    ):
        row = reached[key]
        share = f"{100 * row['removed_fraction']:.1f}%"
        assert f"| {label} | {fmt(row['before'])} | {fmt(row['after'])} | {share} |" in text, label
    assert "**Export format: compact** (hubprune heterogeneous (per_layer_config))" in text
    assert "vLLM cannot serve it; use transformers." in text and "vllm serve" not in text
    assert 'dtype="auto", trust_remote_code=True)' in text
    assert "To load it: `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`." in text
    assert "**zero-filled**" not in text
    assert "it removed 1 of 4 blocks (3); pruned 16.7% of heads and 25% of MLP channels" in text


def test_plain_export_of_a_width_plan_says_it_is_zero_filled(tmp_path):
    """Catches a plain export of narrowed blocks presented as smaller or as needing remote code."""
    plain = {"format": "plain", "vllm_servable": True, "trust_remote_code": False}
    text = card.render_card_text(
        write_run(tmp_path / "run", width_manifest(plain)), repo_id="test-org/pruned"
    )
    assert "**zero-filled**" in text and "nothing is saved" in text
    assert "(nominally: this export zero-fills them)" in text
    assert "trust_remote_code" not in text and "vllm serve test-org/pruned\n" in text
    assert (
        "**Export format: plain** (the base model's own architecture). It loads in stock transformers" in text
    )
