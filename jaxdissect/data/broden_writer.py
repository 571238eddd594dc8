"""Writing a Broden-format folder: the inverse of ``open_broden``.

Used by the synthetic world and by tests to make probe sets that real Broden readers
(NetDissect, NetDissect-Lite, this package) read the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from jaxdissect.errors import DissectError
from jaxdissect.progress import progress_bar


@dataclasses.dataclass(frozen=True)
class ProbeImage:
    """One image of a probe set.

    Attributes:
      name: file stem relative to images/ (e.g. "synthetic/000001").
      pixels: (ih, iw, 3) uint8 RGB.
      planes: per pixel-level category, a list of (sh, sw) integer label planes.
      image_labels: per image-level category, label numbers (0 allowed: unlabelled).
    """

    name: str
    pixels: np.ndarray
    planes: Mapping[str, Sequence[np.ndarray]] = dataclasses.field(default_factory=dict)
    image_labels: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)


def encode_plane(labels: np.ndarray, argument: str = "labels", where: str = "") -> np.ndarray:
    """(sh, sw) label numbers < 65536 as an RGB image with label = R + 256 * G; a
    DissectError names ``argument`` (and ``where`` in it) for a number outside."""
    labels = np.asarray(labels)
    low, high = labels.min(initial=0), labels.max(initial=0)
    if low < 0 or high > 0xFFFF:
        raise DissectError(
            f"`{argument}`{where}: label numbers must lie in [0, 65535] to fit a PNG plane, "
            f"got {low if low < 0 else high}",
            arguments=(argument,),
        )
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    return rgb


def plain_decimal(value: float) -> str:
    """A float as digits with a point, never an exponent ("0.00006103515625", "1.0"): the
    form NetDissect-Lite's reader parses as a number (``^\\d+\\.\\d*$``); exact."""
    return np.format_float_positional(float(value), trim="0")


def write_broden(
    directory: str | Path,
    categories: Sequence[str],
    label_names: Sequence[str],
    category_labels: Mapping[str, Sequence[int]],
    images: Iterable[ProbeImage],
    column_order: Sequence[str] | None = None,
    coverage: Mapping[tuple[str, int], float] | None = None,
    progress: bool = False,
) -> Path:
    """Writes index.csv, category.csv, label.csv, c_<cat>.csv and images/.

    Args:
      directory: output folder (created).
      categories: category names in category.csv order.
      label_names: name of each label number; index 0 is unlabelled.
      category_labels: per category, the label numbers listed in its c_<cat>.csv.
      images: the probe images with their labels (consumed once, so a generator is fine).
      column_order: order of the category columns in index.csv (default: ``categories``).
      coverage: optional {(category, label): coverage} replacing the measured coverage
        (Broden's: summed fraction of each image the label covers; 1 per image-level label).
      progress: show a progress bar.

    Returns:
      The folder.
    """
    directory = Path(directory)
    _check_own_names(directory, categories)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    column_order = list(column_order or categories)
    rows = []
    frequency = {c: np.zeros(len(label_names), np.int64) for c in categories}
    measured = {c: np.zeros(len(label_names), np.float64) for c in categories}
    for image in progress_bar(
        images, desc="writing probe images", unit="img", disable=not progress
    ):
        rows.append(_write_image(directory, image, column_order, frequency, measured))

    def coverage_of(category, label):
        if coverage and (category, label) in coverage:
            return float(coverage[(category, label)])
        return float(measured[category][label])

    _write_label_tables(directory, categories, label_names, category_labels, frequency, coverage_of)
    # index.csv last: a folder with it is whole (a killed write leaves a folder that readers
    # refuse and that demo and the studies do not take for a finished probe).
    _write_index(directory, categories, category_labels, column_order, rows)
    return directory


