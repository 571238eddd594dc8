"""NetDissect-style HTML reports, self-contained (no network; images as files beside them).

Per layer, ``OUT/report.html``: "k/U units covering m concepts with IoU > t", the unique
detectors as a bar graph (SVG, bars grouped and coloured by category), and one card per
unit (label, category, IoU, and its most activating images shown as image * (0.2 + 0.8 *
mask), the mask at image resolution), sortable by label, IoU or unit; units below the
threshold are dimmed. For a run with several layers, ``OUT/index.html`` compares them.
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import hashlib
import html
import os
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from jaxdissect.report.results import write_text_atomic
from jaxdissect.report.schema import read_counts, read_results
from jaxdissect.stats.upsample import resize_matrix

CATEGORY_COLORS = {
    "object": "#4e79a7",
    "part": "#f28e2b",
    "scene": "#59a14f",
    "material": "#b07aa1",
    "texture": "#edc948",
    "color": "#e15759",
}
MIN_TILE = 96  # small probe images are enlarged (nearest) so that the strips stay legible
TILE = 112  # larger ones are reduced (box filter, by an integer factor) to about this height


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8: ``image`` reduced by ``height // TILE`` when that is 2 or more."""
    factor = image.shape[0] // TILE
    if factor < 2:
        return np.asarray(image)
    return np.asarray(Image.fromarray(np.asarray(image)).reduce(factor))


# Its coefficients are computed in Python loops: once per size, not once per strip.
_resize_matrix = functools.lru_cache(resize_matrix)


