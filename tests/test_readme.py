"""The README runs as written.

Every fenced ``bash`` and ``python`` block of README.md is read here. A block (or a line) carrying
the comment ``needs the Hub`` is only checked, not run, since this machine has no Hub; the README
puts an offline twin beside each. Everything else runs, in order, in a scratch folder that sees
the repository's ``examples/``: the ``hubprune`` commands through the real CLI, the Python blocks
with ``exec``. ``pip install`` steps are skipped (the test environment is that install) and so is
the test command itself. Every ``hubprune`` command, run or not, must parse with the real parser,
and every ``offline:NAME`` the README mentions must exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubprune import offline

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
HUB_MARK = "needs the Hub"


@dataclass
class Block:
    lang: str
    text: str
    line: int

    @property
    def needs_hub(self) -> bool:
        return HUB_MARK in self.text


def readme_blocks(text: str | None = None) -> list[Block]:
    """The fenced code blocks of the README, with their language and first line number."""
    text = README.read_text(encoding="utf-8") if text is None else text
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^(`{3,})(\w*)\s*$", lines[i])
        if match:
            fence, lang, start = match.group(1), match.group(2), i + 1
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith(fence):
                body.append(lines[i])
                i += 1
            blocks.append(Block(lang, "\n".join(body), start + 1))
        i += 1
    return blocks


@dataclass
class Command:
    argv: list[str]
    needs_hub: bool
    line: int


def shell_commands(block: Block) -> list[Command]:
    """Commands of a bash block: continuation lines joined, `&&` chains split, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    commands = []
    for offset, raw in enumerate(joined.splitlines()):
        needs_hub = block.needs_hub and (HUB_MARK in raw or not _block_marks_lines(block))
        words = shlex.split(raw, comments=True)
        chain: list[list[str]] = [[]]
        for word in words:
            if word == "&&":
                chain.append([])
            else:
                chain[-1].append(word)
        commands += [Command(argv, needs_hub, block.line + offset) for argv in chain if argv]
    return commands


def _block_marks_lines(block: Block) -> bool:
    """Whether the Hub mark sits on particular command lines (else it covers the whole block)."""
    first = block.text.lstrip().splitlines()[0] if block.text.strip() else ""
    return HUB_MARK not in first


def _hubprune_argv(argv: list[str]) -> list[str] | None:
    """The arguments of a `hubprune` call (directly, via `python -m`, or `accelerate launch -m`)."""
    if argv[0] == "hubprune":
        return argv[1:]
    if "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == "hubprune":
        return argv[argv.index("-m") + 2 :]
    return None


def all_commands() -> list[Command]:
    return [c for b in readme_blocks() if b.lang in ("bash", "sh", "") for c in shell_commands(b)]


def test_the_block_reader_finds_fences_and_marks():
    text = "x\n```bash\nhubprune ls methods\nhubprune pull a/b  # needs the Hub\n```\n````python\n```\n````\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.line) for b in blocks] == [("bash", 3), ("python", 7)]
    commands = shell_commands(blocks[0])
    assert [(c.argv, c.needs_hub) for c in commands] == [
        (["hubprune", "ls", "methods"], False),
        (["hubprune", "pull", "a/b"], True),
    ]


def test_every_hubprune_command_in_the_readme_parses():
    from hubprune.cli import build_parser

    parser = build_parser()
    seen = 0
    for command in all_commands():
        args = _hubprune_argv(command.argv)
        if args is None:
            continue
        seen += 1
        try:
            parser.parse_args(args)
        except SystemExit as err:
            pytest.fail(f"README line {command.line}: `hubprune {' '.join(args)}` does not parse ({err})")
    assert seen >= 8


def test_every_offline_name_in_the_readme_exists():
    from hubprune.tasks import PACK

    names = [*offline.MODELS, *offline.TEXTS, *PACK, "all"]
    known = {offline.PREFIX + name for name in names}
    mentioned = set(re.findall(r"offline:[a-z0-9_\-.]+[a-z0-9]", README.read_text(encoding="utf-8")))
    assert mentioned, "the README names no offline material"
    assert not mentioned - known, f"unknown offline names in the README: {sorted(mentioned - known)}"


def test_every_hub_only_block_has_an_offline_twin():
    """A block marked as needing the Hub is not the README's only example of that verb."""
    runnable = {
        tuple(_hubprune_argv(c.argv)[:1])
        for c in all_commands()
        if not c.needs_hub and _hubprune_argv(c.argv)
    }
    for command in all_commands():
        args = _hubprune_argv(command.argv)
        if command.needs_hub and args:
            assert tuple(args[:1]) in runnable, f"README line {command.line}: no offline example of {args[0]}"


def _runnable(command: Command) -> bool:
    argv = command.argv
    if command.needs_hub or argv[:2] in (["pip", "install"], ["python", "-m"]) and "pip" in argv[:3]:
        return False
    if argv[0] in ("pip", "ruff"):
        return False  # the install is this environment; lint runs in .ci/run itself
    return argv[:3] != ["python", "-m", "pytest"]


@pytest.mark.slow
def test_the_readme_runs_as_written(tmp_path):
    """Run every offline command and Python block of the README, in order, in a scratch folder."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_ENDPOINT", None)  # the real default: no Hub reachable from here
    ran = 0
    for block in readme_blocks():
        if block.needs_hub and block.lang == "python":
            continue
        if block.lang == "python":
            done = subprocess.run(
                [sys.executable, "-c", block.text], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, (
                f"README python block at line {block.line} failed:\n{done.stderr[-3000:]}"
            )
            ran += 1
            continue
        if block.lang not in ("bash", "sh"):
            continue
        for command in shell_commands(block):
            if not _runnable(command):
                continue
            argv = command.argv
            if argv[0] == "hubprune":  # this interpreter's hubprune, whatever is on PATH
                argv = [sys.executable, "-m", "hubprune", *argv[1:]]
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, (
                f"README line {command.line}: `{shlex.join(command.argv)}` failed:\n{done.stderr[-3000:]}"
            )
            ran += 1
    assert ran >= 5
