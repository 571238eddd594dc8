"""Decode a Broden folder's label planes once into memory-mapped arrays.

Decoding PNGs dominates a dissection's time, so the planes are decoded once, and stored
compacted: each image's distinct labels become slots (slot 0 = unlabelled), so
``<cache>/<key>/slot_planes.npy`` is (N, P, sh, sw) uint8 slot indices and
``slot_labels.npy`` (N, S + 1) int32 the label of each slot; ``image_labels.npy`` is
(N, M) int32. Batches are read through ``np.load(mmap_mode="r")``; the label planes are
``slot_labels[slot_planes]``, exactly. The key hashes the CSV files'
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

CACHE_VERSION = 2


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


MAX_SLOTS = 255  # slot indices are stored as uint8


def _decode_image(dataset: BrodenDataset, index: int, slot_planes: np.ndarray) -> np.ndarray:
    """Decodes image ``index``'s planes into ``slot_planes[index]``; returns its slot labels."""
    image_root = dataset.directory / "images"
    planes = [
        decode_plane(image_root / plane, dataset.label_size, dataset.num_labels)
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
    workers = min(32, (os.cpu_count() or 1) * 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(
            functools.partial(_decode_image, dataset, slot_planes=slot_planes),
            range(num_images),
        )
        per_image = list(
            tqdm(
                jobs,
                total=num_images,
                desc="decoding label planes",
                unit="img",
                disable=not progress,
            )
        )
    slot_planes.flush()
    slot_labels = np.zeros((num_images, max(len(s) for s in per_image)), np.int32)
    for i, labels in enumerate(per_image):
        slot_labels[i, : len(labels)] = labels
    np.save(folder / "slot_labels.npy", slot_labels)
    meta = {"version": CACHE_VERSION, "images": num_images}
    (folder / "meta.json").write_text(json.dumps(meta))


def _image_key(dataset: BrodenDataset) -> str:
    digest = hashlib.sha256(f"jaxdissect-images-v{CACHE_VERSION}\n".encode())
    digest.update((dataset.directory / "index.csv").read_bytes())
    for image in dataset.images:
        try:
            stat = (dataset.directory / "images" / image).stat()
            digest.update(f"{image}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{image}\0missing\n".encode())
    return "images-" + digest.hexdigest()[:24]


def decode_image(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """One image as (ih, iw, 3) uint8 RGB, checked against index.csv's size."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise BrodenFormatError(f"{path}: image not found") from None
    except OSError as error:
        raise BrodenFormatError(f"{path}: cannot decode image ({error})") from None
    if pixels.shape[:2] != tuple(image_size):
        raise BrodenFormatError(
            f"{path}: image is {pixels.shape[0]}x{pixels.shape[1]} but index.csv declares "
            f"ih x iw = {image_size[0]}x{image_size[1]}"
        )
    return pixels


def cached_folder(root: Path, key: str, write) -> Path:
    """The cache folder ``root/key``, written by ``write(folder)`` into a staging folder and
    renamed into place on success."""
    folder = root / key
    if not (folder / "meta.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            write(staging)
            try:
                staging.rename(folder)
            except OSError:
                if not (folder / "meta.json").is_file():  # not a concurrent run's success
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_image_array(
    dataset: BrodenDataset, cache_root: str | Path | None = None, progress: bool = True
) -> np.ndarray:
    """The dataset's images as a read-only (N, ih, iw, 3) uint8 memory map, decoded into the
    cache on first use (for running a model over the probe set)."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()

    def write(folder: Path) -> None:
        images = np.lib.format.open_memmap(
            folder / "images.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(dataset.num_images, *dataset.image_size, 3),
        )

        def decode(index: int) -> None:
            images[index] = decode_image(
                dataset.directory / "images" / dataset.images[index], dataset.image_size
            )

        workers = min(32, (os.cpu_count() or 1) * 2)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for _ in tqdm(
                pool.map(decode, range(dataset.num_images)),
                total=dataset.num_images,
                desc="decoding images",
                unit="img",
                disable=not progress,
            ):
                pass
        images.flush()
        (folder / "meta.json").write_text(json.dumps({"version": CACHE_VERSION}))

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
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    folder = cached_folder(
        root, cache_key(dataset), lambda staging: _write_arrays(dataset, staging, progress)
    )
    return LabelArrays(
        slot_planes=np.load(folder / "slot_planes.npy", mmap_mode="r"),
        slot_labels=np.load(folder / "slot_labels.npy", mmap_mode="r"),
        image_labels=np.load(folder / "image_labels.npy", mmap_mode="r"),
    )
