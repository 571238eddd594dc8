"""Checking a dissection's results.json and counts.npz before anything is drawn from them.

Both files are untrusted input (a user may hand over someone else's folder): every field the
report and the studies read is checked for its type, its range and its agreement with the
others (unit numbers within the layer, top images within the probe), and any mismatch
raises a one-line ``DissectError`` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from jaxdissect.errors import DissectError, check_regular_file

PER_CATEGORY = ("label", "truth", "activation", "intersect", "iou")
# results.json is read whole; a dissection of 100 000 units writes about 150 MB.
MAX_RESULTS_BYTES = 2**30


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, what: str, value) -> DissectError:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return DissectError(f"{self.path}: {where}: expected {what}, got {shown}")

    def mapping(self, value, where: str, keys=()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, "an object", value)
        for key in keys:
            if key not in value:
                raise DissectError(f"{self.path}: {where}: missing field {key!r}")
        return value

    def text(self, value, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, "a string", value)
        return value

    def integer(self, value, where: str, low: int = 0, high: float = math.inf) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            bound = f"[{low}, {high}]" if high != math.inf else f">= {low}"
            raise self.fail(where, f"an integer {bound}", value)
        return value

    def number(self, value, where: str, low: float, high: float) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not low <= value <= high:
            raise self.fail(where, f"a finite number in [{low}, {high}]", value)
        return float(value)


def check_results(results, path: str | Path = "results.json") -> dict:
    """``results`` (a parsed results.json) if it has the fields, types and ranges the report
    reads; otherwise DissectError naming ``path`` and the field."""
    check = _Checker(Path(path))
    root = check.mapping(
        results,
        "the file",
        ("layer", "dataset", "images", "categories", "config", "summary", "thresholds", "units"),
    )
    categories = _check_header(check, root)
    units = root["units"]
    if not isinstance(units, list):
        raise check.fail("units", "a list", units)
    _check_summary(check, root["summary"], categories, len(units))
    _check_thresholds(check, root["thresholds"], len(units))
    _check_units(check, units, categories)
    return root


def _check_header(check: _Checker, root: dict) -> list[str]:
    """The layer, dataset, probe identity, image count, categories and config; returns the
    categories."""
    check.text(root["layer"], "layer")
    check.text(root["dataset"], "dataset")
    if "probe_identity" in root:  # results of earlier versions lack it
        check.text(root["probe_identity"], "probe_identity")
    check.integer(root["images"], "images", 1)
    categories = root["categories"]
    if (
        not isinstance(categories, list)
        or not categories
        or not all(isinstance(c, str) and c for c in categories)
        or len(set(categories)) != len(categories)
    ):
        raise check.fail("categories", "a list of distinct names", categories)
    config = check.mapping(root["config"], "config", ("quantile", "iou_threshold"))
    check.number(config["quantile"], "config.quantile", 0.0, 1.0)
    check.number(config["iou_threshold"], "config.iou_threshold", 0.0, 1.0)
    return categories


def _check_summary(check: _Checker, summary, categories: list[str], count: int) -> None:
    """The summary's counts of detectors and unique detectors, for ``count`` units."""
    summary = check.mapping(
        summary,
        "summary",
        (
            "units",
            "iou_threshold",
            "detectors",
            "detectors_per_category",
            "unique_top_label",
            "unique_per_category",
        ),
    )
    check.integer(summary["units"], "summary.units", count, count)
    check.number(summary["iou_threshold"], "summary.iou_threshold", 0.0, 1.0)
    check.integer(summary["detectors"], "summary.detectors", 0, count)
    per_category = check.mapping(
        summary["detectors_per_category"], "summary.detectors_per_category", categories
    )
    for c in categories:
        check.integer(per_category[c], f"summary.detectors_per_category.{c}", 0, count)
    for rule in ("unique_top_label", "unique_per_category"):
        unique = check.mapping(summary[rule], f"summary.{rule}", ("total", "per_category"))
        check.integer(unique["total"], f"summary.{rule}.total", 0)
        shares = check.mapping(unique["per_category"], f"summary.{rule}.per_category", categories)
        for c in categories:
            check.integer(shares[c], f"summary.{rule}.per_category.{c}", 0)


def _check_thresholds(check: _Checker, thresholds, count: int) -> None:
    """One number per unit."""
    if not isinstance(thresholds, list) or len(thresholds) != count:
        raise check.fail("thresholds", f"a list of {count} numbers (one per unit)", thresholds)
    for i, value in enumerate(thresholds):
        check.number(value, f"thresholds[{i}]", -math.inf, math.inf)


