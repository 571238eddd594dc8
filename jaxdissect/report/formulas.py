"""Writing a layer's formulas into a set folder (``driver.run_analysis`` publishes it):
formulas.csv, formulas.json, formulas.npz (the searches' arrays, from which a finished run
is read back) and formulas.html (one self-contained page of cards: the formula, its IoU next
to the single label's, and the unit's most active images with the unit's mask and the
formula's mask)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from jaxdissect.compositional.formulas import (
    evaluate_tree,
    format_formula,
    program_tree,
    tree_length,
    unpack_bits,
)
from jaxdissect.compositional.search import Candidates, Explanations, SearchResult, iou_of
from jaxdissect.report.html import content_security_policy

CSV_COLUMNS = ("unit", "formula", "iou", "length", "certified", "bound")
CARD_IMAGES = 4


def _tree(explanations: Explanations, result, unit: int):
    """The formula tree of ``result``'s unit over label numbers."""
    rows = result.labels[unit]
    numbers = np.where(rows >= 0, explanations.concept_labels[np.maximum(rows, 0)], -1)
    return program_tree(numbers, result.ops[unit])


def formula_rows(explanations: Explanations) -> list[dict]:
    """One dict per unit (1-based): the reported formula and what the JSON records."""
    names = explanations.label_names
    candidates = explanations.candidates
    single_iou = iou_of(candidates.intersection[:, 0], candidates.area[:, 0], candidates.unit_area)
    single_label = explanations.concept_labels[candidates.rows[:, 0]]
    rows = []
    for unit in range(len(explanations.result.iou)):
        result = explanations.result
        tree = _tree(explanations, result, unit)
        row = {
            "unit": unit + 1,
            "formula": format_formula(tree, names),
            "iou": float(result.iou[unit]),
            "length": tree_length(tree),
            "certified": bool(result.certified[unit]),
            "bound": None if np.isnan(result.bound[unit]) else float(result.bound[unit]),
            "intersection": int(result.intersection[unit]),
            "formula_area": int(result.area[unit]),
            "unit_area": int(candidates.unit_area[unit]),
            "threshold": float(explanations.thresholds[unit]),
            "single_label": names[single_label[unit]],
            "single_iou": float(single_iou[unit]),
            "expansions": int(result.expansions[unit]),
        }
        if explanations.exact is not None:
            beam_tree = _tree(explanations, explanations.beam, unit)
            row["beam_formula"] = format_formula(beam_tree, names)
            row["beam_iou"] = float(explanations.beam.iou[unit])
            row["beam_gap"] = float(result.iou[unit] - explanations.beam.iou[unit])
        rows.append(row)
    return rows


