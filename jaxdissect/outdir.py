"""An output folder that one run owns at a time, and whose files are replaced as whole sets.

A run holds ``OUT/.lock`` (an advisory lock that the kernel releases when the process dies,
with the holder's pid inside for the message).

Outputs are sets of a kind (``dissect``: tally.csv, counts.npz, results.json,
fingerprint.json, report.html, report/, or a folder per layer and index.html;
``formulas``: formulas.csv, formulas.json, formulas.html; ``study``: a study's
results.json, config.json, figures and summary.html in its workdir: experiments/workdir.py).
Each set is written whole into its own folder ``OUT/.jaxdissect/<kind>.<n>``, and completed
by ``MANIFEST.json`` (written last: every file's path, size and SHA-256).
``OUT/.jaxdissect/<kind>`` is a symbolic link to the current complete set, replaced in one
rename when a new set is complete, and each of the set's names in OUT is a link through it
(``OUT/tally.csv`` -> ``.jaxdissect/dissect/tally.csv``). So every name resolves into one
complete set: the previous one until the instant the new one is whole, then the new one; a
name the new set lacks (report.html after ``--no-report``) no longer resolves, and its link
is removed.

Nothing is deleted by pattern. ``OUT/.jaxdissect/journal.json`` records, before each is
made, every set folder and every link in OUT this module creates; a set is removed file by
file from its manifest (a file someone else put in it is kept, with a warning) and a
link only while it still points where this module pointed it. A folder of a set that was
never completed is removed whole: it was created here, under the lock, and never
published. A file or folder already at one of a set's names that this module did not make
(a user's, or an earlier version's plain files) is moved, not deleted, into
``OUT/.jaxdissect/displaced.<n>/``, and the move is reported on stderr.

The journal and manifests are files in OUT, which someone else may have written: a
journal naming anything but a set folder of the store (``<kind>.<n>``) or a plain name in
OUT is refused whole, and a manifest's file is removed only where no link lies on its
path. Nothing is written through a link planted at one of this module's names: the lock
is opened with O_NOFOLLOW, and other files are written anew and renamed into place.

A run killed while writing a file leaves its temporary ``.<name>.XXXXXXXX.partial`` beside
it. In a set folder never published it goes with the folder; elsewhere it is not removed,
because nothing records it (its name is a pattern anyone can make): the journal's are named
on stderr at the next run, for the user to remove, and are otherwise ignored.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG

from jaxdissect.errors import DissectError, notice

STORE = ".jaxdissect"
JOURNAL = "journal.json"
MANIFEST = "MANIFEST.json"
KINDS = ("dissect", "formulas", "directions", "study")
# What an earlier version of jaxdissect wrote as plain files into OUT, by kind, and the file
# that marked its set complete: with that mark present, these names are moved aside when
# a set of the kind is published, so that none of them stays beside the new set.
LEGACY_NAMES = {
    "dissect": (
        "results.json",
        ("tally.csv", "counts.npz", "fingerprint.json", "report.html", "report", "index.html"),
    ),
    "formulas": ("formulas.json", ("formulas.csv", "formulas.html")),
    "directions": ("directions.json", ("directions.csv", "directions.npz", "directions.html")),
    "study": (
        "results.json",
        (
            *("config.json", "summary.html", "comparison.png", "rotation.png", "explain.png"),
            *("unique_detectors.png", "per_category.png", "accuracy.png"),
            *("concept_transitions.png", "compositional.png", "formula_mix.png"),
            "directions.png",
        ),
    ),
}


@contextlib.contextmanager
def locked(out: Path) -> Iterator[Path]:
    """Creates OUT and holds its lock for the block; refuses a second holder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DissectError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DissectError(f"--out {out}: cannot write there ({error.strerror})") from None
    busy = f"--out {out}: in use by a running dissection (pid {{pid}}); wait for it or choose "
    with held_lock(out / ".lock", busy + "another --out", f"--out {out}: cannot write there"):
        yield out