def unit_strip(images: np.ndarray, maps: np.ndarray, threshold: float) -> Image.Image:
    """(H, k*W) RGB: each image, dimmed to 20 % outside its mask, mask = upsampled map >
    threshold (upsampled to the tile's size: ``images`` are the thumbnails drawn)."""
    count, height, width = images.shape[:3]
    rows = _resize_matrix(height, maps.shape[1])
    cols = _resize_matrix(width, maps.shape[2])
    masks = (rows @ maps.astype(np.float64) @ cols.T) > threshold  # (k, H, W)
    strip = np.full((height, count * (width + 2) - 2, 3), 255, np.uint8)
    shown = np.full(strip.shape[:2], 255, np.uint8)  # the gaps stay white
    for i in range(count):
        columns = slice(i * (width + 2), i * (width + 2) + width)
        strip[:, columns] = images[i]
        shown[:, columns] = masks[i] * np.uint8(255)
    # Pillow's C loops: a lookup table and a composite, ten times NumPy's broadcasting here.
    image = Image.fromarray(strip)
    image = Image.composite(image, image.point(_DIM), Image.fromarray(shown))
    scale = max(1, -(-MIN_TILE // height))
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


_DIM = [v // 5 for v in range(256)] * 3  # x 0.2, per band


def bar_graph_counts(results: dict) -> list[tuple[str, str, int]]:
    """(category, label, units) for every unique detector label (top-label rule)."""
    threshold = results["summary"]["iou_threshold"]
    counts = Counter(
        (row["category"], row["label"]) for row in results["units"] if row["score"] > threshold
    )
    order = {c: i for i, c in enumerate(results["categories"])}
    return sorted(
        ((c, label, n) for (c, label), n in counts.items()),
        key=lambda x: (order[x[0]], -x[2], x[1]),
    )


def bar_graph_svg(bars: list[tuple[str, str, int]]) -> str:
    if not bars:
        return "<p>No unit detects a concept above the threshold.</p>"
    bar, gap, top, height = 14, 3, 10, 120
    tallest = max(n for _, _, n in bars)
    width = len(bars) * (bar + gap) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 110}" '
        'role="img" aria-label="unique detectors per label">'
    ]
    for i, (category, label, count) in enumerate(bars):
        x = 30 + i * (bar + gap)
        h = height * count / tallest
        color = CATEGORY_COLORS.get(category, "#888")
        parts.append(
            f'<rect class="bar" data-category="{html.escape(category)}" '
            f'data-count="{count}" x="{x}" y="{top + height - h:.1f}" width="{bar}" '
            f'height="{h:.1f}" fill="{color}"><title>{html.escape(label)} '
            f"({html.escape(category)}): {count} units</title></rect>"
        )
        parts.append(
            f'<text x="{x + bar / 2}" y="{top + height + 6}" font-size="10" '
            f'transform="rotate(60 {x + bar / 2} {top + height + 6})">'
            f"{html.escape(label)}</text>"
        )
    parts.append(f'<text x="2" y="{top + 10}" font-size="10">{tallest}</text></svg>')
    return "".join(parts)


# The report's one script, allowed by its hash in the page's Content-Security-Policy: no
# other script (say, markup smuggled into a label) runs, even if something went unescaped.
SCRIPT = """
function sortCards(key) {
  const box = document.getElementById("cards");
  const cards = Array.from(box.children);
  cards.sort((a, b) => {
    if (key === "iou") return parseFloat(b.dataset.iou) - parseFloat(a.dataset.iou);
    if (key === "unit") return parseInt(a.dataset.unit) - parseInt(b.dataset.unit);
    return a.dataset.label.localeCompare(b.dataset.label) || parseFloat(b.dataset.iou) - parseFloat(a.dataset.iou);
  });
  cards.forEach(card => box.appendChild(card));
}
document.querySelectorAll("button[data-key]").forEach(button =>
  button.addEventListener("click", () => sortCards(button.dataset.key)));
"""


def content_security_policy(script: str | None = None) -> str:
    """A CSP meta tag for a page of ours: no network, no forms, styles inline, images from
    files or data: URLs, and no script but ``script`` (allowed by its SHA-256)."""
    scripts = "'none'"
    if script is not None:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        scripts = f"'sha256-{digest}'"
    policy = (
        f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; "
        "img-src 'self' data: file:; base-uri 'none'; form-action 'none'"
    )
    return f'<meta http-equiv="Content-Security-Policy" content="{policy}">'


PAGE = """<!doctype html>
<html><head><meta charset="utf-8">{csp}<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.cards {{ display: flex; flex-direction: column; gap: 8px; }}
.card {{ border: 1px solid #ccc; border-radius: 4px; padding: 6px; }}
.card.dim {{ opacity: 0.45; }}
.card img {{ display: block; max-width: 100%; image-rendering: pixelated; }}
.meta {{ font-size: 14px; margin-bottom: 4px; }}
.legend span {{ display: inline-block; padding: 1px 6px; margin-right: 6px; color: white; }}
button {{ margin-right: 4px; }}
</style></head><body>
<h1>{title}</h1>
<h2 id="headline">{headline}</h2>
<div class="legend">{legend}</div>
{bars}
<p>Sort units by:
<button id="sort-label" data-key="label">label</button>
<button id="sort-iou" data-key="iou">IoU</button>
<button id="sort-unit" data-key="unit">unit</button></p>
<div class="cards" id="cards">
{cards}
</div>
<script>{script}</script>
</body></html>
"""


def write_layer_report(out: str | Path, images: np.ndarray | None) -> Path:
    """Writes OUT/report.html (and OUT/report/*.jpg) from OUT/results.json and counts.npz.

    Args:
      out: a dissection's output folder. Nothing in it is removed: ``dissect`` and the
        ``report`` command write each report into a fresh set folder (``outdir``).
      images: the probe images (N, H, W, 3) uint8, to draw each unit's top images; None
        draws the cards without them.
    """
    out = Path(out)
    results = read_results(out)
    threshold = results["summary"]["iou_threshold"]
    thresholds = np.asarray(results["thresholds"], np.float32)
    counts = {}
    if images is not None:
        counts = read_counts(out, len(thresholds), len(images))
    strips = out / "report"
    strips.mkdir(exist_ok=True)
    has_tops = "top_indices" in counts
    top_indices = counts["top_indices"] if has_tops else None
    top_maps = counts["top_maps"] if has_tops else None

    thumbnails = {}

    def strip_file(unit: int) -> str | None:
        """Draws and saves one unit's strip (JPEG: photographs, encoded 10x faster than PNG)."""
        chosen = top_indices[unit - 1]
        keep = chosen >= 0
        if not keep.any():
            return None
        tiles = np.stack([thumbnails[i] for i in chosen[keep]])
        strip = unit_strip(tiles, top_maps[unit - 1][keep], thresholds[unit - 1])
        name = f"unit-{unit:04d}.jpg"
        strip.save(strips / name, quality=85)
        return name

    units = [row["unit"] for row in results["units"]]
    files = {}
    if has_tops:  # NumPy, Pillow and the encoder release the GIL: one strip per core
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
            shown = np.unique(top_indices[top_indices >= 0])  # each image reduced once
            thumbnails.update(
                zip(shown, pool.map(lambda i: thumbnail(images[i]), shown), strict=True)
            )
            files = dict(zip(units, pool.map(strip_file, units), strict=True))
    cards = []
    for row in results["units"]:
        unit = row["unit"]
        name = files.get(unit)
        image_html = f'<img src="report/{name}" alt="top images of unit {unit:d}">' if name else ""
        dim = "" if row["score"] > threshold else " dim"
        # read_results checked the types: unit is an int, score a finite float.
        cards.append(
            f'<div class="card{dim}" data-unit="{unit:d}" data-iou="{row["score"]:.6f}" '
            f'data-label="{html.escape(row["label"])}"><div class="meta"><b>unit {unit:d}</b> '
            f"&middot; {html.escape(row['label'])} ({html.escape(row['category'])}) "
            f"&middot; IoU {row['score']:.3f}</div>{image_html}</div>"
        )
    summary = results["summary"]
    bars = bar_graph_counts(results)
    headline = (
        f"{summary['detectors']:d}/{summary['units']:d} units covering "
        f"{summary['unique_top_label']['total']:d} concepts with IoU &gt; {threshold:g}"
    )
    legend = "".join(
        f'<span style="background:{CATEGORY_COLORS.get(c, "#888")}">{html.escape(c)}</span>'
        for c in results["categories"]
    )
    page = PAGE.format(
        csp=content_security_policy(SCRIPT),
        script=SCRIPT,
        title=html.escape(f"{results['layer']}: network dissection"),
        headline=headline,
        legend=legend,
        bars=bar_graph_svg(bars),
        cards="\n".join(cards),
    )
    path = out / "report.html"
    write_text_atomic(path, page)
    return path


def write_index(out: str | Path, layers: list[str]) -> Path:
    """OUT/index.html for several dissected layers (or checkpoints) in OUT/<name>/."""
    out = Path(out)
    rows = []
    for layer in layers:
        summary = read_results(out / layer)["summary"]
        units = max(summary["units"], 1)
        shares = " ".join(
            f"{html.escape(c)} {count / units:.0%}"
            for c, count in summary["detectors_per_category"].items()
        )
        link = html.escape(urllib.parse.quote(layer))
        rows.append(
            f'<tr><td><a href="{link}/report.html">{html.escape(layer)}</a>'
            f"</td><td>{summary['units']:d}</td><td>{summary['detectors']:d}</td>"
            f"<td>{summary['unique_top_label']['total']:d}</td>"
            f"<td>{summary['unique_per_category']['total']:d}</td><td>{shares}</td></tr>"
        )
    page = f"""<!doctype html><meta charset="utf-8">{content_security_policy()}<title>Dissection</title>
<style>body{{font-family:sans-serif;margin:1.5em}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd}}</style>
<h1>Interpretability by layer</h1>
<table><tr><th>layer</th><th>units</th><th>detectors</th><th>unique (top-label)</th>
<th>unique (per-category)</th><th>share of units detecting each category</th></tr>
{"".join(rows)}</table>"""
    path = out / "index.html"
    write_text_atomic(path, page)
    return path
