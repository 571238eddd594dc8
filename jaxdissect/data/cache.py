"""Decode a Broden folder's label planes once into memory-mapped arrays.

Decoding PNGs dominates a dissection's time, so the planes are decoded once, and stored
compacted: each image's distinct labels become slots (slot 0 = unlabelled), so
``<cache>/<key>/slot_planes.npy`` is (N, P, sh, sw) uint8 slot indices and
``slot_labels.npy`` (N, S + 1) int32 the label of each slot; ``image_labels.npy`` is
(N, M) int32. Batches are read through ``np.load(mmap_mode="r")``; the label planes are
``slot_labels[slot_planes]``, exactly.

The key hashes the CSV files' bytes, the selected categories and, per plane file, its path,
size, modification time, status-change time and inode (``os.stat``, following links): a
file rewritten in place changes its ctime even where its mtime is restored, and a warm run
reads no plane. A folder is built under a temporary name beside its final one and renamed
into place once complete with ``manifest.json``, which records each file's size and CRC-32;
every open checks them, and a folder that fails (a flipped byte, a truncated or missing
file) is reported on stderr, set aside and rebuilt.

A build that fails or is stopped removes its temporary ``<cache>/.partial-XXXXXXXX`` folder
(SIGTERM, when it has its default action, is turned into an exception in the main thread for
the build, then sent again once the folder is gone). A build killed outright (SIGKILL, a crash,
a power cut) cannot clean up: its folder holds ``.build.lock``, which the build keeps locked,
and the next build removes such a folder whose lock nobody holds, naming it on stderr (only
the files a build writes; a folder without the lock file is not a build's, and is left alone).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from jaxdissect.config import check_paths
from jaxdissect.data.broden import BrodenDataset, member_file
from jaxdissect.errors import BrodenFormatError, DissectError, notice
from jaxdissect.progress import progress_bar

CACHE_VERSION = 3
MANIFEST = "manifest.json"


class LabelArrays(NamedTuple):
    """Decoded labels of every image, memory-mapped, with pixel labels as slots.

    Attributes:
      slot_planes: (N, P, sh, sw) uint8 slot index of each pixel of each plane (0 = none).
      slot_labels: (N, S + 1) int32 label number of each slot (slot 0 and unused ones: 0).
      image_labels: (N, M) int32 image-level label numbers (0 = none); M >= 1.
    """

    slot_planes: np.ndarray
    slot_labels: np.ndarray
    image_labels: np.ndarray

    def label_planes(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, P, sh, sw) int32 label numbers of images [start, stop)."""
        slots = np.asarray(self.slot_planes[start:stop])
        labels = np.asarray(self.slot_labels[start:stop])
        flat = slots.reshape(len(slots), -1).astype(np.int64)
        return np.take_along_axis(labels, flat, axis=1).reshape(slots.shape)