def _png(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _overlay(image: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
    """The image dimmed outside ``mask`` (label resolution, enlarged to the image's size)
    and tinted with ``color`` inside."""
    height, width = image.shape[:2]
    big = np.kron(mask, np.ones((height // mask.shape[0], width // mask.shape[1]), bool))
    big = np.pad(big, ((0, height - big.shape[0]), (0, width - big.shape[1])))
    out = image.astype(np.float32) * np.where(big, 0.7, 0.25)[..., None]
    out += np.where(big[..., None], np.asarray(color, np.float32) * 0.3, 0)
    return np.clip(out, 0, 255).astype(np.uint8)


def unit_card_masks(explanations: Explanations, unit: int, label_size, count: int = CARD_IMAGES):
    """The unit's ``count`` images with the most mask pixels: (indices, unit masks,
    formula masks), masks (count, sh, sw) bool, the formula's from its concepts' masks."""
    problem = explanations.problem
    pixels = int(np.prod(label_size))
    words = -(-pixels // 32)
    num_images = problem.pixels // pixels
    unit_masks = unpack_bits(problem.unit_bits[unit].reshape(-1, words)[:num_images], pixels)
    top = np.argsort(-unit_masks.sum(1), kind="stable")[:count]
    rows = explanations.result.labels[unit]
    tree = program_tree(rows, explanations.result.ops[unit])
    concepts = {
        int(row): unpack_bits(problem.concept_bits[row].reshape(-1, words)[top], pixels)
        for row in rows[rows >= 0]
    }
    formula = evaluate_tree(tree, concepts)
    shape = (len(top), *label_size)
    return top, unit_masks[top].reshape(shape), formula.reshape(shape)


def write_html(path: Path, explanations: Explanations, rows: list[dict], dataset, images) -> None:
    cards = []
    for row in rows:
        unit = row["unit"] - 1
        strip = ""
        if images is not None:
            top, unit_masks, formula_masks = unit_card_masks(explanations, unit, dataset.label_size)
            pictures = []
            for index, unit_mask, formula_mask in zip(top, unit_masks, formula_masks, strict=True):
                image = np.asarray(images[index])
                pair = np.concatenate(
                    [
                        _overlay(image, unit_mask, (255, 80, 80)),
                        _overlay(image, formula_mask, (80, 160, 255)),
                    ],
                    axis=0,
                )
                pictures.append(
                    f'<img src="data:image/png;base64,{_png(pair)}" '
                    f'alt="image {int(index)}: unit mask above, formula mask below">'
                )
            strip = f'<div class="strip">{"".join(pictures)}</div>'
        certified = "proved optimal" if row["certified"] else "not certified"
        bound = "" if row["bound"] is None else f", bound {row['bound']:.4f} ({certified})"
        beam = ""
        if "beam_formula" in row:
            beam = (
                f"<p>beam: <code>{html.escape(row['beam_formula'])}</code> IoU "
                f"{row['beam_iou']:.4f} (below the optimum by {row['beam_gap']:.4f})</p>"
            )
        cards.append(
            f'<div class="card"><h2>unit {row["unit"]}</h2>'
            f"<p><code>{html.escape(row['formula'])}</code> IoU {row['iou']:.4f}{bound}</p>"
            f"<p>single label: {html.escape(row['single_label'])} IoU {row['single_iou']:.4f}</p>"
            f"{beam}{strip}</div>"
        )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8">{content_security_policy()}<title>Formulas of {html.escape(explanations.layer)}</title>
<style>body{{font-family:sans-serif;margin:1em}}.card{{border:1px solid #ccc;margin:.5em 0;
padding:.5em}}.strip img{{margin-right:4px}}h2{{font-size:1em;margin:0}}</style></head><body>
<h1>Compositional explanations of {html.escape(explanations.layer)}</h1>
<p>Each card: the unit's best formula and its IoU over all pixels of all probe images, the
best single label's IoU, and the unit's most active images: the unit's mask (red, top) and
the formula's mask (blue, bottom).</p>
{"".join(cards)}
</body></html>
"""
    path.write_text(page)


def write_formulas(folder: Path, explanations: Explanations, inputs) -> None:
    """Writes formulas.csv, formulas.json, formulas.npz and (with ``inputs.report``)
    formulas.html into ``folder``."""
    dataset = inputs.dataset
    rows = formula_rows(explanations)
    with open(folder / "formulas.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    row["unit"],
                    row["formula"],
                    repr(row["iou"]),
                    row["length"],
                    "true" if row["certified"] else "false",
                    "" if row["bound"] is None else repr(row["bound"]),
                ]
            )
    summary = {
        "layer": explanations.layer,
        "dataset": str(dataset.directory),
        "images": dataset.num_images,
        "labels_per_unit": int(explanations.candidates.rows.shape[1]),
        "seconds": explanations.seconds,
        **inputs.source.provenance,
        "units": rows,
    }
    (folder / "formulas.json").write_text(json.dumps(summary, indent=1))
    with open(folder / "formulas.npz", "wb") as f:
        np.savez(f, **_arrays(explanations))
    if inputs.report:
        write_html(folder / "formulas.html", explanations, rows, dataset, inputs.images)


def _arrays(explanations: Explanations) -> dict[str, np.ndarray]:
    """The arrays ``read_formulas`` needs, by name."""
    arrays = {
        "thresholds": explanations.thresholds,
        "concept_labels": explanations.concept_labels,
        **{f"candidates.{k}": v for k, v in explanations.candidates._asdict().items()},
    }
    searches = {"beam": explanations.beam, "exact": explanations.exact}
    searches.update({f"shorter{n}": r for n, r in enumerate(explanations.shorter, start=1)})
    for name, result in searches.items():
        if result is not None:
            arrays.update({f"{name}.{k}": v for k, v in result._asdict().items()})
    return arrays


def read_formulas(folder: Path, dataset) -> Explanations:
    """The ``Explanations`` of a finished run from its files (without the packed masks:
    ``problem`` is None)."""
    summary = json.loads((folder / "formulas.json").read_text())
    with np.load(folder / "formulas.npz") as arrays:
        arrays = dict(arrays)

    def search(name: str) -> SearchResult | None:
        if f"{name}.iou" not in arrays:
            return None
        return SearchResult(*(arrays[f"{name}.{k}"] for k in SearchResult._fields))

    shorter = []
    while (result := search(f"shorter{len(shorter) + 1}")) is not None:
        shorter.append(result)
    beam, exact = search("beam"), search("exact")
    return Explanations(
        summary["layer"], dataset.label_names, arrays["thresholds"], arrays["concept_labels"],
        None, Candidates(*(arrays[f"candidates.{k}"] for k in Candidates._fields)),
        beam if exact is None else exact, beam, exact, tuple(shorter), summary["seconds"],
    )  # fmt: skip
