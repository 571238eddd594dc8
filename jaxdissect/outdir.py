"""An output folder that one run owns at a time, and whose files are replaced as a set.

A run holds ``OUT/.lock`` (an advisory lock that the kernel releases when the process dies,
with the holder's pid inside for the message). Outputs are first written whole into a
staging folder inside OUT; then the previous run's completion mark (results.json) is
removed, the new files are renamed into place, and the new results.json goes last. So
OUT either holds a complete set with its results.json, or no results.json at all (never
new counts beside old results); leftovers of an interrupted run are removed by the next.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from jaxdissect.errors import DissectError

STAGING = ".staging"
COMPLETION_MARK = "results.json"


@contextlib.contextmanager
def locked(out: Path) -> Iterator[Path]:
    """Creates OUT and holds its lock for the block; refuses a second holder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DissectError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / ".lock", "a+")
    except OSError as error:
        raise DissectError(f"--out {out}: cannot write there ({error.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DissectError(
                f"--out {out}: in use by a running dissection (pid {holder}); wait for it or "
                "choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield out
        finally:
            handle.seek(0)
            handle.truncate()


def staging_folder(out: Path) -> Path:
    """A fresh, empty staging folder inside OUT (an earlier run's leftovers removed)."""
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    for partial in out.rglob("*.partial"):
        partial.unlink(missing_ok=True)
    staging.mkdir()
    return staging


def publish(staging: Path, out: Path) -> None:
    """Moves what ``staging`` holds into ``out``: the previous completion marks are removed
    first, each results.json goes in last, and a folder without one (a report's images) is
    replaced whole, so no stale file of an earlier run stays beside the new ones."""
    for mark in staging.rglob(COMPLETION_MARK):
        (out / mark.relative_to(staging)).unlink(missing_ok=True)
    _move(staging, out)
    shutil.rmtree(staging, ignore_errors=True)


def _move(source: Path, target_folder: Path) -> None:
    target_folder.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir(), key=lambda p: (p.name == COMPLETION_MARK, p.name)):
        target = target_folder / entry.name
        if entry.is_dir() and (entry / COMPLETION_MARK).is_file():  # one layer's outputs
            _move(entry, target)
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
