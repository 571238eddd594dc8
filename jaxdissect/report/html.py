"""NetDissect-style HTML reports, self-contained (no network; images as files beside them).

Per layer, ``OUT/report.html``: "k/U units covering m concepts with IoU > t", the unique
detectors as a bar graph (SVG, bars grouped and coloured by category), and one card per
unit (label, category, IoU, and its most activating images shown as image * (0.2 + 0.8 *
mask), the mask at the tile's resolution), sortable by label, IoU or unit; units below the
threshold are dimmed. Each distinct top image is reduced and encoded once (64 to a JPEG
sheet in ``OUT/report/``); the page's script draws each unit's masks from its maps, which
the card carries, so no tile is composited here. For a run with several layers,
``OUT/index.html`` compares them.
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import hashlib
import html
import json
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
SHEET = 8  # thumbnails are encoded SHEET x SHEET to a JPEG file: 64 per encode, not one


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8: ``image`` reduced by ``height // TILE`` when that is 2 or more."""
    factor = image.shape[0] // TILE
    if factor < 2:
        return np.asarray(image)
    return np.asarray(Image.fromarray(np.asarray(image)).reduce(factor))


# Its coefficients are computed in Python loops: once per size, not once per strip.
_resize_matrix = functools.lru_cache(resize_matrix)