def default_cache_root() -> Path:
    """``$JAXDISSECT_CACHE``, else ``$XDG_CACHE_HOME/jaxdissect``, else ``~/.cache/jaxdissect``.
    An empty variable counts as unset (as XDG's do): ``Path("")`` would be the current folder."""
    if os.environ.get("JAXDISSECT_CACHE"):
        return Path(os.environ["JAXDISSECT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxdissect"


def _cache_root(cache_root: str | Path | None) -> Path:
    """The cache folder a caller named (``cache_root``), else ``default_cache_root()``."""
    check_paths(cache_root=cache_root)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    if root.exists() and not root.is_dir():  # else mkdir's bare "File exists"
        name = "the cache folder" if cache_root is None else "`cache_root`"
        raise DissectError(f"{name} {root}: exists and is not a folder", arguments=("cache_root",))
    return root


def _stamps(root: Path, names) -> bytes:
    """What identifies each file root/name's content without reading it: its name, size,
    mtime, ctime and inode, one line per file. (``os.stat`` on strings: pathlib's objects
    cost more than the system calls, for the 32,000 planes of 8,000 images.)"""
    lines = []
    for name in names:
        try:
            st = os.stat(os.path.join(root, name))
            stamp = f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
        except OSError:
            stamp = "missing"
        lines.append(f"{name}\0{stamp}\n")
    return "".join(lines).encode()


def cache_key(dataset: BrodenDataset) -> str:
    """Hash of everything the decoded arrays depend on."""
    digest = hashlib.sha256(f"jaxdissect-labels-v{CACHE_VERSION}\n".encode())
    digest.update(json.dumps(dataset.categories).encode())
    csvs = ["index.csv", "label.csv", "category.csv"]
    csvs += [f"c_{c}.csv" for c in dataset.categories]
    for name in csvs:
        digest.update(name.encode() + b"\0" + (dataset.directory / name).read_bytes())
    planes = (plane for planes in dataset.pixel_planes for plane in planes)
    digest.update(_stamps(dataset.directory / "images", planes))
    return digest.hexdigest()[:24]


def probe_identity(dataset: BrodenDataset) -> str:
    """What tells one probe from another, wherever it is copied: the bytes of its CSVs and
    each image's name and size (``cache_key`` also stamps times and inodes, which a copy
    changes; reading every image would take minutes on the real Broden)."""
    digest = hashlib.sha256(b"jaxdissect-probe-v1\n")
    for name in [
        "index.csv",
        "label.csv",
        "category.csv",
        *(f"c_{c}.csv" for c in dataset.categories),
    ]:
        digest.update(name.encode() + b"\0" + (dataset.directory / name).read_bytes())
    for image in dataset.images:
        try:
            size = os.stat(dataset.directory / "images" / image).st_size
        except OSError:
            size = -1
        digest.update(f"{image}\0{size}\n".encode())
    return digest.hexdigest()[:24]


def _open_checked(path: Path, size: tuple[int, int], what: str) -> Image.Image:
    """Opens an image file, reading only its header, and checks its (height, width)."""
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise BrodenFormatError(f"{path}: {what} not found") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise BrodenFormatError(f"{path}: cannot decode {what} ({error})") from None
    width, height = image.size
    if (height, width) != tuple(size):
        image.close()
        sides = "sh x sw" if what == "label plane" else "ih x iw"
        raise BrodenFormatError(
            f"{path}: {what.split()[-1]} is {height}x{width} but index.csv declares "
            f"{sides} = {size[0]}x{size[1]}"
        )
    return image


def decode_plane(path: Path, label_size: tuple[int, int], num_labels: int) -> np.ndarray:
    """One PNG label plane as (sh, sw) int32 label numbers (R + 256 * G, or gray values)."""
    with _open_checked(path, label_size, "label plane") as image:
        mode = image.mode
        try:
            pixels = np.asarray(image)
        except (OSError, ValueError) as error:
            raise BrodenFormatError(f"{path}: cannot decode label plane ({error})") from None
    if mode in ("RGB", "RGBA"):
        if pixels[..., 2].any():  # label = R + 256 * G: B would be dropped
            raise BrodenFormatError(
                f"{path}: blue channel is not zero; label planes encode R + 256 * G only"
            )
        labels = pixels[..., 0].astype(np.int64) + 256 * pixels[..., 1].astype(np.int64)
    elif mode in ("L", "I;16", "I;16B", "I"):
        labels = pixels.astype(np.int64)
    else:
        raise BrodenFormatError(f"{path}: label planes must be RGB(A) or grayscale, not {mode}")
    if labels.size and (labels.max() >= num_labels or labels.min() < 0):
        culprit = int(labels.max() if labels.max() >= num_labels else labels.min())
        raise BrodenFormatError(
            f"{path}: label {culprit} is not in label.csv (labels run to {num_labels - 1})"
        )
    return labels.astype(np.int32)


MAX_SLOTS = 255  # slot indices are stored as uint8


def _decode_image(dataset: BrodenDataset, index: int, slot_planes: np.ndarray) -> np.ndarray:
    """Decodes image ``index``'s planes into ``slot_planes[index]``; returns its slot labels."""
    image_root = dataset.directory / "images"
    planes = [
        decode_plane(
            member_file(dataset, plane, index, "label plane"),
            dataset.label_size,
            dataset.num_labels,
        )
        for plane in dataset.pixel_planes[index]
    ]
    if not planes:
        return np.zeros((1,), np.int32)
    stack = np.stack(planes)
    # 0 goes first so that slot 0 always means "unlabelled".
    labels, inverse = np.unique(np.concatenate([[0], stack.ravel()]), return_inverse=True)
    if len(labels) - 1 > MAX_SLOTS:
        raise BrodenFormatError(
            f"{image_root / dataset.images[index]}: its planes carry {len(labels) - 1} "
            f"distinct labels; at most {MAX_SLOTS} per image are supported"
        )
    slot_planes[index, : len(planes)] = inverse[1:].reshape(stack.shape)
    return labels.astype(np.int32)


def _write_arrays(dataset: BrodenDataset, folder: Path, progress: bool) -> None:
    num_images = dataset.num_images
    num_planes = max(1, max(len(p) for p in dataset.pixel_planes))
    num_image_labels = max(1, max(len(m) for m in dataset.image_labels))
    _check_free_space(folder, num_images * num_planes * int(np.prod(dataset.label_size)))
    slot_planes = np.lib.format.open_memmap(
        folder / "slot_planes.npy",
        mode="w+",
        dtype=np.uint8,
        shape=(num_images, num_planes, *dataset.label_size),
    )
    image_labels = np.zeros((num_images, num_image_labels), np.int32)
    for i, labels in enumerate(dataset.image_labels):
        image_labels[i, : len(labels)] = labels
    np.save(folder / "image_labels.npy", image_labels)
    per_image = _map_images(
        functools.partial(_decode_image, dataset, slot_planes=slot_planes),
        num_images,
        "decoding label planes",
        progress,
    )
    slot_planes.flush()
    slot_labels = np.zeros((num_images, max(len(s) for s in per_image)), np.int32)
    for i, labels in enumerate(per_image):
        slot_labels[i, : len(labels)] = labels
    np.save(folder / "slot_labels.npy", slot_labels)


def _map_images(function, count: int, desc: str, progress: bool) -> list:
    """``[function(i) for i in range(count)]`` on a pool of threads, with a progress bar. On
    an exception (a bad file, or SIGTERM's in ``cached_folder``) the calls not yet started are
    cancelled, so that the build stops after the few images being decoded, not after all."""
    pool = concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) * 2))
    try:
        jobs = pool.map(function, range(count))
        return list(progress_bar(jobs, total=count, desc=desc, unit="img", disable=not progress))
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    finally:
        pool.shutdown()


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DissectError(
            f"{folder.parent}: the decoded cache needs {needed / 2**30:.2f} GiB, "
            f"only {free / 2**30:.2f} GiB free (choose another --cache)"
        )


