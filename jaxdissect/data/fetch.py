"""``jaxdissect fetch NAME --dir DIR``: the real data and models NetDissect-Lite's scripts
download (``script/dlbroden.sh``, ``script/dlzoo_example.sh``), fetched safely.

``SOURCES`` is the one table of what can be fetched: URL, expected size and SHA-256. Where
the table has no hash (CSAIL publishes none), the SHA-256 is recorded at the first fetch into
``DIR/jaxdissect-fetch.json``, once the file proved good (the archive extracted, the
checkpoint read), and every later fetch into DIR (a new download, or ``--from``) must match
it. Downloads resume (``download``), archives are extracted safely (``archive``), and a
checkpoint is read without PyTorch before it is accepted.

What is already in DIR is checked, never trusted: a folder or file at the name fetched is
"already there" only when the manifest records its fetch (and a file still has its hash),
and is otherwise refused, untouched. A zip already in DIR is taken as the user's (checked,
used, never removed); only a download's own partial file, recorded by its state file, is
removed or renamed. Every file is written anew and renamed into place, so a link planted in
DIR is replaced, never written through.

Leftovers: once NAME is fetched (now, or found already there), what earlier runs left for it
in DIR is named on stderr, one line each: a download's ``FILE.part`` and ``FILE.part.json``
(an interrupted download, then fetched another way: ``--from``, a zip put in DIR), removed when
the state file records the partial file and otherwise kept; and the temporary
``.FILE.XXXXXXXX.partial`` of a killed write of the manifest, a state file or a checkpoint,
never removed (nothing records it). A failed download's pair is not a leftover: the next
run of the same command resumes it. One fetch of NAME into DIR runs at a time: it holds the
lock file ``DIR/.FILE.lock`` while it runs (a second is refused in one line), so no run takes
another's download for a leftover, or writes into its partial file.

A downloaded file that fails a check (size, SHA-256, a corrupt zip, an unreadable
checkpoint) is reported under the name it was fetched as (``DIR/FILE``), not its partial
file's, saying whether its bytes were removed or where they are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.parse
from pathlib import Path

from jaxdissect.config import check_paths
from jaxdissect.data.archive import ArchiveError, extract_zip
from jaxdissect.data.download import (
    discard_partial,
    download,
    partial_path,
    report_unneeded_partial,
    state_path,
)
from jaxdissect.errors import DissectError
from jaxdissect.outdir import held_lock, replace_file, report_leftovers, sha256_file

MANIFEST = "jaxdissect-fetch.json"
GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Source:
    """One fetchable file: ``folder`` is the folder its zip extracts to, or None for a file
    kept as is (a checkpoint)."""

    url: str
    filename: str
    size: int | None
    sha256: str | None
    folder: str | None
    max_bytes: int
    about: str


SOURCES = {
    "broden1_224": Source(
        "http://netdissect.csail.mit.edu/data/broden1_224.zip",
        "broden1_224.zip",
        None,  # no published size or hash: recorded at the first fetch
        None,
        "broden1_224",
        8 * GIB,
        "Broden, 63,305 images at 224 px, labels at 112 px (ResNet, VGG)",
    ),
    "broden1_227": Source(
        "http://netdissect.csail.mit.edu/data/broden1_227.zip",
        "broden1_227.zip",
        None,
        None,
        "broden1_227",
        8 * GIB,
        "Broden at 227 px, labels at 113 px (AlexNet)",
    ),
    "resnet18_places365": Source(
        "http://places2.csail.mit.edu/models_places365/resnet18_places365.pth.tar",
        "resnet18_places365.pth.tar",
        None,
        None,
        None,
        1 * GIB,
        "ResNet-18 trained on Places365 ({'state_dict': ...}, 'module.' names): zoo:resnet18",
    ),
}


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What ``fetch`` did: ``path`` (the folder or file), its archive's SHA-256, whether the
    hash was recorded now (first fetch) and whether the path was already there."""

    path: Path
    sha256: str | None
    recorded: bool
    already: bool
    seconds: float


def _manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if path.exists() and not path.is_file():  # a FIFO would block the read for ever
        raise DissectError(f"{path}: not a file; move it away")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as error:
        raise DissectError(f"{path}: unreadable ({error})") from None
    if not (isinstance(manifest, dict) and all(isinstance(e, dict) for e in manifest.values())):
        raise DissectError(f"{path}: expected a JSON object of fetched names and their records")
    return manifest