@contextlib.contextmanager
def held_lock(
    path: Path, busy: str, unwritable: str, error=DissectError, remove: bool = False
) -> Iterator[None]:
    """Holds the advisory lock file ``path`` for the block (the kernel releases it when the
    process dies), this process's pid written in it. A second holder gets ``error(busy)``,
    ``{pid}`` filled with the holder's; a lock that cannot be opened, ``error(unwritable)``.
    The file is opened without following a link: it is truncated. With ``remove``, the file
    is removed at the end of the block, still locked (a process that opened it meanwhile
    finds, once it holds the lock, that the file is no longer at ``path``, and is refused)."""
    try:
        handle = os.fdopen(open_plain_file(path, "jaxdissect's lock file"), "r+")
    except OSError as failure:
        raise error(f"{unwritable} ({failure.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as failure:
            if failure.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            raise error(busy.format(pid=handle.read().strip() or "another process")) from None
        if remove and not _still_at(handle, path):
            raise error(busy.format(pid="another process"))
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            if remove:
                path.unlink(missing_ok=True)


def _still_at(handle, path: Path) -> bool:
    """Whether the open file ``handle`` is still the file at ``path`` (not removed since)."""
    try:
        return os.path.samestat(os.lstat(path), os.fstat(handle.fileno()))
    except FileNotFoundError:
        return False


def open_plain_file(path: Path, what: str) -> int:
    """A descriptor of ``path`` (created if absent), opened for reading and writing without
    following a link, and refused unless it is a plain file with no other name: the caller
    truncates or appends to it, so a link or a second name planted there must not lead to
    someone else's file. ``what`` names the file jaxdissect expects there."""
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DissectError(f"{path}: a symbolic link, not {what}; move it away") from None
        raise
    status = os.fstat(handle)
    if not S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(handle)
        raise DissectError(
            f"{path}: not a plain file of jaxdissect's (another name of a file, or not a "
            "file); move it away"
        )
    return handle


def replace_file(path: Path, content: str | bytes) -> None:
    """Writes ``path`` whole through a new file renamed over it: a symbolic link planted at
    ``path`` is replaced, never written through (mkstemp creates a new name, O_EXCL)."""
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".partial", dir=path.parent
    )
    try:
        with os.fdopen(handle, "w" if isinstance(content, str) else "wb") as file:
            file.write(content)
        os.chmod(temporary, 0o644)  # as a plain write would leave it, not mkstemp's 0600
        try:
            os.replace(temporary, path)
        except IsADirectoryError:  # whose message names the temporary file, not ``path``
            raise DissectError(f"{path}: a folder, where a file is written; move it away") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def report_leftovers(folder: Path, name: str) -> None:
    """Names on stderr the temporary files of ``replace_file`` for ``folder/name`` that a
    killed run left; never removes them (see the module docstring)."""
    left = sorted(p.name for p in folder.glob(f".{glob.escape(name)}.*.partial"))
    if left:
        notice(
            f"{folder}: {', '.join(left)} left by an interrupted write of {name}; "
            "not removed (nothing records it as jaxdissect's): remove it yourself"
        )


def _store(out: Path) -> Path:
    store = out / STORE
    if store.is_symlink() or (store.exists() and not store.is_dir()):
        raise DissectError(f"{store}: not a folder of jaxdissect's; move it away")
    store.mkdir(exist_ok=True)
    return store


def check_store(out: Path) -> None:
    """Refuses, before a run's work, a store or journal in OUT that publishing would refuse
    at its end (a run publishing last, as a study does, would lose its whole run)."""
    store = Path(out) / STORE
    if os.path.lexists(store):
        _read_journal(_store(Path(out)))


