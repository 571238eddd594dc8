"""Dissection outputs: tally.csv (NetDissect-Lite's columns), results.json, counts.npz.

Every file is written to a temporary name beside its destination and renamed into place,
and results.json, the run's completion mark, is written last: an interrupted run never
leaves a file that looks complete, and never destroys a previous run's files before the new
ones are whole.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxdissect.config import DissectConfig, check_paths
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.data.cache import probe_identity
from jaxdissect.dissection import Dissection
from jaxdissect.errors import DissectError, check_regular_file

TALLY_FIELDS = ("label", "truth", "activation", "intersect", "iou")


def check_output_file(path: Path, name: str, arguments: tuple[str, ...] = ()) -> None:
    """Refuses an existing ``path`` (named ``name`` in the message) that is neither a
    regular file nor a link: a folder, FIFO or device there is someone's, and the rename
    that writes a file would replace it (as root, even /dev/null)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # absent, or its folder is not one: the write says so
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise DissectError(
            f"{name} {path}: exists and is not a regular file (a folder, FIFO or device); "
            "nothing written",
            arguments=arguments,
        )


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` if the block succeeds
    (a link at ``path`` is replaced, never written through)."""
    check_output_file(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".partial", dir=path.parent
    )
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600, as open() would have made it
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def unit_rows(dissection: Dissection, dataset: BrodenDataset) -> list[dict]:
    """One dict per unit in tally.csv's columns, sorted by score (descending), then unit."""
    labels = dissection.labels
    names = dataset.label_names
    rows = []
    for u in range(labels.score.shape[0]):
        label = int(labels.label[u])  # -1: every IoU is 0, no label
        row = {
            "unit": u + 1,
            "category": dataset.categories[int(labels.category[u])],
            "label": names[label] if label >= 0 else "",
            "score": float(labels.score[u]),
        }
        for c, category in enumerate(dataset.categories):
            best = int(labels.category_label[u, c])
            row[f"{category}-label"] = names[best] if best >= 0 else ""
            row[f"{category}-truth"] = int(dissection.label_area[best]) if best >= 0 else 0
            row[f"{category}-activation"] = int(dissection.unit_area[u, c])
            row[f"{category}-intersect"] = int(dissection.intersection[u, best]) if best >= 0 else 0
            row[f"{category}-iou"] = float(labels.category_iou[u, c])
        rows.append(row)
    rows.sort(key=lambda row: (-row["score"], row["unit"]))
    return rows


def tally_csv_text(rows: list[dict], categories: tuple[str, ...]) -> str:
    fields = ["unit", "category", "label", "score"]
    fields += [f"{c}-{field}" for c in categories for field in TALLY_FIELDS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def write_dissection(
    out: str | Path,
    dissection: Dissection,
    dataset: BrodenDataset,
    config: DissectConfig,
    extra: dict | None = None,
) -> Path:
    """Writes OUT/tally.csv, OUT/counts.npz and (last) OUT/results.json.

    Returns:
      The path of results.json.
    """
    check_paths(out=out)
    if not isinstance(dissection, Dissection):
        raise DissectError(
            f"`dissection` must be a Dissection (a value of dissect's result), got "
            f"{type(dissection).__name__}",
            arguments=("dissection",),
        )
    out = Path(out)
    rows = unit_rows(dissection, dataset)
    write_text_atomic(out / "tally.csv", tally_csv_text(rows, dataset.categories))
    with atomic_path(out / "counts.npz") as temporary:
        with open(temporary, "wb") as f:
            tops = {}
            if dissection.top_indices is not None:
                tops = {"top_indices": dissection.top_indices, "top_maps": dissection.top_maps}
            np.savez(
                f,
                thresholds=dissection.thresholds,
                label_area=dissection.label_area,
                intersection=dissection.intersection,
                unit_area=dissection.unit_area,
                **tops,
            )
    results = {
        "layer": dissection.layer,
        "dataset": str(dataset.directory),
        "probe_identity": probe_identity(dataset),
        "images": dataset.num_images,
        "categories": list(dataset.categories),
        "config": {
            "quantile": config.quantile,
            "iou_threshold": config.iou_threshold,
            "union": config.union,
        },
        **(extra or {}),
        "summary": dissection.summary,
        "thresholds": [float(t) for t in dissection.thresholds],
        "units": rows,
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    return out / "results.json"


def read_tally_csv(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Categories (in column order) and rows of a tally.csv in NetDissect's columns.

    Accepts any column order, including the NetDissect release files' (object, color,
    material, scene, texture, part). Each row's unit is an integer held by no other row,
    and its score and IoUs are finite numbers; a DissectError names the line and field of
    the first that is not.
    """
    path = Path(path)
    check_regular_file(path)
    try:  # utf-8-sig: a spreadsheet's byte-order mark hid the "unit" column
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows, lines = [], []  # each row, and the line it ends on
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DissectError(f"{path}: not a readable CSV ({error})") from None
    missing = [f for f in ("unit", "category", "label", "score") if f not in header]
    categories = [h[: -len("-iou")] for h in header if h.endswith("-iou")]
    missing += [f"{c}-label" for c in categories if f"{c}-label" not in header]
    if missing or not categories:
        raise DissectError(
            f"{path}: not a tally in NetDissect's columns (missing "
            f"{', '.join(missing) or '<category>-iou columns'})"
        )
    if not rows:
        raise DissectError(f"{path}: a header and no rows: no units to summarize")
    first_line = {}
    for line, row in zip(lines, rows, strict=True):
        unit = _tally_number(path, line, row, "unit", int)
        if unit in first_line:
            raise DissectError(
                f"{path}: line {line}: unit {unit} again (first on line {first_line[unit]}); "
                "a tally holds one row per unit"
            )
        first_line[unit] = line
        for field in ("score", *(f"{c}-iou" for c in categories)):
            _tally_number(path, line, row, field, float)
    return categories, rows


def _tally_number(path: Path, line: int, row: dict, field: str, parse) -> float:
    """``row[field]`` parsed by ``parse`` (int or float); a DissectError naming the file, the
    line and the field unless it is a finite number."""
    text = row[field]
    if text is None:  # csv.DictReader's value for the fields a short row lacks
        raise DissectError(f"{path}: line {line}: no {field} (the row has too few fields)")
    try:
        value = parse(text)
    except ValueError:
        raise DissectError(f"{path}: line {line}: {field} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DissectError(f"{path}: line {line}: {field} is {text}, not a finite number")
    return value


def summarize_tally_csv(path: str | Path, iou_threshold: float = 0.04) -> dict:
    """Detectors and unique detectors (both rules) of any tally.csv."""
    from jaxdissect.stats.scores import summarize

    categories, rows = read_tally_csv(path)
    score = np.array([float(row["score"]) for row in rows])
    category_iou = np.array([[float(row[f"{c}-iou"]) for c in categories] for row in rows])
    unknown = {row["category"] for row in rows} - set(categories)
    if unknown:
        raise DissectError(f"{path}: category {sorted(unknown)} has no -iou columns")
    return summarize(
        categories,
        [row["category"] for row in rows],
        [row["label"] for row in rows],
        score,
        [[row[f"{c}-label"] for c in categories] for row in rows],
        category_iou,
        iou_threshold,
    )


def format_summary(summary: dict) -> str:
    """A small text table of a summary."""
    top = summary["unique_top_label"]["per_category"]
    per = summary["unique_per_category"]["per_category"]
    lines = [
        f"units: {summary['units']}   detectors (IoU > {summary['iou_threshold']:g}): "
        f"{summary['detectors']}",
        f"{'category':<12}{'detectors':>10}{'unique (top-label)':>20}{'unique (per-category)':>23}",
    ]
    for category in per:
        lines.append(
            f"{category:<12}{summary['detectors_per_category'][category]:>10}"
            f"{top[category]:>20}{per[category]:>23}"
        )
    lines.append(
        f"{'total':<12}{summary['detectors']:>10}{summary['unique_top_label']['total']:>20}"
        f"{summary['unique_per_category']['total']:>23}"
    )
    return "\n".join(lines)
