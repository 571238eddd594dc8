"""Decode a Broden folder's label planes once into memory-mapped arrays.

Decoding PNGs dominates a dissection's time, so the planes are decoded once into
``<cache>/<key>/planes.npy`` (N, P, sh, sw) uint16 and ``image_labels.npy`` (N, M) int32,
then read batch by batch through ``np.load(mmap_mode="r")``. The key hashes the CSV files'
bytes, the selected categories and each plane file's path, size and mtime, so an edited
dataset gets a new cache. The folder appears under its final name only when complete.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from jaxdissect.data.broden import BrodenDataset
from jaxdissect.errors import BrodenFormatError

CACHE_VERSION = 1


class LabelArrays(NamedTuple):
    """Decoded labels of every image, memory-mapped.

    Attributes:
      planes: (N, P, sh, sw) uint16 label numbers of the pixel-level planes (0 = none).
      image_labels: (N, M) int32 image-level label numbers (0 = none); M >= 1.
      max_distinct: the largest number of distinct nonzero pixel labels in one image.
    """

    planes: np.ndarray
    image_labels: np.ndarray
    max_distinct: int


def default_cache_root() -> Path:
    """``$JAXDISSECT_CACHE``, else ``$XDG_CACHE_HOME/jaxdissect``, else ``~/.cache/jaxdissect``."""
    if "JAXDISSECT_CACHE" in os.environ:
        return Path(os.environ["JAXDISSECT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxdissect"


def cache_key(dataset: BrodenDataset) -> str:
    """Hash of everything the decoded arrays depend on."""
    digest = hashlib.sha256(f"jaxdissect-labels-v{CACHE_VERSION}\n".encode())
    digest.update(json.dumps(dataset.categories).encode())
    csvs = ["index.csv", "label.csv", "category.csv"]
    csvs += [f"c_{c}.csv" for c in dataset.categories]
    for name in csvs:
        digest.update(name.encode() + b"\0" + (dataset.directory / name).read_bytes())
    image_root = dataset.directory / "images"
    for planes in dataset.pixel_planes:
        for plane in planes:
            try:
                stat = (image_root / plane).stat()
                digest.update(f"{plane}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{plane}\0missing\n".encode())
    return digest.hexdigest()[:24]


def decode_plane(path: Path, label_size: tuple[int, int], num_labels: int) -> np.ndarray:
    """One PNG label plane as (sh, sw) uint16 label numbers (R + 256 * G)."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            pixels = np.asarray(image)
    except FileNotFoundError:
        raise BrodenFormatError(f"{path}: label plane not found") from None
    except OSError as error:
        raise BrodenFormatError(f"{path}: cannot decode label plane ({error})") from None
    if mode in ("RGB", "RGBA"):
        labels = pixels[..., 0].astype(np.int64) + 256 * pixels[..., 1].astype(np.int64)
    elif mode in ("L", "I;16", "I"):
        labels = pixels.astype(np.int64)
    else:
        raise BrodenFormatError(f"{path}: label planes must be RGB(A) or grayscale, not {mode}")
    if labels.shape != tuple(label_size):
        raise BrodenFormatError(
            f"{path}: plane is {labels.shape[0]}x{labels.shape[1]} but index.csv declares "
            f"sh x sw = {label_size[0]}x{label_size[1]}"
        )
    if labels.size and (labels.max() >= num_labels or labels.min() < 0):
        raise BrodenFormatError(
            f"{path}: label {int(labels.max())} is not in label.csv "
            f"(labels run to {num_labels - 1})"
        )
    return labels.astype(np.uint16)


def _decode_image(dataset: BrodenDataset, index: int, planes_out: np.ndarray) -> int:
    """Decodes image ``index``'s planes into ``planes_out[index]``; returns its distinct labels."""
    image_root = dataset.directory / "images"
    for slot, plane in enumerate(dataset.pixel_planes[index]):
        planes_out[index, slot] = decode_plane(
            image_root / plane, dataset.label_size, dataset.num_labels
        )
    present = np.unique(planes_out[index])
    return int(np.count_nonzero(present))


def _write_arrays(dataset: BrodenDataset, folder: Path, progress: bool) -> None:
    num_images = dataset.num_images
    num_planes = max(1, max(len(p) for p in dataset.pixel_planes))
    num_image_labels = max(1, max(len(m) for m in dataset.image_labels))
    planes = np.lib.format.open_memmap(
        folder / "planes.npy",
        mode="w+",
        dtype=np.uint16,
        shape=(num_images, num_planes, *dataset.label_size),
    )
    image_labels = np.zeros((num_images, num_image_labels), np.int32)
    for i, labels in enumerate(dataset.image_labels):
        image_labels[i, : len(labels)] = labels
    np.save(folder / "image_labels.npy", image_labels)
    workers = min(32, (os.cpu_count() or 1) * 2)
    max_distinct = 0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(
            functools.partial(_decode_image, dataset, planes_out=planes), range(num_images)
        )
        for distinct in tqdm(
            jobs,
            total=num_images,
            desc="decoding label planes",
            unit="img",
            disable=not progress,
        ):
            max_distinct = max(max_distinct, distinct)
    planes.flush()
    meta = {"version": CACHE_VERSION, "images": num_images, "max_distinct": max_distinct}
    (folder / "meta.json").write_text(json.dumps(meta))


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
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    folder = root / cache_key(dataset)
    if not (folder / "meta.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            _write_arrays(dataset, staging, progress)
            try:
                staging.rename(folder)
            except OSError:
                if not (folder / "meta.json").is_file():  # not a concurrent run's success
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    meta = json.loads((folder / "meta.json").read_text())
    return LabelArrays(
        planes=np.load(folder / "planes.npy", mmap_mode="r"),
        image_labels=np.load(folder / "image_labels.npy", mmap_mode="r"),
        max_distinct=int(meta["max_distinct"]),
    )
