"""Reading a Broden-format probe set's CSV files into one immutable description.

Layout (see DESIGN.md)::

    index.csv      image,split,ih,iw,sh,sw,<one column per category>
    category.csv   name,first,last,count,frequency
    label.csv      number,name,category,frequency,coverage,syns
    c_<cat>.csv    code,number,name,frequency,coverage
    images/...     <name>.jpg and label planes (PNG, label = R + 256 * G)

Categories are matched by name, never by column position. A label's primary category is
the selected category whose ``c_<cat>.csv`` gives it the largest coverage (ties go to the
later category in category.csv order). Decoding the PNG planes is done once, by
``jaxdissect.data.cache``.

The files are read as written or refused: a row with fewer or more fields than its header,
a repeated column or category, a label number above ``MAX_LABEL``, or sizes above
``MAX_SIDE`` raise ``BrodenFormatError``. A label or plane repeated within one index.csv
row counts once. Image and plane paths must be relative and stay inside ``images/``:
absolute paths and ``..`` are refused here, and ``member_file`` refuses at open time a path
that leads outside through a symbolic link, or that is not a regular file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PureWindowsPath

import numpy as np

from jaxdissect.config import check_paths
from jaxdissect.errors import BrodenFormatError, DissectError, check_regular_file

INDEX_FIELDS = ("image", "ih", "iw", "sh", "sw")
LABEL_FIELDS = ("number", "name")
CATEGORY_FIELDS = ("name",)
CATEGORY_LABEL_FIELDS = ("number", "coverage")
MAX_LABEL = 1_000_000  # label names are held per number: a bound before allocating them
MAX_SIDE = 8192  # image and label plane sides, checked before any array is allocated


@dataclasses.dataclass(frozen=True)
class BrodenDataset:
    """What a Broden-format folder declares, for the selected categories.

    Attributes:
      directory: the dataset folder.
      categories: selected category names, in category.csv order.
      label_names: name of each label number (index 0 is the unlabelled "-").
      label_category: (L,) int32 primary category index (into ``categories``), -1 for none.
      images: image paths relative to ``images/``, in index.csv order.
      image_size: (ih, iw), shared by every row.
      label_size: (sh, sw), shared by every row.
      pixel_planes: per image, the label-plane paths (relative to ``images/``).
      image_labels: per image, the image-level label numbers (0s dropped).
    """

    directory: Path
    categories: tuple[str, ...]
    label_names: tuple[str, ...]
    label_category: np.ndarray
    images: tuple[str, ...]
    image_size: tuple[int, int]
    label_size: tuple[int, int]
    pixel_planes: tuple[tuple[str, ...], ...]
    image_labels: tuple[tuple[int, ...], ...]

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def category_of(self, label: int) -> str | None:
        """Name of a label's primary category, or None."""
        c = int(self.label_category[label])
        return self.categories[c] if c >= 0 else None


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts, checking that the required columns exist."""
    check_regular_file(path, error=BrodenFormatError)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BrodenFormatError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.reason})"
        ) from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        repeated = sorted({field for field in header if header.count(field) > 1})
        if repeated:
            raise BrodenFormatError(f"{path}: column(s) {', '.join(repeated)} appear twice")
        missing = [field for field in required if field not in header]
        if missing:
            raise BrodenFormatError(
                f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header)})"
            )
        rows = []
        for row in reader:
            if None in row:
                raise BrodenFormatError(
                    f"{path}, line {reader.line_num}: more fields than the header has"
                )
            if None in row.values():
                raise BrodenFormatError(
                    f"{path}, line {reader.line_num}: fewer fields than the header has"
                )
            rows.append(row)
        return rows
    except csv.Error as error:
        raise BrodenFormatError(f"{path}: malformed CSV ({error})") from None


def _parse_int(value: str | None, path: Path, line: int, field: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise BrodenFormatError(
            f"{path}, line {line}, field {field!r}: expected an integer, got {value!r}"
        ) from None


def _parse_float(value: str | None, path: Path, line: int, field: str) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise BrodenFormatError(
            f"{path}, line {line}, field {field!r}: expected a number, got {value!r}"
        ) from None
    if not np.isfinite(number):
        raise BrodenFormatError(f"{path}, line {line}, field {field!r}: not finite ({value!r})")
    return number


def _read_labels(directory: Path) -> tuple[str, ...]:
    path = directory / "label.csv"
    names: dict[int, str] = {}
    for line, row in enumerate(_read_csv(path, LABEL_FIELDS), start=2):
        number = _parse_int(row["number"], path, line, "number")
        if number < 0:
            raise BrodenFormatError(f"{path}, line {line}, field 'number': negative ({number})")
        if number > MAX_LABEL:
            raise BrodenFormatError(
                f"{path}, line {line}, field 'number': {number} is above {MAX_LABEL:,}, "
                "the largest label number supported"
            )
        if number in names:
            raise BrodenFormatError(f"{path}, line {line}: label number {number} appears twice")
        names[number] = row["name"]
    size = max(names, default=0) + 1
    return tuple(names.get(i, "-" if i == 0 else f"label-{i}") for i in range(size))


def _primary_categories(directory: Path, categories: Sequence[str], num_labels: int) -> np.ndarray:
    """Per label, the index of the category with the largest coverage (later wins ties)."""
    best_coverage = np.full(num_labels, -np.inf)
    primary = np.full(num_labels, -1, np.int32)
    for index, category in enumerate(categories):
        path = directory / f"c_{category}.csv"
        for line, row in enumerate(_read_csv(path, CATEGORY_LABEL_FIELDS), start=2):
            number = _parse_int(row["number"], path, line, "number")
            if not 0 < number < num_labels:
                raise BrodenFormatError(
                    f"{path}, line {line}, field 'number': label {number} is not in label.csv"
                )
            coverage = _parse_float(row["coverage"], path, line, "coverage")
            if coverage >= best_coverage[number]:
                best_coverage[number] = coverage
                primary[number] = index
    return primary


def _check_relative(item: str, path: Path, line: int, field: str) -> None:
    """Refuses a path that is absolute or climbs out of images/ with ".."."""
    pure = PureWindowsPath(item)  # parses both separators, and drives
    if pure.drive or pure.root or ".." in pure.parts:
        raise BrodenFormatError(
            f"{path}, line {line}, field {field!r}: {item!r} must be a path inside images/ "
            "(relative, without '..')"
        )


def member_file(dataset: BrodenDataset, relative: str, index: int, kind: str) -> Path:
    """``images/<relative>`` of image ``index`` (a ``kind``: "image", "label plane"),
    resolved; refused unless it is a regular file inside ``images/`` (a symbolic link may
    not lead out; a FIFO would block the reader)."""
    root = (dataset.directory / "images").resolve()
    where = f"{dataset.directory / 'index.csv'}, line {index + 2}"
    try:
        target = (root / relative).resolve()
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        raise BrodenFormatError(f"{where}: {root / relative}: {kind} not found") from None
    except (OSError, RuntimeError) as error:  # RuntimeError: a symbolic link loop
        raise BrodenFormatError(
            f"{where}: {root / relative}: {kind} unreadable ({error})"
        ) from None
    if not target.is_relative_to(root):
        raise BrodenFormatError(f"{where}: {kind} {relative!r} leads outside {root} to {target}")
    if not stat.S_ISREG(mode):
        raise BrodenFormatError(f"{where}: {root / relative}: {kind} is not a regular file")
    return target


def _parse_index(
    directory: Path, categories: Sequence[str], label_names: Sequence[str]
) -> tuple[
    list[str], list[tuple[str, ...]], list[tuple[int, ...]], tuple[int, int], tuple[int, int]
]:
    path = directory / "index.csv"
    rows = _read_csv(path, INDEX_FIELDS)
    if not rows:
        raise BrodenFormatError(f"{path}: no images listed")
    header = list(rows[0].keys())
    missing = [c for c in categories if c not in header]
    if missing:
        raise BrodenFormatError(
            f"{path}: no column for category {', '.join(missing)} (header: {','.join(header)})"
        )
    images, planes, image_labels = [], [], []
    image_size = label_size = None
    for line, row in enumerate(rows, start=2):
        if not row["image"]:
            raise BrodenFormatError(f"{path}, line {line}, field 'image': empty")
        _check_relative(row["image"], path, line, "image")
        sizes = tuple(_parse_int(row[f], path, line, f) for f in ("ih", "iw", "sh", "sw"))
        if min(sizes) < 1 or max(sizes) > MAX_SIDE:
            raise BrodenFormatError(
                f"{path}, line {line}: sizes ih,iw,sh,sw must lie in [1, {MAX_SIDE}], got {sizes}"
            )
        if image_size is None:
            image_size, label_size = sizes[:2], sizes[2:]
        elif (sizes[:2], sizes[2:]) != (image_size, label_size):
            raise BrodenFormatError(
                f"{path}, line {line}: sizes ih,iw,sh,sw = {sizes} differ from the first row's "
                f"{image_size + label_size}; every image must share one size"
            )
        # dicts keep the first of repeated items: a label or plane counts once per image
        row_planes, row_labels = {}, {}
        for category in categories:
            for item in (row[category] or "").split(";"):
                item = item.strip()
                if not item:
                    continue
                if item.lstrip("-").isdigit():
                    label = int(item)
                    if not 0 <= label < len(label_names):
                        raise BrodenFormatError(
                            f"{path}, line {line}, field {category!r}: label {label} is not "
                            "in label.csv"
                        )
                    if label:  # scene "0" means unlabelled
                        row_labels[label] = None
                else:
                    _check_relative(item, path, line, category)
                    row_planes[item] = None
        images.append(row["image"])
        planes.append(tuple(row_planes))
        image_labels.append(tuple(row_labels))
    return images, planes, image_labels, image_size, label_size


def read_category_names(directory: str | Path) -> tuple[str, ...]:
    """Category names in category.csv order."""
    path = Path(directory) / "category.csv"
    names = tuple(row["name"] for row in _read_csv(path, CATEGORY_FIELDS))
    if not names:
        raise BrodenFormatError(f"{path}: no categories listed")
    for line, name in enumerate(names, start=2):
        if name in names[: line - 2]:
            raise BrodenFormatError(f"{path}, line {line}: category {name!r} is listed twice")
    return names


def open_broden(directory: str | Path, categories: Sequence[str] | None = None) -> BrodenDataset:
    """Reads a Broden-format folder's CSVs (no images are decoded here).

    Args:
      directory: the folder holding index.csv, category.csv, label.csv, c_<cat>.csv, images/.
      categories: names to keep (default: all in category.csv). NetDissect-Lite's default
        leaves out "material".

    Returns:
      A BrodenDataset.

    Raises:
      BrodenFormatError: naming the file, line and field at fault.
    """
    if directory is None:  # pathlib's TypeError otherwise
        raise DissectError(
            "`directory` is None: give the probe set's folder", arguments=("directory",)
        )
    check_paths(directory=directory)
    directory = Path(directory)
    if not directory.is_dir():
        raise BrodenFormatError(f"{directory}: not a directory")
    if isinstance(categories, str):
        raise DissectError(
            f"`categories` must be a list of names, got the string {categories!r} "
            f"(for one category, give [{categories!r}])",
            arguments=("categories",),
        )
    available = read_category_names(directory)
    if categories is None:
        selected = available
    else:
        unknown = [c for c in categories if c not in available]
        if unknown:
            raise BrodenFormatError(
                f"{directory / 'category.csv'}: no category {', '.join(map(repr, unknown))}; "
                f"available: {', '.join(available)}"
            )
        if not categories:
            raise BrodenFormatError("at least one category must be selected")
        selected = tuple(c for c in available if c in set(categories))
    label_names = _read_labels(directory)
    label_category = _primary_categories(directory, selected, len(label_names))
    images, planes, image_labels, image_size, label_size = _parse_index(
        directory, selected, label_names
    )
    return BrodenDataset(
        directory=directory,
        categories=tuple(selected),
        label_names=label_names,
        label_category=label_category,
        images=tuple(images),
        image_size=image_size,
        label_size=label_size,
        pixel_planes=tuple(planes),
        image_labels=tuple(image_labels),
    )