def _cell(size: int) -> int:
    """A thumbnail's cell in a sheet: a multiple of 16 pixels, so that no JPEG block (16 x 16
    with 4:2:0 chroma) holds two images."""
    return -(-size // 16) * 16


def write_sheet(path: Path, tiles: list[np.ndarray]) -> None:
    """Saves up to SHEET**2 thumbnails of one size as a grid of cells (row-major)."""
    height, width = tiles[0].shape[:2]
    rows = -(-len(tiles) // SHEET)
    sheet = np.full((rows * _cell(height), SHEET * _cell(width), 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        y, x = (i // SHEET) * _cell(height), (i % SHEET) * _cell(width)
        sheet[y : y + height, x : x + width] = tile
    Image.fromarray(sheet).save(path, quality=85)  # JPEG: photographs


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
# Besides sorting, it draws each unit's masks when its card comes near the viewport: the
# maps (float32, base64) upsampled with the coefficients on #cards (PIL's bilinear ones,
# float64, as the CPU tally's) and compared with the unit's threshold; outside the mask a
# black overlay at 0.8 opacity dims the images to 20 %.
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

function drawMask(canvas, rows, cols) {
  const bytes = Uint8Array.from(atob(canvas.dataset.maps), c => c.charCodeAt(0));
  const maps = new DataView(bytes.buffer);
  const threshold = parseFloat(canvas.dataset.threshold);
  const tileH = rows.length, h = rows[0].length, tileW = cols.length, w = cols[0].length;
  const overlay = new ImageData(canvas.width, canvas.height);
  const across = new Float64Array(tileH * w);
  for (let tile = 0; tile < bytes.length / (4 * h * w); tile++) {
    const first = tile * h * w, left = tile * (tileW + 2);
    for (let y = 0; y < tileH; y++)
      for (let x = 0; x < w; x++) {
        let sum = 0;
        for (let i = 0; i < h; i++) sum += rows[y][i] * maps.getFloat32(4 * (first + i * w + x), true);
        across[y * w + x] = sum;
      }
    for (let y = 0; y < tileH; y++)
      for (let x = 0; x < tileW; x++) {
        let sum = 0;
        for (let j = 0; j < w; j++) sum += across[y * w + j] * cols[x][j];
        if (!(sum > threshold)) overlay.data[4 * (y * canvas.width + left + x) + 3] = 204;
      }
  }
  canvas.getContext("2d").putImageData(overlay, 0, 0);
  canvas.dataset.drawn = "1";
}
const box = document.getElementById("cards");
if (box.dataset.rows) {
  const rows = JSON.parse(box.dataset.rows), cols = JSON.parse(box.dataset.cols);
  const observer = new IntersectionObserver(entries => entries.forEach(entry => {
    if (!entry.isIntersecting) return;
    observer.unobserve(entry.target);
    drawMask(entry.target, rows, cols);
  }), {rootMargin: "600px"});
  document.querySelectorAll("canvas.mask").forEach(canvas => observer.observe(canvas));
}
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
.card {{ border: 1px solid #ccc; border-radius: 4px; padding: 6px; overflow-x: auto; }}
.card.dim {{ opacity: 0.45; }}
.strip {{ position: relative; display: flex; }}
.strip span {{ flex: none; background-repeat: no-repeat; image-rendering: pixelated; }}
.strip canvas {{ position: absolute; left: 0; top: 0; width: 100%; height: 100%;
  image-rendering: pixelated; }}
{tile_style}
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
<div class="cards" id="cards"{coefficients}>
{cards}
</div>
<script>{script}</script>
</body></html>
"""


def write_layer_report(out: str | Path, images: np.ndarray | None) -> Path:
    """Writes OUT/report.html (and OUT/report/images-*.jpg) from OUT/results.json and counts.npz.

    Each distinct top image is reduced and encoded once, 64 to a JPEG sheet; a unit's card
    shows its top images from the sheets and carries their activation maps (float32, k x h
    x w, base64) and its threshold, from which the page's script draws the masks.

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
    folder = out / "report"
    strips, tile_style, coefficients = {}, "", ""
    if "top_indices" in counts:
        strips, tile_style, coefficients = _draw_strips(
            folder, images, counts["top_indices"], counts["top_maps"], thresholds
        )
    cards = []
    for row in results["units"]:
        unit = row["unit"]
        dim = "" if row["score"] > threshold else " dim"
        # read_results checked the types: unit is an int, score a finite float.
        cards.append(
            f'<div class="card{dim}" data-unit="{unit:d}" data-iou="{row["score"]:.6f}" '
            f'data-label="{html.escape(row["label"])}"><div class="meta"><b>unit {unit:d}</b> '
            f"&middot; {html.escape(row['label'])} ({html.escape(row['category'])}) "
            f"&middot; IoU {row['score']:.3f}</div>{strips.get(unit, '')}</div>"
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
        tile_style=tile_style,
        coefficients=coefficients,
        cards="\n".join(cards),
    )
    path = out / "report.html"
    write_text_atomic(path, page)
    return path


def _draw_strips(
    folder: Path,
    images: np.ndarray,
    top_indices: np.ndarray,
    top_maps: np.ndarray,
    thresholds: np.ndarray,
) -> tuple[dict[int, str], str, str]:
    """Writes the sheets of the distinct top images into ``folder``; returns {unit: its
    strip's HTML}, the tiles' CSS rule and the #cards attributes holding the upsampling
    coefficients. Every value written into the HTML is a number or base64."""
    shown = np.unique(top_indices[top_indices >= 0])
    if not len(shown):
        return {}, "", ""
    # Made only for sheets: an empty folder is in no manifest, and would keep the set.
    folder.mkdir(exist_ok=True)
    height, width = thumbnail(images[shown[0]]).shape[:2]
    per_sheet = SHEET * SHEET

    def sheet(number: int) -> None:
        chosen = shown[number * per_sheet : (number + 1) * per_sheet]
        write_sheet(folder / f"images-{number:04d}.jpg", [thumbnail(images[i]) for i in chosen])

    # Pillow's reduce and JPEG encoder release the GIL: one sheet per core.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(sheet, range(-(-len(shown) // per_sheet))))

    scale = max(1, -(-MIN_TILE // height))
    where = {image: position for position, image in enumerate(shown.tolist())}
    strips = {}
    for unit in range(1, len(top_indices) + 1):
        keep = top_indices[unit - 1] >= 0
        chosen = top_indices[unit - 1][keep].tolist()
        if not chosen:
            continue
        tiles = []
        for image in chosen:
            number, cell = divmod(where[image], per_sheet)
            y, x = (cell // SHEET) * _cell(height) * scale, (cell % SHEET) * _cell(width) * scale
            tiles.append(
                f'<span style="background-image:url(report/images-{number:04d}.jpg);'
                f'background-position:-{x}px -{y}px"></span>'
            )
        maps = np.ascontiguousarray(top_maps[unit - 1][keep], "<f4")
        strip_width = len(chosen) * (width + 2) - 2
        strips[unit] = (
            f'<div class="strip" role="img" aria-label="top images of unit {unit:d}" '
            f'style="width:{strip_width * scale}px">{"".join(tiles)}'
            f'<canvas class="mask" width="{strip_width}" height="{height}" '
            f'data-threshold="{float(thresholds[unit - 1])!r}" '
            f'data-maps="{base64.b64encode(maps.tobytes()).decode()}"></canvas></div>'
        )
    tile_style = (
        f".strip {{ gap: {2 * scale}px; }}\n.strip span {{ width: {width * scale}px; "
        f"height: {height * scale}px; background-size: {SHEET * _cell(width) * scale}px auto; }}"
    )
    rows = _resize_matrix(height, top_maps.shape[2]).tolist()
    cols = _resize_matrix(width, top_maps.shape[3]).tolist()
    coefficients = f' data-rows="{json.dumps(rows)}" data-cols="{json.dumps(cols)}"'
    return strips, tile_style, coefficients


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
