"""``jaxdissect fetch NAME --dir DIR``: the real data and models NetDissect-Lite's scripts
download (``script/dlbroden.sh``, ``script/dlzoo_example.sh``), fetched safely.

``SOURCES`` is the one table of what can be fetched: URL, expected size and SHA-256. Where
the table has no hash (CSAIL publishes none), the SHA-256 is recorded at the first fetch into
``DIR/jaxdissect-fetch.json``, once the file proved good (the archive extracted, the
checkpoint read), and every later fetch into DIR (a new download, or ``--from``) must match
it. Downloads resume (``download``), archives are extracted safely (``archive``), and a
checkpoint is read without PyTorch before it is accepted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import urllib.parse
from pathlib import Path

from jaxdissect.data.archive import ArchiveError, extract_zip
from jaxdissect.data.download import discard_partial, download, partial_path
from jaxdissect.errors import DissectError

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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise DissectError(f"{path}: unreadable ({error})") from None
    if not isinstance(manifest, dict):
        raise DissectError(f"{path}: expected a JSON object of fetched names")
    return manifest


def _record(directory: Path, name: str, entry: dict) -> None:
    manifest = _manifest(directory) | {name: entry}
    temporary = directory / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, directory / MANIFEST)


def expected_sha256(name: str, directory: Path) -> tuple[str | None, str]:
    """The SHA-256 a file fetched as ``name`` must have (the table's, else the one recorded
    in DIR), and where it comes from."""
    if SOURCES[name].sha256 is not None:
        return SOURCES[name].sha256, "jaxdissect.data.fetch.SOURCES"
    recorded = _manifest(directory).get(name, {}).get("sha256")
    return recorded, f"recorded at the first fetch in {directory / MANIFEST}"


def _verify(path: Path, name: str, directory: Path, what: str) -> tuple[str, bool]:
    """The file's SHA-256, and True when it is to be recorded (no hash known yet)."""
    source = SOURCES[name]
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
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    final = directory / (source.folder or source.filename)
    if final.exists():
        sha256 = _fetched_sha256(name, source, directory, final)
        return Fetched(final, sha256, False, True, time.perf_counter() - start)

    archive, sha256, record, downloaded = _obtain(
        name, directory, url, from_file, retries, backoff_s, progress
    )
    size = archive.stat().st_size
    _install(source, archive, final, from_file, downloaded, record, keep_archive, progress)
    if record:
        origin = str(from_file) if from_file is not None else url or source.url
        _record(directory, name, {"sha256": sha256, "size": size, "from": origin})
    return Fetched(final, sha256, record, False, time.perf_counter() - start)


def _fetched_sha256(name: str, source: Source, directory: Path, final: Path) -> str | None:
    """The SHA-256 of what an earlier fetch left at ``final``, after checking it."""
    if source.folder is None:
        return _verify(final, name, directory, str(final))[0]
    try:
        _check_broden(final)
    except ArchiveError as error:
        raise DissectError(f"{final}: {error}; remove it or choose another --dir") from None
    return _manifest(directory).get(name, {}).get("sha256")


def _obtain(name, directory, url, from_file, retries, backoff_s, progress):
    """The verified download or file to install: (path, sha256, whether to record it,
    whether it was downloaded)."""
    source = SOURCES[name]
    archive = directory / source.filename
    if from_file is not None:
        archive = Path(from_file)
        if not archive.is_file():
            raise DissectError(f"--from {archive}: no such file")
        return archive, *_verify(archive, name, directory, str(archive)), False
    if archive.is_file():  # downloaded and verified by an earlier run, not yet extracted
        return archive, *_verify(archive, name, directory, str(archive)), True
    part = download(
        url or source.url,
        archive,
        max_bytes=source.max_bytes,
        retries=retries,
        backoff_s=backoff_s,
        progress=progress,
    )
    try:
        sha256, record = _verify(part, name, directory, f"{url or source.url}")
    except DissectError as error:
        discard_partial(archive)
        raise DissectError(f"{error}; the download was removed") from None
    os.replace(part, archive)
    discard_partial(archive)
    return archive, sha256, record, True


def _install(source, archive, final, from_file, downloaded, record, keep_archive, progress):
    """Extracts a Broden zip to ``final``, or puts a checkpoint there, and checks it."""
    if source.folder is not None:
        try:
            extract_zip(
                archive,
                final,
                max_bytes=source.max_bytes,
                check=_check_broden,
                progress=progress,
            )
        except ArchiveError as error:
            if downloaded and record:  # never proved good: the next run downloads afresh
                archive.unlink()
                raise DissectError(f"{error}; removed {archive}") from None
            raise
        if downloaded and not keep_archive:
            archive.unlink()
        return
    if from_file is not None:  # copied beside the other fetched files, atomically
        part = partial_path(final)
        shutil.copyfile(archive, part)
        os.replace(part, final)
    try:
        _check_checkpoint(final)
    except DissectError:
        if record:
            final.unlink()
        raise


def describe() -> str:
    """The fetchable names, one a line."""
    return "\n".join(f"{name}: {source.about}" for name, source in SOURCES.items())