def _record(directory: Path, name: str, entry: dict) -> None:
    manifest = _manifest(directory) | {name: entry}
    replace_file(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def expected_sha256(name: str, directory: Path) -> tuple[str | None, str]:
    """The SHA-256 a file fetched as ``name`` must have (the table's, else the one recorded
    in DIR), and where it comes from."""
    if SOURCES[name].sha256 is not None:
        return SOURCES[name].sha256, "jaxdissect.data.fetch.SOURCES"
    recorded = _manifest(directory).get(name, {}).get("sha256")
    if recorded is not None and not isinstance(recorded, str):
        raise DissectError(
            f"{directory / MANIFEST}: {name}'s sha256 {recorded!r} is not a SHA-256 (jaxdissect "
            "did not write it); move it away"
        )
    return recorded, f"recorded at the first fetch in {directory / MANIFEST}"


def _verify(path: Path, name: str, directory: Path, what: str) -> tuple[str, bool]:
    """The file's SHA-256, and True when it is to be recorded (no hash known yet)."""
    source = SOURCES[name]
    if not path.is_file():  # a FIFO would block the read for ever
        raise DissectError(f"{what}: not a file")
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        raise DissectError(f"{what}: {size} bytes, expected {source.size} for {name}")
    digest = sha256_file(path)
    expected, origin = expected_sha256(name, directory)
    if expected is not None and digest != expected:
        raise DissectError(f"{what}: SHA-256 {digest} differs from {expected} ({origin})")
    return digest, expected is None


def _check_broden(folder: Path) -> None:
    missing = [f for f in ("index.csv", "category.csv", "label.csv") if not (folder / f).is_file()]
    if missing:
        raise ArchiveError(f"not a Broden folder: no {', '.join(missing)} at its top")


def _check_checkpoint(path: Path) -> None:
    from jaxdissect.models.torch_weights import load_state_dict

    state_dict = load_state_dict(path)
    if "fc.weight" not in state_dict:
        raise DissectError(f"{path}: no fc.weight: not a torchvision ResNet checkpoint")


def fetch(
    name: str,
    directory: str | Path,
    *,
    url: str | None = None,
    from_file: str | Path | None = None,
    keep_archive: bool = False,
    retries: int = 5,
    backoff_s: float = 1.0,
    progress: bool = True,
) -> Fetched:
    """Fetches ``name`` (a key of ``SOURCES``) into ``directory``.

    Args:
      name: what to fetch.
      directory: where the folder (``DIR/broden1_224``) or file goes; created if needed.
      url: another URL for the same file (a mirror; the same checks apply).
      from_file: a file the user already has, used instead of downloading (offline).
      keep_archive: keep a downloaded zip after extracting it (default: removed, as
        NetDissect-Lite's script does).
      retries, backoff_s: see ``download``.
      progress: progress bars on stderr.

    Returns:
      A ``Fetched``; nothing is downloaded when the folder or file is already there.

    Raises:
      DissectError: an unknown name, a failed download (the partial file kept for resuming),
        a size or hash mismatch, an unsafe or corrupt archive, an unreadable checkpoint.
    """
    check_paths(directory=directory, from_file=from_file)
    if name not in SOURCES:
        raise DissectError(f"nothing named {name!r} to fetch; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DissectError(
                f"`url` {url!r}: not an http:// or https:// URL with a host",
                arguments=("url",),
            )
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():  # mkdir said only "File exists"
        raise DissectError(f"{directory}: exists and is not a folder to fetch into")
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / f".{source.filename}.lock"
    busy = f"{directory}: fetching {name} in another process (pid {{pid}}); wait for it"
    with held_lock(lock, busy, f"{lock}: cannot open the fetch's lock", remove=True):
        return _fetch_locked(name, source, directory, url, from_file, keep_archive, retries,
                             backoff_s, progress)  # fmt: skip


def _fetch_locked(name, source, directory, url, from_file, keep_archive, retries, backoff_s,
                  progress) -> Fetched:  # fmt: skip
    """``fetch``, its arguments checked, holding DIR's lock for ``name``."""
    start = time.perf_counter()
    final = directory / (source.folder or source.filename)
    if final.exists() or final.is_symlink():
        sha256 = _fetched_sha256(name, source, directory, final)
        _report_leftovers(directory, source, final)
        return Fetched(final, sha256, False, True, time.perf_counter() - start)

    archive, sha256, record, downloaded_from = _obtain(
        name, directory, url, from_file, retries, backoff_s, progress
    )
    size = archive.stat().st_size
    _install(source, archive, final, downloaded_from, record, keep_archive, progress)
    origin = str(from_file) if from_file is not None else url or source.url
    _record(directory, name, {"sha256": sha256, "size": size, "from": origin})
    _report_leftovers(directory, source, final)
    return Fetched(final, sha256, record, False, time.perf_counter() - start)


def _report_leftovers(directory: Path, source: Source, final: Path) -> None:
    """Names on stderr what earlier runs left in DIR for ``source``, now that ``final`` is
    there (see the module docstring: a download's partial file and state, removed only when
    ours; temporary files of a killed write, never removed)."""
    target = directory / source.filename
    report_unneeded_partial(target, f"{final} is fetched")
    for name in (MANIFEST, source.filename, state_path(target).name):
        report_leftovers(directory, name)


def _fetched_sha256(name: str, source: Source, directory: Path, final: Path) -> str | None:
    """The SHA-256 of what an earlier fetch left at ``final``, after checking it: a file
    must match the hash known for ``name``, and a folder must be recorded as fetched into
    DIR; anything else there is refused, and kept."""
    # A file's record must hold its hash: a forged one without (null) checked nothing.
    unchecked = source.folder is None and expected_sha256(name, directory)[0] is None
    if unchecked or (name not in _manifest(directory) and source.folder is not None):
        hint = " (a folder you unpacked yourself is read as it is)" if source.folder else ""
        raise DissectError(
            f"{final}: already there, but {directory / MANIFEST} records no fetch of {name} "
            f"to check it against; move it away and fetch again{hint}"
        )
    if source.folder is None:
        return _verify(final, name, directory, str(final))[0]
    try:
        _check_broden(final)
    except ArchiveError as error:
        raise DissectError(f"{final}: {error}; remove it or choose another --dir") from None
    return _manifest(directory)[name].get("sha256")


def _obtain(name, directory, url, from_file, retries, backoff_s, progress):
    """The verified file to install: (path, sha256, whether its hash is new, the URL it was
    downloaded from by this call, else None)."""
    source = SOURCES[name]
    archive = Path(from_file) if from_file is not None else directory / source.filename
    if from_file is not None and not archive.is_file():
        raise DissectError(
            f"--from {archive}: {'not a file' if archive.exists() else 'no such file'}"
        )
    if archive.is_file():  # the user's file, or a zip kept by --keep-archive: never removed
        return archive, *_verify(archive, name, directory, str(archive)), None
    url = url or source.url
    part = download(
        url,
        archive,
        max_bytes=source.max_bytes,
        retries=retries,
        backoff_s=backoff_s,
        progress=progress,
    )
    try:
        sha256, record = _verify(part, name, directory, str(part))
    except DissectError as error:
        discard_partial(archive)
        raise _failed_download(error, archive, url, kept=False) from None
    return part, sha256, record, url


def _failed_download(error: DissectError, target: Path, url: str, kept: bool) -> DissectError:
    """``error`` about a downloaded file that failed a check, naming it as the file fetched
    (``target``) rather than the partial file it was checked as, and where its bytes are."""
    part = partial_path(target)
    reason = str(error).removeprefix(f"{part}: ")
    where = f"its bytes are kept in {part}" if kept else "the download was removed"
    return DissectError(f"{target} (downloaded from {url}): {reason}; {where}")


def _install(source, archive, final, downloaded_from, record, keep_archive, progress):
    """Extracts a Broden zip to ``final``, or puts a checkpoint there once it reads as one.

    A download (``archive``, the verified partial file, from the URL ``downloaded_from``)
    is then kept as the zip (``keep_archive``) or removed, and removed as well when a new
    one proves bad."""
    target = final.with_name(source.filename)
    try:
        if source.folder is not None:
            extract_zip(
                archive,
                final,
                max_bytes=source.max_bytes,
                check=_check_broden,
                progress=progress,
            )
        else:
            _check_checkpoint(archive)
    except DissectError as error:
        # The file's own faults name it first (a corrupt zip, an unreadable checkpoint);
        # others (a staging folder in the way) leave a download that may be good alone.
        if downloaded_from is None or not str(error).startswith(f"{archive}: "):
            raise
        if record:  # never proved good: the next run downloads afresh
            discard_partial(target)
        raise _failed_download(error, target, downloaded_from, kept=not record) from None
    if source.folder is None and downloaded_from is None:  # copied beside the other files
        replace_file(final, archive.read_bytes())
    elif downloaded_from is not None and (keep_archive or source.folder is None):
        os.replace(archive, target)
    if downloaded_from is not None:  # this call's; an earlier run's is a leftover, named
        discard_partial(target)


def describe() -> str:
    """The fetchable names, one a line."""
    return "\n".join(f"{name}: {source.about}" for name, source in SOURCES.items())