def _check_own_names(directory: Path, categories: Sequence[str]) -> None:
    """Refuses a link, or anything but a file (a folder for images/), at a name the set
    writes: label.csv linked elsewhere was overwritten there, images/ linked elsewhere
    filled that folder, and a FIFO would block the write."""
    names = ["index.csv", "category.csv", "label.csv", *(f"c_{c}.csv" for c in categories)]
    for name in [*names, "images"]:
        path = directory / name
        wrong_kind = not (path.is_dir() if name == "images" else path.is_file())
        if path.is_symlink() or (os.path.lexists(path) and wrong_kind):
            raise DissectError(
                f"`directory` {directory}: {name} is a link or not a "
                f"{'folder' if name == 'images' else 'regular file'}; a probe set writes "
                "its own files there, never through it (remove it, or choose another folder)",
                arguments=("directory",),
            )


def _inside(directory: Path, path: Path) -> bool:
    """Whether ``path`` resolves inside ``directory`` (no link below it leads out)."""
    root = os.path.realpath(directory)
    return os.path.realpath(path).startswith(root.rstrip(os.sep) + os.sep)


def _write_image(directory: Path, image: ProbeImage, column_order, frequency, measured) -> dict:
    """Writes one image and its label planes; counts its labels into ``frequency`` and
    ``measured`` (coverage); returns its index.csv row."""
    height, width = image.pixels.shape[:2]
    label_shape = None
    row = {"image": f"{image.name}.jpg", "split": "train", "ih": height, "iw": width}
    (directory / "images" / image.name).parent.mkdir(parents=True, exist_ok=True)
    if not _inside(directory, (directory / "images" / image.name).parent):
        raise DissectError(
            f"`directory` {directory}: images/{image.name} leads outside it through a link; "
            "a probe set writes only inside its folder",
            arguments=("directory",),
        )
    Image.fromarray(image.pixels).save(directory / "images" / f"{image.name}.jpg", quality=95)
    for category in column_order:
        items = []
        for k, plane in enumerate(image.planes.get(category, ())):
            label_shape = plane.shape
            path = f"{image.name}_{category}_{k}.png"
            rgb = encode_plane(plane, "images", f" ({image.name}: {category} plane {k})")
            Image.fromarray(rgb).save(directory / "images" / path)
            items.append(path)
            present, counts = np.unique(plane, return_counts=True)
            frequency[category][present] += 1
            measured[category][present] += counts / plane.size
        for label in image.image_labels.get(category, ()):
            items.append(str(int(label)))
            frequency[category][int(label)] += 1
            measured[category][int(label)] += 1.0
        row[category] = ";".join(items)
    row["sh"], row["sw"] = label_shape or (height // 2, width // 2)
    return row


def _write_index(directory: Path, categories, category_labels, column_order, rows) -> None:
    """Writes index.csv (one row per image) and category.csv."""
    with open(directory / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "split", "ih", "iw", "sh", "sw", *column_order])
        writer.writeheader()
        writer.writerows(rows)
    with open(directory / "category.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "first", "last", "count", "frequency"])
        for category in categories:
            numbers = sorted(category_labels.get(category, ()))
            first, last = (numbers[0], numbers[-1]) if numbers else (0, 0)
            writer.writerow([category, first, last, len(numbers), len(rows)])


def _write_label_tables(
    directory: Path, categories, label_names, category_labels, frequency, coverage_of
) -> None:
    """Writes label.csv and each category's c_<cat>.csv."""
    with open(directory / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for number, name in enumerate(label_names):
            if number == 0:
                continue
            member = [c for c in categories if number in category_labels.get(c, ())]
            tags = ";".join(f"{c}({int(frequency[c][number])})" for c in member)
            total = sum(int(frequency[c][number]) for c in member)
            covered = sum(coverage_of(c, number) for c in member)
            writer.writerow([number, name, tags, total, plain_decimal(covered), ""])
    for category in categories:
        with open(directory / f"c_{category}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, number in enumerate(sorted(category_labels.get(category, ())), start=1):
                writer.writerow(
                    [
                        code,
                        number,
                        label_names[number],
                        int(frequency[category][number]),
                        plain_decimal(coverage_of(category, number)),
                    ]
                )