def _image_key(dataset: BrodenDataset) -> str:
    digest = hashlib.sha256(f"jaxdissect-images-v{CACHE_VERSION}\n".encode())
    digest.update((dataset.directory / "index.csv").read_bytes())
    digest.update(_stamps(dataset.directory / "images", dataset.images))
    return "images-" + digest.hexdigest()[:24]


def decode_image(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """One image as (ih, iw, 3) uint8 RGB, checked against index.csv's size."""
    with _open_checked(path, image_size, "image") as image:
        try:
            return np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise BrodenFormatError(f"{path}: cannot decode image ({error})") from None


def _checksum(path: Path) -> int:
    """CRC-32 of a file's bytes (about 2 GB/s: a warm run's check costs little)."""
    crc, buffer = 0, bytearray(1 << 24)
    with open(path, "rb") as f:
        while count := f.readinto(buffer):
            crc = zlib.crc32(memoryview(buffer)[:count], crc)
    return crc


def _write_manifest(folder: Path) -> None:
    files = {
        path.name: [path.stat().st_size, _checksum(path)]
        for path in sorted(folder.iterdir())
        if path.is_file()
    }
    (folder / MANIFEST).write_text(json.dumps({"version": CACHE_VERSION, "files": files}))


def _verify(folder: Path) -> str | None:
    """None if ``folder`` holds exactly what its manifest records, else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if manifest["version"] != CACHE_VERSION or not files:
            return f"{folder / MANIFEST}: written by another version"
        for name, (size, crc) in files.items():
            path = folder / name
            if path.stat().st_size != size:
                return f"{path}: {path.stat().st_size} bytes, {size} written"
            if _checksum(path) != crc:
                return f"{path}: checksum differs from the one written"
    except FileNotFoundError as error:
        return f"{error.filename}: missing"
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:  # json's, too deep
        return f"{folder / MANIFEST}: unreadable ({error})"
    return None


# The files a cache folder is written with (besides its manifest).
CACHE_FILES = ("slot_planes.npy", "slot_labels.npy", "image_labels.npy", "images.npy")


def _remove_cache_folder(folder: Path) -> None:
    """Deletes the files ``folder``'s manifest lists and those a cache folder is written with
    (the cache wrote them), then the folder if that empties it; a folder holding anything else is kept, and named on stderr."""
    if folder.is_symlink() or not folder.is_dir():
        return
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        names = [name for name in files if isinstance(name, str)]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        names = []
    for name in {*names, *CACHE_FILES}:
        path = folder / name
        if "/" not in name and name not in (".", "..") and path.is_file():
            if not path.is_symlink():
                path.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        notice(f"kept {folder}: it holds files the cache did not record")


def cached_folder(root: Path, key: str, write) -> Path:
    """The cache folder ``root/key``, checked against its manifest, else (re)written.

    ``write(folder)`` fills a staging folder beside the final one; the manifest of
    checksums is added and the folder renamed into place, so a killed or concurrent build
    never leaves a folder that looks complete. A folder that fails its check is reported
    on stderr and rebuilt. A build that raises, or gets SIGTERM, removes its staging
    folder; the staging folders of builds killed outright are removed by the next build
    (see the module docstring).
    """
    folder = root / key
    problem = _verify(folder)
    if problem is None:
        return folder
    root.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        notice(f"cache {problem}; rebuilding {folder}")
        trash = Path(tempfile.mkdtemp(prefix=".stale-", dir=root))
        try:
            folder.rename(trash / key)
        except FileNotFoundError:  # a concurrent run set it aside first
            pass
        _remove_cache_folder(trash / key)
        with contextlib.suppress(OSError):
            trash.rmdir()
    _reclaim_killed_builds(root)
    with _sigterm_unwinds():
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            with _build_lock(staging):
                write(staging)
            _write_manifest(staging)
            try:
                staging.rename(folder)
            except OSError:
                if _verify(folder) is not None:  # not a concurrent run's success
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # made by mkdtemp above: ours
    return folder


BUILD_LOCK = ".build.lock"  # in a staging folder, locked by its build while it runs


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread while a cache folder is built."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """While the block runs, SIGTERM raises ``_Terminated``, so that the block's ``finally``
    clauses remove its staging folder; the signal is then sent again, and the process ends
    as SIGTERM's default action would have ended it. Only in the main thread (the only one
    Python runs handlers in) and only where SIGTERM has its default action: a program's own
    handler is left alone."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum, frame):
        raise _Terminated

    try:
        signal.signal(signal.SIGTERM, terminate)
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _build_lock(staging: Path):
    """Holds ``staging/BUILD_LOCK`` locked for the block (the kernel drops the lock when
    the process dies): the mark of a running build, which ``_reclaim_killed_builds`` finds
    unlocked once its process is gone. The file is unlinked before the lock is released, so
    no one takes the lock of a build that finished."""
    path = staging / BUILD_LOCK
    # Made under another name and locked before it is renamed into place: a build starting
    # meanwhile must never find the lock file unlocked, and take this build for a killed one.
    making = staging / f"{BUILD_LOCK}.new"
    handle = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.write(handle, f"{os.getpid()}\n".encode())
        os.rename(making, path)
        yield
        path.unlink()
    finally:
        os.close(handle)