def _check_units(check: _Checker, units: list, categories: list[str]) -> None:
    """Each unit's row: numbered 1..len(units), each once, with its best label and, per
    category, its label and counts."""
    count = len(units)
    seen = set()
    for i, row in enumerate(units):
        where = f"units[{i}]"
        check.mapping(row, where, ("unit", "category", "label", "score"))
        unit = check.integer(row["unit"], f"{where}.unit", 1, count)
        if unit in seen:
            raise check.fail(f"{where}.unit", "each unit once", unit)
        seen.add(unit)
        if row["category"] not in categories:
            raise check.fail(f"{where}.category", f"one of {categories}", row["category"])
        check.text(row["label"], f"{where}.label")
        check.number(row["score"], f"{where}.score", 0.0, 1.0)
        for c in categories:
            check.mapping(row, where, [f"{c}-{field}" for field in PER_CATEGORY])
            check.text(row[f"{c}-label"], f"{where}.{c}-label")
            for field in ("truth", "activation", "intersect"):
                check.integer(row[f"{c}-{field}"], f"{where}.{c}-{field}", 0)
            check.number(row[f"{c}-iou"], f"{where}.{c}-iou", 0.0, 1.0)


def read_results(folder: str | Path) -> dict:
    """FOLDER/results.json, parsed and checked (``check_results``)."""
    path = Path(folder) / "results.json"
    check_regular_file(path)
    try:
        size = path.stat().st_size
        if size > MAX_RESULTS_BYTES:
            raise DissectError(f"{path}: {size} bytes, more than the {MAX_RESULTS_BYTES} allowed")
        results = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DissectError(f"{path}: file not found") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise DissectError(f"{path}: not a whole JSON file ({error})") from None
    return check_results(results, path)


def check_same_probe(results: dict, dataset) -> None:
    """Refuses a probe other than the one ``results`` were computed on (its images would be
    drawn beside another probe's activation maps); results without an identity pass."""
    from jaxdissect.data.cache import probe_identity

    recorded = results.get("probe_identity")
    if recorded is not None and recorded != (now := probe_identity(dataset)):
        raise DissectError(
            f"{dataset.directory} now holds another probe than the one dissected "
            f"(identity {now}, results.json records {recorded})"
        )


def _check_member_sizes(path: Path) -> None:
    """Refuses a member of the .npz at ``path`` whose header declares more data than the
    member holds, before NumPy allocates what the header declares (a 4 kB file declaring
    800 GB of maps ended in "out of memory")."""
    from jaxdissect.data.archive import MAX_RATIO, inflates_beyond
    from jaxdissect.data.npy_rows import read_npy_header

    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            # jaxdissect writes counts.npz uncompressed; a member inflating 100-fold would
            # cost a minute of decompression per GB before any check (a zip bomb).
            if inflates_beyond(info):
                raise DissectError(
                    f"{path}: {info.filename} inflates {info.compress_size:,} bytes to "
                    f"{info.file_size:,}, more than {MAX_RATIO:.0f}-fold (not a file "
                    "jaxdissect wrote)"
                )
            with archive.open(info) as member:
                shape, _, dtype = read_npy_header(member)
                declared = math.prod(shape) * dtype.itemsize
                if declared > info.file_size - member.tell():
                    raise DissectError(
                        f"{path}: {info.filename} declares {shape} {dtype} ({declared:,} "
                        f"bytes) but holds {info.file_size:,} bytes"
                    )


def read_counts(folder: str | Path, units: int, images: int | None) -> dict[str, np.ndarray]:
    """FOLDER/counts.npz's arrays the report draws from (``top_indices``, ``top_maps``),
    checked against ``units`` and, when given, the number of probe ``images``: {} when it
    holds no top images."""
    path = Path(folder) / "counts.npz"
    check_regular_file(path)  # a FIFO or /dev/zero was "file not found"
    try:
        _check_member_sizes(path)
        with np.load(path, allow_pickle=False) as counts:
            if "top_indices" not in counts.files:
                return {}
            if "top_maps" not in counts.files:
                raise DissectError(f"{path}: top_indices without top_maps")
            indices, maps = counts["top_indices"], counts["top_maps"]
    except FileNotFoundError:
        raise DissectError(f"{path}: file not found") from None
    except DissectError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise DissectError(f"{path}: not a readable .npz file ({error})") from None
    if indices.ndim != 2 or indices.shape[0] != units or indices.dtype.kind not in "iu":
        raise DissectError(
            f"{path}: top_indices: expected integers of shape ({units}, k), got "
            f"{indices.dtype} {indices.shape}"
        )
    if maps.ndim != 4 or maps.shape[:2] != indices.shape or maps.dtype.kind != "f":
        raise DissectError(
            f"{path}: top_maps: expected floats of shape {indices.shape} + (h, w), got "
            f"{maps.dtype} {maps.shape}"
        )
    if indices.size and indices.min() < -1:
        raise DissectError(f"{path}: top_indices: {indices.min()} is not an image index")
    # The page holds the maps as float32: NaN, or 1e300 cast with a NumPy warning, is no map.
    if maps.size and not (np.isfinite(maps) & (np.abs(maps) <= np.finfo(np.float32).max)).all():
        raise DissectError(f"{path}: top_maps: not all finite float32 numbers")
    if images is not None and indices.size and indices.max() >= images:
        raise DissectError(
            f"{path}: top_indices: image {indices.max()} is beyond the probe's {images} images"
        )
    return {"top_indices": indices, "top_maps": maps}
