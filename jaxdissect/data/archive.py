"""Safe zip extraction: every entry is checked before anything is written, and the result
appears all at once.

Refused, with one line naming the entry: absolute paths, drive letters, backslashes and
``..`` components; symbolic links, device files, FIFOs and sockets (any Unix mode other than
a regular file or a folder; zip has no hard links other than such entries); encrypted
entries; a name that is both a file and a folder; more than ``max_bytes`` in total; an entry
(or the archive) whose uncompressed size exceeds ``max_ratio`` times its compressed size.
Decompression is counted as it goes, so a header that lies about sizes gains nothing.

Entries are written into a staging folder beside the destination, which is renamed into
place only when every entry was read with its CRC checked: the destination is complete or
absent. A corrupt archive (CRC mismatch, truncation) is refused and the staging folder
removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from jaxdissect.errors import DissectError

MAX_RATIO = 100.0  # deflate's ceiling is about 1032; Broden's JPEGs and PNGs are near 1
RATIO_MIN_BYTES = 1 << 20  # below this, a high ratio cannot fill a disk
STAGING_MARK = ".jaxdissect-staging"  # proves a leftover staging folder is ours to remove
_DRIVE = re.compile(r"^[A-Za-z]:")
_UNIX = 3  # ZipInfo.create_system of archives made on Unix


class ArchiveError(DissectError):
    """An archive refused as unsafe or corrupt."""


def inflates_beyond(info: zipfile.ZipInfo, max_ratio: float = MAX_RATIO) -> bool:
    """Whether a zip member of over RATIO_MIN_BYTES expands more than ``max_ratio``-fold."""
    return info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(
        info.compress_size, 1
    )


def _entry_kind(info: zipfile.ZipInfo) -> str:
    """ "file" or "folder", or raises for any other Unix file type."""
    mode = info.external_attr >> 16
    if info.create_system == _UNIX and stat.S_IFMT(mode):  # 0: permissions only
        for test, what in (
            (stat.S_ISLNK, "a symbolic link"),
            (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"),
            (stat.S_ISFIFO, "a FIFO"),
            (stat.S_ISSOCK, "a socket"),
        ):
            if test(mode):
                raise ArchiveError(f"entry {info.filename!r} is {what}")
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ArchiveError(f"entry {info.filename!r} has file type {oct(stat.S_IFMT(mode))}")
        if stat.S_ISDIR(mode):
            return "folder"
    return "folder" if info.filename.endswith("/") else "file"


def _entry_parts(name: str) -> tuple[str, ...]:
    if "\\" in name or "\0" in name or name.startswith("/") or _DRIVE.match(name):
        raise ArchiveError(f"entry {name!r} is an absolute or non-POSIX path")
    parts = PurePosixPath(name).parts
    if not parts or any(part in ("..", ".") for part in parts):
        raise ArchiveError(f"entry {name!r} leaves the destination (.. or . in its path)")
    return parts


def plan(archive: zipfile.ZipFile, max_bytes: int, max_ratio: float):
    """The entries to write as (info, parts, kind), after every check; the archive's single
    top folder is dropped from the parts when every entry lies in it."""
    entries, files, folders, seen = [], set(), set(), set()
    total = compressed = 0
    for info in archive.infolist():
        parts = _entry_parts(info.filename)
        kind = _entry_kind(info)
        if info.flag_bits & 0x1:
            raise ArchiveError(f"entry {info.filename!r} is encrypted")
        if parts in seen:
            raise ArchiveError(f"entry {info.filename!r} appears twice")
        seen.add(parts)
        if kind == "file":
            files.add(parts)
            folders.update(parts[:i] for i in range(1, len(parts)))
            total += info.file_size
            compressed += info.compress_size
            if inflates_beyond(info, max_ratio):
                raise ArchiveError(
                    f"entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}"
                    f"-fold, above the bound of {max_ratio:g} (a zip bomb?)"
                )
        else:
            folders.update(parts[:i] for i in range(1, len(parts) + 1))
        entries.append((info, parts, kind))
    if files & folders:
        raise ArchiveError(f"entry {'/'.join(min(files & folders))!r} is both a file and a folder")
    if total > max_bytes:
        raise ArchiveError(f"holds {total} bytes uncompressed, more than the {max_bytes} allowed")
    if total > RATIO_MIN_BYTES and total > max_ratio * max(compressed, 1):
        raise ArchiveError(f"expands {total / max(compressed, 1):.0f}-fold, above {max_ratio:g}")
    tops = {parts[0] for _, parts, _ in entries}
    if len(tops) == 1 and all(len(p) > 1 or k == "folder" for _, p, k in entries):
        entries = [(info, parts[1:], kind) for info, parts, kind in entries if len(parts) > 1]
    return entries, total


def remove_staging(staging: Path) -> None:
    """Removes a staging folder this module made (it holds ``STAGING_MARK``)."""
    if (staging / STAGING_MARK).is_file():
        shutil.rmtree(staging)


def extract_zip(
    source: Path,
    destination: Path,
    *,
    max_bytes: int,
    max_ratio: float = MAX_RATIO,
    check: Callable[[Path], None] | None = None,
    progress: bool = True,
) -> Path:
    """Extracts the zip ``source`` into the new folder ``destination``.

    Args:
      source: the archive.
      destination: must not exist; its parent must. A single top folder in the archive
        (``broden1_224/...``) becomes ``destination`` itself.
      max_bytes: the most uncompressed bytes allowed in total.
      max_ratio: the highest uncompressed-to-compressed ratio allowed per entry and overall.
      check: called on the complete staging folder before it is renamed; raises to refuse.
      progress: a progress bar in bytes.

    Returns:
      ``destination``.

    Raises:
      ArchiveError: an unsafe or corrupt archive (nothing is left behind).
    """
    if destination.exists():
        raise DissectError(f"{destination}: already exists")
    staging = destination.with_name(f".{destination.name}.staging")
    remove_staging(staging)
    if staging.exists():
        raise DissectError(f"{staging}: exists and is not a jaxdissect staging folder")
    try:
        with zipfile.ZipFile(source) as archive:
            entries, total = plan(archive, max_bytes, max_ratio)
            staging.mkdir()
            (staging / STAGING_MARK).touch()
            _write_entries(archive, entries, staging, max_bytes, total, progress)
        if check is not None:
            check(staging)
        (staging / STAGING_MARK).unlink()
        os.rename(staging, destination)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        _cleanup(staging)
        raise ArchiveError(f"{source}: corrupt or truncated zip archive ({error})") from None
    except ArchiveError as error:
        _cleanup(staging)
        raise ArchiveError(f"{source}: {error}") from None
    except BaseException:
        _cleanup(staging)
        raise
    return destination


def _cleanup(staging: Path) -> None:
    if staging.exists():
        (staging / STAGING_MARK).touch()  # ours: made above, or renamed away
        remove_staging(staging)


def _write_entries(archive, entries, staging: Path, max_bytes: int, total: int, progress: bool):
    bar = None
    if progress:
        from jaxdissect.progress import progress_bar

        bar = progress_bar(
            desc="extracting", total=total, unit="B", unit_scale=True, unit_divisor=1024
        )
    written = 0
    with bar if bar is not None else contextlib.nullcontext():
        for info, parts, kind in entries:
            path = staging.joinpath(*parts)
            if kind == "folder":
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as entry, open(path, "xb") as out:
                while chunk := entry.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise ArchiveError(f"expands past the {max_bytes} bytes allowed")
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