def _reclaim_killed_builds(root: Path) -> None:
    """Removes the staging folders in ``root`` of builds killed outright: each holds
    ``BUILD_LOCK``, which nobody holds locked any more (a running build holds its own). Only
    the files a build writes are removed (``_remove_cache_folder``); a folder without the
    lock file, or whose lock file is a link, is not a build's and is left as it is."""
    for staging in sorted(root.glob(".partial-*")):
        if staging.is_symlink() or not staging.is_dir():
            continue  # a build makes a folder there, never a link
        lock = staging / BUILD_LOCK
        try:
            handle = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # no lock file: not a build's staging folder (or it just finished)
        with os.fdopen(handle, "r") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not os.path.samestat(os.fstat(handle), os.stat(lock, follow_symlinks=False)):
                    continue  # unlinked by a build that finished, then replaced
            except OSError:
                continue  # its build is running (or finished since)
            pid = file.read(16).strip()
            notice(
                f"removing {staging}, left by a cache build that was killed "
                f"(pid {pid if pid.isdigit() else 'unknown'})"
            )
            lock.unlink()
            _remove_cache_folder(staging)


def check_is_dataset(dataset) -> None:
    """A DissectError unless ``dataset`` is an opened probe set (a path is a common slip)."""
    if not isinstance(dataset, BrodenDataset):
        raise DissectError(
            f"`dataset` must be a BrodenDataset (open_broden(folder)), got "
            f"{type(dataset).__name__} {dataset!r}",
            arguments=("dataset",),
        )