def _read_journal(store: Path) -> dict:
    try:
        journal = json.loads((store / JOURNAL).read_text())
    except FileNotFoundError:
        return {"next": 1, "sets": {}, "links": {}, "displaced": [], "published": []}
    except (OSError, ValueError, RecursionError) as error:
        raise DissectError(f"{store / JOURNAL}: unreadable ({error}); move {store} away") from None
    if not (
        isinstance(journal, dict)
        and isinstance(journal.get("next"), int)
        and isinstance(journal.get("sets"), dict)
        and isinstance(journal.get("links"), dict)
        and isinstance(journal.get("displaced"), list)
        and isinstance(journal.get("published", []), list)  # absent in older journals
    ):
        raise DissectError(f"{store / JOURNAL}: not a journal of jaxdissect's; move {store} away")
    # Its names are removed or unlinked later: one that is not a plain name in the store (or
    # in OUT, for links) could reach outside OUT, so the whole journal is refused, untouched.
    bad = [("sets", n) for n, kind in journal["sets"].items() if not _set_name(n, kind)]
    bad += [("links", n) for n in journal["links"] if not _plain_name(n) or n in (STORE, ".lock")]
    if bad:
        field, name = bad[0]
        what = f"a set folder's name in {store}" if field == "sets" else f"a name in {store.parent}"
        raise DissectError(
            f"{store / JOURNAL}: {field} entry {name!r} is not {what} (jaxdissect did not write "
            f"this journal); nothing was removed; move {store} away"
        )
    return journal


def _set_name(name, kind) -> bool:
    """Whether ``name`` is one ``new_set`` gives a set of ``kind``: ``<kind>.<n>``."""
    if not (_plain_name(name) and kind in KINDS and name.startswith(f"{kind}.")):
        return False
    number = name[len(kind) + 1 :]
    return number.isascii() and number.isdigit()


def _write_journal(store: Path, journal: dict) -> None:
    replace_file(store / JOURNAL, json.dumps(journal, indent=1, sort_keys=True) + "\n")
    _sync_folder(store)


def _sync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)  # the renames in it survive a power loss
    finally:
        os.close(handle)


def _plain_name(name) -> bool:
    """One path component, neither '.' nor '..': joined to a folder it names an entry of it."""
    return (
        isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
        and "\0" not in name
    )  # fmt: skip


def current_set(out: str | Path, kind: str) -> Path | None:
    """The folder of OUT's current complete set of ``kind`` (None if it has none)."""
    link = Path(out) / STORE / kind
    try:
        target = os.readlink(link)
    except OSError:
        return None
    folder = link.parent / target
    return folder if _plain_name(target) and (folder / MANIFEST).is_file() else None


