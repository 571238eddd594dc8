"""Writing a layer's concept directions into a set folder (``driver.run_analysis``
publishes it): directions.csv, directions.npz, directions.json and directions.html (one
self-contained page of cards: per concept, the direction's held-out IoU beside the best
single unit's and chance, and the units it weighs most); and reading them back."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
from pathlib import Path

import numpy as np

from jaxdissect.compositional.direction_fit import DirectionConfig, Directions
from jaxdissect.report.html import content_security_policy

CSV_COLUMNS = (
    "label",
    "category",
    "iou_direction",
    "iou_best_unit",
    "best_unit",
    "iou_best_unit_heldout",
    "best_unit_heldout",
    "iou_chance",
    "iou_direction_train",
    "iou_best_unit_train",
    "threshold",
    "train_pixels",
    "heldout_pixels",
    "loss",
    "top_units",
)


def _cell(row: dict, column: str) -> str:
    value = row[column]
    if column == "top_units":
        return " ".join(f"{t['unit']}:{t['weight']:.4g}" for t in value)
    return repr(value) if isinstance(value, float) else str(value)


def _bar(value: float, color: str) -> str:
    width = max(0.0, min(1.0, value)) * 100
    return f'<span class="bar"><span style="width:{width:.1f}%;background:{color}"></span></span>'


def _card(row: dict) -> str:
    e = html.escape
    gain = row["iou_direction"] - row["iou_best_unit"]
    number = {key: f"{row[key]:.4f}" for key in ("iou_direction", "iou_best_unit", "iou_chance")}
    train = {key: f"{row[key]:.4f}" for key in ("iou_direction_train", "iou_best_unit_train")}
    weights = "".join(
        f"<li>unit {e(str(t['unit']))}: {e(format(t['weight'], '+.3f'))}</li>"
        for t in row["top_units"]
    )
    return (
        f'<div class="card" data-gain="{gain:.6f}"><h2>{e(row["label"])} '
        f"<small>({e(row['category'])})</small></h2><table>"
        f"<tr><td>direction</td><td>{_bar(row['iou_direction'], '#2a7')}</td>"
        f"<td>{e(number['iou_direction'])}</td></tr>"
        f"<tr><td>best unit ({e(str(row['best_unit']))})</td>"
        f"<td>{_bar(row['iou_best_unit'], '#c63')}</td>"
        f"<td>{e(number['iou_best_unit'])}</td></tr>"
        f"<tr><td>chance</td><td>{_bar(row['iou_chance'], '#999')}</td>"
        f"<td>{e(number['iou_chance'])}</td></tr></table>"
        f"<p>held-out IoU; train: direction {e(train['iou_direction_train'])}, "
        f"unit {e(train['iou_best_unit_train'])}; label pixels "
        f"{e(str(row['train_pixels']))} train, {e(str(row['heldout_pixels']))} held out</p>"
        f"<p>largest standardised weights:</p><ul>{weights}</ul></div>"
    )


def write_html(path: Path, found: Directions, dataset) -> None:
    e = html.escape
    rows = sorted(found.rows, key=lambda r: r["iou_best_unit"] - r["iou_direction"])
    beats = sum(r["iou_direction"] >= r["iou_best_unit"] + 0.05 for r in rows)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8">{content_security_policy()}<title>Directions of {e(found.layer)}</title>
<style>body{{font-family:sans-serif;margin:1em}}.card{{border:1px solid #ccc;margin:.5em;
padding:.5em;display:inline-block;vertical-align:top;width:22em}}h2{{font-size:1em;margin:0}}
.bar{{display:inline-block;width:10em;height:.8em;background:#eee}}
.bar span{{display:block;height:100%}}td{{padding:0 .3em}}</style></head><body>
<h1>Concept directions of {e(found.layer)}</h1>
<p>{e(str(len(rows)))} concepts of {e(str(dataset.directory))}; each card: the IoU of the
concept's learned direction (a linear combination of the layer's units, Net2Vec) on
{e(str(len(found.heldout_rows)))} held-out images, beside the best single unit's (chosen
on the {e(str(len(found.train_rows)))} train images, at the dissection's threshold) and
the IoU of a mask covering every counted pixel (chance). {e(str(beats))} directions beat
their best unit by at least 0.05. Cards are sorted by the direction's gain over the unit.
</p>
{"".join(_card(row) for row in rows)}
</body></html>
"""
    path.write_text(page)


def write_directions(folder: Path, found: Directions, inputs) -> None:
    """Writes directions.csv, directions.npz, directions.json and (with ``inputs.report``)
    directions.html into ``folder``."""
    with open(folder / "directions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in found.rows:
            writer.writerow([_cell(row, column) for column in CSV_COLUMNS])
    with open(folder / "directions.npz", "wb") as f:
        np.savez(f, **{name: getattr(found, field) for name, field in NPZ_FIELDS.items()})
    summary = {
        "layer": found.layer,
        "dataset": str(inputs.dataset.directory),
        "images": inputs.dataset.num_images,
        "settings": dataclasses.asdict(found.settings),
        "seconds": found.seconds,
        **inputs.source.provenance,
        "concepts": found.rows,
    }
    (folder / "directions.json").write_text(json.dumps(summary, indent=1))
    if inputs.report:
        write_html(folder / "directions.html", found, inputs.dataset)


# directions.npz's arrays: {name in the file: Directions field}.
NPZ_FIELDS = {
    "labels": "labels",
    "names": "names",
    "weights": "weights",
    "bias": "bias",
    "thresholds": "thresholds",
    "mean": "mean",
    "scale": "scale",
    "unit_thresholds": "unit_thresholds",
    "train_images": "train_rows",
    "heldout_images": "heldout_rows",
    "losses": "losses",
}


def read_directions(folder: Path, dataset) -> Directions:
    """The ``Directions`` of a finished run from its files."""
    summary = json.loads((folder / "directions.json").read_text())
    with np.load(folder / "directions.npz") as arrays:
        fields = {field: arrays[name] for name, field in NPZ_FIELDS.items()}
    fields["names"] = tuple(str(name) for name in fields["names"])
    return Directions(
        layer=summary["layer"],
        rows=summary["concepts"],
        settings=DirectionConfig(**summary["settings"]),
        seconds=summary["seconds"],
        **fields,
    )