def check_labels(labels, dataset: BrodenDataset) -> None:
    """Refuses ``labels`` that are not LabelArrays of the shapes ``dataset`` decodes to: a
    string met a TypeError deep in a kernel, and another category subset's labels were
    counted against this one's (the decoded shapes follow the planes and sizes)."""
    if not isinstance(labels, LabelArrays):
        raise DissectError(
            f"`labels` must be LabelArrays (load_label_arrays(dataset)), got "
            f"{type(labels).__name__}",
            arguments=("labels",),
        )
    planes = max(1, max(len(p) for p in dataset.pixel_planes))
    expected = (dataset.num_images, planes, *dataset.label_size)
    if tuple(np.shape(labels.slot_planes)) != expected or len(labels.image_labels) != len(
        labels.slot_planes
    ):
        raise DissectError(
            f"`labels` hold planes of shape {tuple(np.shape(labels.slot_planes))}, but "
            f"{dataset.directory} with categories {', '.join(dataset.categories)} decodes to "
            f"{expected}: give load_label_arrays of this dataset",
            arguments=("labels",),
        )


def load_image_array(
    dataset: BrodenDataset, cache_root: str | Path | None = None, progress: bool = True
) -> np.ndarray:
    """The dataset's images as a read-only (N, ih, iw, 3) uint8 memory map, decoded into the
    cache on first use (for running a model over the probe set)."""
    check_is_dataset(dataset)
    root = _cache_root(cache_root)

    def write(folder: Path) -> None:
        _check_free_space(folder, dataset.num_images * 3 * int(np.prod(dataset.image_size)))
        images = np.lib.format.open_memmap(
            folder / "images.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(dataset.num_images, *dataset.image_size, 3),
        )

        def decode(index: int) -> None:
            path = member_file(dataset, dataset.images[index], index, "image")
            images[index] = decode_image(path, dataset.image_size)

        _map_images(decode, dataset.num_images, "decoding images", progress)
        images.flush()

    return np.load(cached_folder(root, _image_key(dataset), write) / "images.npy", mmap_mode="r")


def load_label_arrays(
    dataset: BrodenDataset, cache_root: str | Path | None = None, progress: bool = True
) -> LabelArrays:
    """The dataset's decoded labels, decoding into the cache on first use.

    Args:
      dataset: from ``open_broden``.
      cache_root: where decoded datasets live (default: ``default_cache_root()``).
      progress: show a progress bar while decoding.

    Returns:
      LabelArrays whose arrays are read-only memory maps.
    """
    check_is_dataset(dataset)
    root = _cache_root(cache_root)
    folder = cached_folder(
        root, cache_key(dataset), lambda staging: _write_arrays(dataset, staging, progress)
    )
    return LabelArrays(
        slot_planes=np.load(folder / "slot_planes.npy", mmap_mode="r"),
        slot_labels=np.load(folder / "slot_labels.npy", mmap_mode="r"),
        image_labels=np.load(folder / "image_labels.npy", mmap_mode="r"),
    )