def new_set(out: Path, kind: str) -> Path:
    """A fresh, empty folder for a set of ``kind`` in OUT (whose lock the caller holds).

    Sets and links left behind by an interrupted run are cleared up first (see the module
    docstring: only what the journal records).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind of output set {kind!r}")
    store = _store(out)
    journal = _read_journal(store)
    _collect(out, store, journal)
    while True:
        name = f"{kind}.{journal['next']}"
        journal["next"] += 1
        journal["sets"][name] = kind
        _write_journal(store, journal)  # recorded before it exists
        try:
            (store / name).mkdir()
            return store / name
        except FileExistsError:  # not ours: leave it, take the next number
            del journal["sets"][name]


def discard(folder: Path) -> None:
    """Removes a set folder from ``new_set`` that will not be published (a failed run)."""
    store = folder.parent
    if store.name != STORE or store.is_symlink() or folder.is_symlink():
        raise ValueError(f"{folder}: not a set folder of jaxdissect's")
    journal = _read_journal(store)  # refuses names that are not plain
    unpublished = folder.name not in journal.get("published", [])
    if journal["sets"].get(folder.name) in KINDS and unpublished:
        shutil.rmtree(folder, ignore_errors=True)  # made by new_set, never published
        if not folder.exists():
            del journal["sets"][folder.name]
            _write_journal(store, journal)


def publish(folder: Path, out: Path) -> None:
    """Completes the set written into ``folder`` (from ``new_set``) with its manifest and
    makes it OUT's current set of its kind: its names in OUT resolve into it from one
    rename on; the previous set of the kind is then removed (only its own files)."""
    store = folder.parent
    journal = _read_journal(store)
    kind = journal["sets"].get(folder.name)
    if kind not in KINDS or store != out / STORE:
        raise ValueError(f"{folder}: not a set folder of {out}")
    names = _write_manifest(folder)
    for name in names:
        if name in (STORE, ".lock"):
            raise DissectError(f"{out}: a set cannot hold {name!r}, jaxdissect's own name")
    for name in names:
        owner = journal["links"].get(name)
        if owner not in (None, kind) and _is_our_link(out, name, owner):
            raise DissectError(
                f"{out / name}: already one of the {owner} outputs in {out}; choose another --out"
            )
    displaced = [n for n in names if _occupied(out, n) and not _is_our_link(out, n, kind)]
    marker, legacy = LEGACY_NAMES[kind]
    if (out / marker).is_file() and not (out / marker).is_symlink():  # an earlier version's set
        displaced += [
            n for n in (marker, *legacy) if n not in displaced and _occupied(out, n)
            if not _is_our_link(out, n, kind)
        ]  # fmt: skip
    if displaced:
        _displace(out, store, journal, sorted(displaced))
    for name in names:  # recorded before they exist
        journal["links"][name] = kind
    journal.setdefault("published", []).append(folder.name)  # from now on, maybe seen
    _write_journal(store, journal)
    for name in names:
        if not (out / name).is_symlink():
            os.symlink(f"{STORE}/{kind}/{name}", out / name)
    temporary = store / f".{kind}.link"
    _unlink_temporary_link(store, kind)
    current = store / kind
    if current.exists() and not current.is_symlink():
        # A copy of OUT that followed the links (shutil.copytree, cp -L) made the link a
        # folder: keep it, renamed, rather than delete what is now a user's copy.
        aside = store / f"{kind}.copied.{journal['next']}"
        journal["next"] += 1
        os.replace(current, aside)
    os.symlink(folder.name, temporary)
    os.replace(temporary, store / kind)  # the instant the new set replaces the old one
    _sync_folder(store)
    _sync_folder(out)
    _collect(out, store, journal)


def _unlink_temporary_link(store: Path, kind: str) -> None:
    """The link ``publish`` makes before renaming it into place, left by a kill between."""
    temporary = store / f".{kind}.link"
    if temporary.is_symlink():
        os.unlink(temporary)


def _occupied(out: Path, name: str) -> bool:
    return (out / name).is_symlink() or (out / name).exists()


def _is_our_link(out: Path, name: str, kind: str) -> bool:
    try:
        return os.readlink(out / name) == f"{STORE}/{kind}/{name}"
    except OSError:
        return False


def _write_manifest(folder: Path) -> list[str]:
    """Writes ``folder``'s manifest (every file in it: this run wrote them, under the lock);
    returns the set's top-level names."""
    files = {}
    for root, directories, names in os.walk(folder):
        directories.sort()
        for name in sorted(names):
            path = Path(root, name)
            if path.is_symlink() or not path.is_file():
                continue
            files[path.relative_to(folder).as_posix()] = {
                "size": path.stat().st_size,
                "sha256": sha256_file(path),
            }
    replace_file(folder / MANIFEST, json.dumps({"files": files}, indent=1) + "\n")
    _sync_folder(folder)
    return sorted({name.split("/")[0] for name in files})


