"""Checkpoints of a dissection's passes, so that a killed run resumes where it stopped.

Every ``every`` batches, and at the end of each pass, the pass's states are saved as one
.npz file named by the index of the next batch (``DIR/<pass>/<next batch>``), written
beside and renamed into place, so that a file is whole or absent. A restarted run with the
same inputs (the fingerprint: config, data and shapes) restores the latest and skips the
batches it covers; batches are deterministic, so the results are identical to an
uninterrupted run. A fingerprint that differs starts afresh. Every file written is recorded
in ``DIR/owned.json`` first; only recorded files are restored or deleted.

A model's name and weights file do not say what it computes (a user's factory may change
between runs), nor do the probe's file stamps say what images it sees: the caller records
a digest of the activations of the first image of every batch (``check_activations``), and
saved states of other activations are dropped, with a warning.

A saved file is untrusted input: it is read without pickles, and it must hold exactly the
arrays of the pass's states, each named by its keypath in the states' tree and with its
template's shape and dtype (a file of an earlier version, whose arrays were named by
position, does not); otherwise the pass starts afresh, with a warning naming the file.
NumPy alone reads and writes them (no Orbax, no JAX: the CPU path imports neither).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxdissect.errors import DissectError
from jaxdissect.outdir import replace_file, report_leftovers


def _keyed_leaves(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(keypath, array) of each array of a state tree (dicts, NamedTuples, tuples, lists),
    the keypath spelt as ``jax.tree_util.keystr`` spells ``tree_flatten_with_path``'s
    (``['conv5'].top``, ``['other'][1]``): a saved array is found again by where it sits,
    never by its position, so no two layers' states can trade places. Walked here rather
    than by JAX because the CPU path does not import JAX (over a second of start-up)."""
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from _keyed_leaves(tree[key], f"{path}[{key!r}]")
    elif isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple
        for field, value in zip(tree._fields, tree, strict=True):
            yield from _keyed_leaves(value, f"{path}.{field}")
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _keyed_leaves(value, f"{path}[{index}]")
    elif tree is not None:
        yield path, tree


def _rebuild(template: Any, arrays: dict[str, np.ndarray], path: str = "") -> Any:
    """``template``'s structure with each array taken from ``arrays`` by its keypath."""
    if isinstance(template, dict):
        return {key: _rebuild(value, arrays, f"{path}[{key!r}]") for key, value in template.items()}
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        fields = zip(template._fields, template, strict=True)
        return type(template)(*(_rebuild(value, arrays, f"{path}.{f}") for f, value in fields))
    if isinstance(template, (list, tuple)):
        items = enumerate(template)
        return type(template)(_rebuild(value, arrays, f"{path}[{i}]") for i, value in items)
    return None if template is None else arrays[path]


def _checked_folder(folder: Path) -> Path:
    """``folder``, refused if it is a symbolic link: what is written or removed in it must
    stay in OUT."""
    if folder.is_symlink():
        raise DissectError(
            f"{folder}: a symbolic link, not a checkpoint folder of jaxdissect's; move it away"
        )
    if folder.exists() and not folder.is_dir():
        raise DissectError(
            f"{folder}: not a folder, where jaxdissect keeps checkpoints; move it away"
        )
    return folder


OWNED = "owned.json"
ACTIVATIONS = "activations.sha256"


