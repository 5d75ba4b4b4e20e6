"""The GitHub Actions workflows, linted offline (check-jsonschema, zizmor, actionlint) and checked
against the CLI so the workflow's inputs and the flags its scripts pass cannot drift from hubprune."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
PRUNE_AND_PUBLISH = WORKFLOWS / "prune-and-publish.yml"
CI = WORKFLOWS / "ci.yml"
ALL = sorted(WORKFLOWS.glob("*.yml"))


def tool(name: str) -> str:
    """The linter's executable (installed with `pip install -e .[test]`); fails the test if absent."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"`{name}` is not installed: pip install -e '.[test]'")
    return found


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(job_id, step) for job_id, job in workflow["jobs"].items() for step in job.get("steps", [])]


def subparsers() -> dict[str, Any]:
    from hubprune.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


def options_of(parser: Any) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


# -- the linters ---------------------------------------------------------------------------------------


def test_workflows_match_the_github_schema():
    """Catches a key GitHub would reject (typo, wrong type, bad input type)."""
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, ALL)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_above_low():
    """Catches template injection, unpinned actions, credential persistence, excessive permissions..."""
    result = subprocess.run(
        [tool("zizmor"), "--offline", "--format", "json", str(WORKFLOWS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode in (0, 10, 11, 12, 13, 14), result.stderr  # 1x = findings, judged below
    findings = json.loads(result.stdout or "[]")
    serious = [
        f"{f['ident']} ({f['determinations']['severity']}): {f.get('desc', '')}"
        for f in findings
        if f["determinations"]["severity"].lower() not in ("informational", "low", "unknown")
    ]
    assert not serious, "\n".join(serious)


def test_actionlint():
    """Catches expression and shell mistakes and undeclared runner labels (.github/actionlint.yaml)."""
    result = subprocess.run(
        [tool("actionlint"), "-no-color", *map(str, ALL)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the workflow's promises ------------------------------------------------------------------------------


def test_inputs_reach_scripts_only_through_env():
    """Catches `${{ inputs.x }}` (or any expression) inside a script, the template-injection hole, and an
    input no step uses."""
    workflow = load(PRUNE_AND_PUBLISH)
    used: set[str] = set()
    for job_id, step in steps(workflow):
        assert "${{" not in step.get("run", ""), f"{job_id}/{step.get('name')}: expression inside run:"
        for value in [*step.get("env", {}).values(), step.get("if", "")]:
            used |= set(re.findall(r"inputs\.(\w+)", str(value)))
    for job in workflow["jobs"].values():
        used |= set(re.findall(r"inputs\.(\w+)", json.dumps(job.get("concurrency", {}))))
    inputs = set(workflow["on"]["workflow_dispatch"]["inputs"])
    assert inputs <= used, f"inputs never used: {sorted(inputs - used)}"
    assert used <= inputs, f"unknown inputs referenced: {sorted(used - inputs)}"


def test_workflow_inputs_match_the_cli():
    """Catches drift between the workflow and hubprune: method choices are the registered methods, the
    recovery choices the recovery modes, the default amount a valid budget, and every `--flag` a step
    passes to `hubprune VERB` an option of that verb."""
    from typing import get_args

    from hubprune.cli import VERBS
    from hubprune.methods import Budget, available_methods
    from hubprune.recipe import RecoverySettings

    inputs = load(PRUNE_AND_PUBLISH)["on"]["workflow_dispatch"]["inputs"]
    assert inputs["method"]["type"] == "choice"
    assert inputs["method"]["options"] == sorted(m.name for m in available_methods())
    assert inputs["recovery"]["options"] == [
        "none",
        *get_args(RecoverySettings.model_fields["mode"].annotation),
    ]
    Budget.parse(inputs["amount"]["default"])
    assert inputs["private"]["type"] == inputs["create_pr"]["type"] == "boolean"
    assert inputs["target_repo"]["required"] is True

    parsers = subparsers()
    checked = set()
    for job_id, step in steps(load(PRUNE_AND_PUBLISH)):
        script = step.get("run", "")
        verbs = set(re.findall(r"\bhubprune (\w+)", script))
        assert verbs <= set(VERBS), f"{job_id}/{step.get('name')}: unknown verb {verbs - set(VERBS)}"
        if len(verbs) != 1 or next(iter(verbs)) not in parsers:
            continue  # no hubprune call, or a verb not in this installation yet (recover, run)
        verb = next(iter(verbs))
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", script))
        assert flags <= options_of(parsers[verb]), (
            f"`hubprune {verb}` has no {sorted(flags - options_of(parsers[verb]))}"
        )
        checked.add(verb)
    assert {"prune", "card", "publish"} <= checked


def test_publish_cli_has_the_workflow_options():
    """Catches the publish verb losing an option the workflow and the README rely on."""
    publish = subparsers()["publish"]
    assert {
        "--repo",
        "--private",
        "--public",
        "--revision",
        "--create-pr",
        "--commit-message",
        "--dry-run",
    } <= options_of(publish)
    with pytest.raises(SystemExit):  # visibility is required and explicit
        publish.parse_args(["out/run", "--repo", "a/b"])


def test_least_privilege_protected_token_and_safe_concurrency():
    """Catches broad permissions, the token outside the protected environment, cancelled uploads, a
    run folder not kept on failure, and a runner without the GPU label declared for actionlint."""
    workflow = load(PRUNE_AND_PUBLISH)
    assert workflow["permissions"] == {}
    labels = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())["self-hosted-runner"][
        "labels"
    ]
    for job_id, job in workflow["jobs"].items():
        assert job["permissions"] == {"contents": "read"}, job_id
        assert "self-hosted" in job["runs-on"] and set(job["runs-on"]) - {"self-hosted", "linux"} <= set(
            labels
        )
    publish = workflow["jobs"]["publish"]
    assert publish["environment"] == "hub-publish"
    assert publish["concurrency"]["cancel-in-progress"] is False
    assert "inputs.target_repo" in publish["concurrency"]["group"]
    secrets = [(j, s.get("name")) for j, s in steps(workflow) if "secrets." in json.dumps(s)]
    assert secrets == [("publish", "Publish")]
    upload = next(s for _, s in steps(workflow) if "upload-artifact" in s.get("uses", ""))
    assert upload["if"] == "always()"
    assert workflow["env"]["HF_HOME"].startswith("/")  # persistent on the runner, not the workspace
    for _, step in steps(workflow):
        if "uses" in step:
            assert re.search(r"@[0-9a-f]{40}$", step["uses"]), f"{step['uses']} is not pinned to a commit"


def test_ci_runs_the_readme_test_command():
    """Catches CI running something other than the command the README gives (`bash .ci/run`)."""
    runs = [step.get("run", "") for _, step in steps(load(CI))]
    assert "bash .ci/run" in runs
