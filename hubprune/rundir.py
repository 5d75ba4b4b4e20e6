"""Writing run folders so that a reader, a second writer or a kill never sees half of one.

A run folder is built complete (weights, tokenizer, license files *and* ``hubprune.json``) in a
staging folder beside it and renamed into place, so the folder appears with its manifest. While
staging, a lock file beside the target (``.NAME.lock``, held with `filelock`) keeps a second
process from writing the same folder; it fails with one sentence instead of deleting the first
one's result. Replacing an existing folder (``--overwrite``) is allowed only for a hubprune run
folder (one with ``hubprune.json``) and never for the source model: the old folder is renamed
aside, the new one renamed in, and only then is the old one deleted.

Staging folders, set-aside folders and temporary files carry the writer's process id in their
name (``.NAME.staging-PID-XXXX``); the next writer of the same target removes those whose
process is gone (a kill leaves them behind) and says so. Files inside an existing folder
(manifest updates, the evaluation report, the card) are replaced atomically in the same way.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hubprune.errors import ExportError
from hubprune.plan import MANIFEST_NAME

logger = logging.getLogger("hubprune.rundir")

#: Test hook (tests/test_faults.py): when set to a point's name, the process SIGKILLs itself there.
FAULT_ENV = "HUBPRUNE_FAULT"

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|trash|tmp)-(?P<pid>\d+)-[0-9a-f]+$")


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process here when ``HUBPRUNE_FAULT`` equals `name`; otherwise nothing.

    Points: ``before-stage`` (lock taken, nothing staged), ``during-stage`` (weights written, no
    manifest yet), ``before-rename`` (staging complete), ``between-renames`` (old folder set
    aside, new one not yet in place), ``after-rename``; publish: ``publish-before-hub-write``,
    ``publish-after-create``, ``publish-after-commit`` (see `hubprune.publish`).
    """
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _leftover_name(target: Path, kind: str) -> Path:
    """A hidden sibling of `target` named after this process: `.NAME.KIND-PID-XXXX`."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove staging folders, set-aside folders and temporary files of `target` left by processes
    that no longer run; returns what was removed. A set-aside run folder (a kill between the two
    renames of an overwrite) is renamed back when `target` is missing, so nothing is lost."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for path in sorted(target.parent.iterdir()):
        match = _LEFTOVER.match(path.name)
        if not match or match["name"] != target.name or _alive(int(match["pid"])):
            continue
        if match["kind"] == "trash" and not target.exists():
            os.rename(path, target)
            logger.warning("restored %s from %s, left by a process that no longer runs", target, path.name)
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        logger.warning("removed %s, left by a process (pid %s) that no longer runs", path, match["pid"])
        removed.append(path)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary sibling and one rename, so a reader (or a kill)
    sees the old file or the new one, never half of one."""
    path = Path(path)
    try:
        remove_stale(path)
        tmp = _leftover_name(path, "tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as err:  # read-only folder, full disk, no permission: the user's to fix
        raise ExportError(f"cannot write {path} ({err.strerror or err})") from err
    return path


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a hubprune run folder (it holds ``hubprune.json``)."""
    return (folder / MANIFEST_NAME).is_file()


def prepare_out_dir(out_dir: str | Path, overwrite: bool, *, source: str | Path | None = None) -> Path:
    """Check that `out_dir` may be written: absent or empty, or (with `overwrite`) an earlier run
    folder; never the source model (`source`, when it is a local path) or a folder holding it."""
    out = Path(out_dir)
    if source is not None and Path(source).exists():
        src, target = Path(source).resolve(), out.resolve()
        if src == target or target in src.parents:
            raise ExportError(f"output folder {out} is (or holds) the source model; choose another --out")
    if out.exists() and not out.is_dir():
        raise ExportError(f"output path {out} exists and is not a folder")
    _check_writable(out)
    if not (out.is_dir() and any(out.iterdir())):
        return out
    if not overwrite:
        raise ExportError(
            f"output folder {out} already exists and is not empty; pass --overwrite to replace it"
        )
    if not is_run_folder(out):
        raise ExportError(
            f"--overwrite replaces only hubprune run folders, and {out} has no {MANIFEST_NAME}; "
            "remove it yourself or choose another --out"
        )
    return out


def _check_writable(out: Path) -> None:
    """Fail before any work when the folder that will hold `out` cannot be written (read-only
    file system, no permission, a file in the way): it is created if missing and probed."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ExportError(
            f"cannot write {out}: {parent} is not writable ({err.strerror or err}); choose another --out"
        ) from err


@contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `out`; a second writer of the same folder fails at once."""
    from filelock import FileLock, Timeout

    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out.parent / f".{out.name}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        raise ExportError(
            f"another hubprune process is writing {out} right now; wait for it or choose another --out"
        ) from err
    try:
        yield
    finally:
        lock.release()


@contextmanager
def staged_folder(
    out_dir: str | Path, overwrite: bool, *, source: str | Path | None = None
) -> Iterator[Path]:
    """Yield an empty staging folder beside `out_dir`; fill it completely (manifest included) and
    on a clean exit it becomes `out_dir` in one rename. On failure it is removed.

    Holds the folder's lock from the checks to the rename and checks under it, before staging and
    again before the rename: a folder another process finished meanwhile is refused, not deleted.
    """
    out = Path(out_dir)
    with out_lock(out):
        remove_stale(out)
        prepare_out_dir(out, overwrite, source=source)
        fault_point("before-stage")
        tmp = _leftover_name(out, "staging")
        tmp.mkdir(mode=0o755)
        try:
            yield tmp
            fault_point("before-rename")
            prepare_out_dir(out, overwrite, source=source)  # again: a writer that ignores the lock
            _move_into_place(tmp, out)
            fault_point("after-rename")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing run folder is renamed aside first and deleted after."""
    if not (out.is_dir() and any(out.iterdir())):
        try:
            os.replace(tmp, out)  # replaces an empty folder atomically, never a non-empty one
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise ExportError(f"output folder {out} was filled by someone else while writing") from err
        return
    trash = _leftover_name(out, "trash")
    os.rename(out, trash)
    fault_point("between-renames")
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)