class PassCheckpoints:
    """A dissection's saved pass states in ``directory``.

    Every file it writes is recorded in ``directory/owned.json`` before it is created, and
    only recorded files are read back or deleted: a file of anyone else's in the folder
    (or an earlier version's) is neither restored nor removed.
    """

    def __init__(self, directory: str | Path, fingerprint: dict, every: int = 100):
        if every < 1:
            raise DissectError(
                f"`checkpoint_every` must be >= 1 batch, got {every!r}",
                arguments=("checkpoint_every",),
            )
        self.directory = _checked_folder(Path(directory).absolute())
        self.every = every
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.owned = self._read_owned()
        stamp = self.directory / "fingerprint.json"
        if stamp.is_file() and stamp.read_text() != text:
            self._delete(sorted(self.owned))  # another run's states
        self._own("fingerprint.json")
        replace_file(stamp, text)

    def _read_owned(self) -> set[str]:
        try:
            names = json.loads((self.directory / OWNED).read_text())
        except (OSError, ValueError, RecursionError):
            return set()
        if not isinstance(names, list):
            return set()
        owned = {n for n in names if self._path(n) is not None}
        for name in [n for n in names if not (isinstance(n, str) and n in owned)]:
            warnings.warn(
                f"{self.directory / OWNED}: ignored {name!r}, not a file this folder's "
                "checkpoints could have written (a name inside it)",
                stacklevel=3,
            )
        return owned

    def _path(self, name) -> Path | None:
        """Where a recorded ``name`` lies, if it is one this class writes (``<file>`` or
        ``<pass>/<file>``, plain names) inside the folder without passing a link; else None:
        owned.json is a file in OUT, and a forged entry must not reach outside it."""
        if not isinstance(name, str) or "\0" in name:
            return None
        parts = name.split("/")
        if not 1 <= len(parts) <= 2 or any(p in ("", ".", "..") for p in parts):
            return None
        path = self.directory.joinpath(*parts)
        inside = os.path.join(os.path.realpath(self.directory), *parts[:-1])
        return path if os.path.realpath(path.parent) == inside else None

    def _write_owned(self) -> None:
        replace_file(self.directory / OWNED, json.dumps(sorted(self.owned)))

    def _own(self, *names: str) -> None:
        """Records files before they are created."""
        if not set(names) <= self.owned:
            self.owned.update(names)
            self._write_owned()

    def _delete(self, names: list[str]) -> None:
        for name in names:
            path = self._path(name)
            if path is not None and not path.is_dir():
                path.unlink(missing_ok=True)
            self.owned.discard(name)
        self._write_owned()

    def check_activations(self, digest: str) -> None:
        """Keeps the saved states only if they were computed from activations with this
        ``digest`` (see ``sources.heads_digest``); otherwise (or when states were
        saved without one) drops them with a warning, so that the passes start afresh.
        Records ``digest`` for the states saved from now on."""
        stamp = self.directory / ACTIVATIONS
        recorded = stamp.read_text() if stamp.is_file() else None
        passes = [p for p in self.directory.iterdir() if p.is_dir()]
        if recorded != digest and any(self._saved(p.name) for p in passes):
            warnings.warn(
                f"{self.directory}: the saved passes were computed from other activations "
                "(the first image of some batch has other activations now: another model, "
                "or other images or features); they start afresh",
                stacklevel=2,
            )
            for folder in passes:  # only the files this class wrote and recorded
                self._delete([n for n in self.owned if n.startswith(f"{folder.name}/")])
        self._own(ACTIVATIONS)
        replace_file(stamp, digest)

    def _saved(self, name: str) -> list[int]:
        steps = []
        for owned in self.owned:
            folder, _, step = owned.partition("/")
            if folder == name and step.isascii() and step.isdigit():
                if (self.directory / owned).is_file():
                    steps.append(int(step))
        return sorted(steps)

    def restore(self, name: str, template: Any) -> tuple[int, Any]:
        """(next batch, states as NumPy arrays shaped like ``template``) of pass ``name``,
        or (0, None) when it has not started or its file does not fit."""
        saved = self._saved(name)
        if not saved:
            return 0, None
        path = self.directory / name / str(saved[-1])
        expected = {key: np.asarray(x) for key, x in _keyed_leaves(template)}
        try:
            with np.load(path, allow_pickle=False) as found:
                arrays = {key: found[key] for key in found.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            warnings.warn(
                f"{path}: unreadable checkpoint ({error}); the pass starts afresh", stacklevel=2
            )
            return 0, None
        if arrays and all(key.startswith("leaf") for key in arrays):
            message = "written by an earlier version (arrays by position); the pass starts afresh"
            warnings.warn(f"{path}: {message}", stacklevel=2)
            return 0, None
        fits = arrays.keys() == expected.keys() and all(
            arrays[k].shape == e.shape and arrays[k].dtype == e.dtype for k, e in expected.items()
        )
        if not fits:
            message = "the checkpoint does not match the pass's states; the pass starts afresh"
            warnings.warn(f"{path}: {message}", stacklevel=2)
            return 0, None
        return saved[-1], _rebuild(template, arrays)

    def save(self, name: str, next_batch: int, states: Callable[[], Any], last: bool) -> None:
        """Saves after batch ``next_batch - 1`` when the interval is due or the pass ends."""
        if next_batch % self.every and not last:
            return
        folder = _checked_folder(self.directory / name)
        folder.mkdir(exist_ok=True)
        arrays = {key: np.asarray(x) for key, x in _keyed_leaves(states())}
        partial = folder / f".{next_batch}.partial"
        if f"{name}/{partial.name}" in self.owned:  # a killed save's, recorded before made
            partial.unlink(missing_ok=True)  # (a name only: a link's target stays)
        self._own(f"{name}/{partial.name}", f"{name}/{next_batch}")
        # A new file, never one planted at the name: a link's target or a second name of
        # someone's file would be written through.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            handle = os.open(partial, flags, 0o644)
        except OSError as error:
            raise DissectError(
                f"{partial}: cannot write the checkpoint there ({error.strerror}: not a file "
                "jaxdissect wrote); move it away"
            ) from None
        with open(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, folder / str(next_batch))
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power loss
        finally:
            os.close(directory)
        older = [f"{name}/{step}" for step in self._saved(name) if step != next_batch]
        self._delete([f"{name}/{partial.name}", *older])

    @classmethod
    def discard(cls, directory: str | Path) -> None:
        """Removes an earlier run's checkpoints in ``directory``: the files its
        ``owned.json`` records and the folders they leave empty; nothing else."""
        stale = cls.__new__(cls)
        stale.directory = _checked_folder(Path(directory).absolute())
        stale.owned = stale._read_owned()
        stale.remove()

    def remove(self) -> None:
        """Done: the outputs are written. Removes the files recorded as this class's, and
        the folders they leave empty."""
        names = sorted(self.owned)
        self._delete(names)
        (self.directory / OWNED).unlink(missing_ok=True)
        report_leftovers(self.directory, OWNED)
        for folder in sorted({n.partition("/")[0] for n in names if "/" in n}):
            with contextlib.suppress(OSError):
                (self.directory / folder).rmdir()
        with contextlib.suppress(OSError):
            self.directory.rmdir()