def sha256_file(path: Path) -> str:
    """The SHA-256 of the file at ``path``, read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return files if isinstance(files, dict) else None


def set_files(folder: Path) -> list[str]:
    """The files a complete set's manifest lists, each a path inside ``folder``; refused in
    one line otherwise (the manifest is a file in OUT, which someone else may have written:
    a name leaving the set must not lead a copy or a link elsewhere)."""
    files = _read_manifest(folder)
    if files is None:
        raise DissectError(f"{folder / MANIFEST}: not a manifest of jaxdissect's; move it away")
    for name in files:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise DissectError(
                f"{folder / MANIFEST}: {name!r} is not a file inside the set (jaxdissect did "
                "not write this manifest); move it away"
            )
    return list(files)


def _displace(out: Path, store: Path, journal: dict, names: list[str]) -> None:
    """Moves entries of OUT that this module did not make out of a new set's way."""
    number = len(journal["displaced"]) + 1
    while os.path.lexists(store / f"displaced.{number}"):  # a link there, dangling or not
        # is someone else's: neither followed nor replaced
        number += 1
    aside = store / f"displaced.{number}"
    journal["displaced"].append(aside.name)
    _write_journal(store, journal)
    aside.mkdir()
    for name in names:
        os.rename(out / name, aside / name)
    notice(f"moved {', '.join(names)} (not written as part of a set) from {out} to {aside}")


def _pointed(out: Path, kind: str) -> Path | None:
    """The set folder ``OUT/.jaxdissect/<kind>`` links to, complete or not."""
    try:
        target = os.readlink(out / STORE / kind)
    except OSError:
        return None
    return out / STORE / target if _plain_name(target) else None


def _collect(out: Path, store: Path, journal: dict) -> None:
    """Removes what the journal records and no current set uses: links, then sets."""
    report_leftovers(store, JOURNAL)
    pointed = {kind: _pointed(out, kind) for kind in KINDS}
    for kind in KINDS:
        _unlink_temporary_link(store, kind)
    in_use = {}
    for kind, folder in pointed.items():
        files = _read_manifest(folder) if folder is not None else {}
        in_use[kind] = None if files is None else {name.split("/")[0] for name in files}
    for name, kind in sorted(journal["links"].items()):
        if in_use.get(kind) is None or name in in_use[kind]:
            continue  # in use, or the current set's manifest is unreadable: keep them all
        if _is_our_link(out, name, kind):
            os.unlink(out / name)
        del journal["links"][name]
    published = journal.setdefault("published", [])
    stale = [name for name, kind in journal["sets"].items() if pointed.get(kind) != store / name]
    for name in sorted(stale):
        if _remove_set(store / name, name in published):
            del journal["sets"][name]
            if name in published:
                published.remove(name)
    _write_journal(store, journal)


def _remove_set(folder: Path, published: bool) -> bool:
    """Removes a set that is no longer current; True once nothing of ours is left.

    A set that may have been published (``published``: recorded before its switch) is
    removed file by file from its manifest; one that never was is the run's that wrote it
    alone, and is removed whole.
    """
    if folder.is_symlink() or not folder.is_dir() or not _plain_name(folder.name):
        return True  # gone (or never made): nothing of ours there
    if not published:
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()
    files = _read_manifest(folder) or {}
    folders = set()
    for relative, record in files.items():
        path = folder / relative
        if ".." in Path(relative).parts or Path(relative).is_absolute():
            continue
        folders.update(p for p in path.parents if folder in p.parents)
        if path.is_symlink() or not path.is_file() or not _within(folder, path):
            continue
        if not isinstance(record, dict) or path.stat().st_size != record.get("size"):
            continue  # rewritten since: not provably ours
        if sha256_file(path) != record.get("sha256"):
            continue  # rewritten to the same size
        path.unlink()
    for directory in sorted(folders, key=lambda d: -len(d.parts)):
        with contextlib.suppress(OSError):
            directory.rmdir()
    (folder / MANIFEST).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        notice(
            f"kept {folder} for what jaxdissect did not write there: "
            f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''}"
        )
    return True


def _within(folder: Path, path: Path) -> bool:
    """Whether ``path`` (below ``folder``) is reached without passing a symbolic link: a
    subfolder of a set replaced by a link must not lead its removal elsewhere."""
    parts = path.relative_to(folder).parent.parts
    return os.path.realpath(path.parent) == os.path.join(os.path.realpath(folder), *parts)
