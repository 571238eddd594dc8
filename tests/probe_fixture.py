"""A small Broden-format probe set with every corner the reader and tally must handle,
and a slow, obvious NumPy loop implementing DESIGN.md's rules as the reference.

The fixture has: several planes per category (part has two), image-level labels (scene,
texture) with scene "0" rows, label numbers above 255 (so the PNG's G channel matters),
a label listed in two categories, and index.csv columns in another order than category.csv.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxdissect.data.broden_writer import ProbeImage, write_broden

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
COLUMN_ORDER = ("scene", "part", "texture", "object", "color", "material")
PIXEL = ("color", "object", "part", "material")

# Label numbers per category; several are above 255. Label 260 is both an object and a
# part (part has the larger coverage, so part is its primary category); label 7 is both
# color and material with equal coverage (the later category, material, wins the tie).
LABELS = {
    "color": [1, 2, 3, 7],
    "object": [10, 11, 12, 260, 300],
    "part": [20, 21, 260, 301, 302],
    "material": [7, 30, 31],
    "scene": [40, 41, 280],
    "texture": [50, 51, 290],
}
COVERAGE_OVERRIDES = {
    ("object", 260): 0.3,
    ("part", 260): 0.6,
    ("color", 7): 0.5,
    ("material", 7): 0.5,
}
EXPECTED_PRIMARY = {260: "part", 7: "material"}


@dataclasses.dataclass
class Probe:
    directory: Path
    planes: list[list[np.ndarray]]  # per image, every pixel-level plane
    scalars: list[list[int]]  # per image, image-level labels (0 included as written)
    label_category: np.ndarray  # expected primary category index per label (-1: none)
    categories: tuple[str, ...]
    num_labels: int
    label_size: tuple[int, int]


def expected_label_category(categories=CATEGORIES) -> np.ndarray:
    num_labels = 303
    result = np.full(num_labels, -1, np.int32)
    for index, category in enumerate(categories):
        for label in LABELS[category]:
            primary = EXPECTED_PRIMARY.get(label)
            if primary is None or primary == category or primary not in categories:
                result[label] = index
    return result


def make_probe(
    directory: Path, num_images: int = 12, image_size=(32, 32), label_size=(16, 16), seed=0
) -> Probe:
    rng = np.random.default_rng(seed)
    label_names = ["-"] + [f"label-{i}" for i in range(1, 303)]
    images, all_planes, all_scalars = [], [], []
    for i in range(num_images):
        planes, scalars = {}, {}
        for category in PIXEL:
            count = 2 if category == "part" else 1
            if category == "material" and i % 3 == 0:
                count = 0  # some images carry no material plane
            planes[category] = []
            for _ in range(count):
                choices = np.array([0, *LABELS[category]])
                # Blocky planes so that labels form regions, with some pixels unlabelled.
                coarse = rng.choice(choices, size=(label_size[0] // 4, label_size[1] // 4))
                plane = np.kron(coarse, np.ones((4, 4), np.int64))
                plane[rng.random(label_size) < 0.1] = 0
                planes[category].append(plane)
        scalars["scene"] = [0] if i % 4 == 0 else [int(rng.choice(LABELS["scene"]))]
        scalars["texture"] = [
            int(t) for t in rng.choice(LABELS["texture"], size=i % 3, replace=False)
        ]
        pixels = rng.integers(0, 256, size=(*image_size, 3), dtype=np.uint8)
        images.append(ProbeImage(f"fixture/{i:04d}", pixels, planes, scalars))
        all_planes.append([p for c in PIXEL for p in planes[c]])
        all_scalars.append([s for c in ("scene", "texture") for s in scalars[c]])
    write_broden(
        directory, CATEGORIES, label_names, LABELS, images, COLUMN_ORDER, COVERAGE_OVERRIDES
    )
    return Probe(
        directory,
        all_planes,
        all_scalars,
        expected_label_category(),
        CATEGORIES,
        len(label_names),
        label_size,
    )


def dyadic_features(num_images, shape, seed=1) -> np.ndarray:
    """Activations on a grid of quarters: bilinear upsampling by powers of two is then exact
    in float32 and float64 alike, so the reference and the kernel see identical masks."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-16, 17, size=(num_images, *shape)) / 4).astype(np.float32)


def reference_upsample(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear resize of one (h, w) map, pixel by pixel, in float64."""
    h, w = a.shape
    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        sy = min(max((y + 0.5) * h / out_h - 0.5, 0.0), h - 1)
        y0 = int(np.floor(sy))
        y1 = min(y0 + 1, h - 1)
        wy = sy - y0
        for x in range(out_w):
            sx = min(max((x + 0.5) * w / out_w - 0.5, 0.0), w - 1)
            x0 = int(np.floor(sx))
            x1 = min(x0 + 1, w - 1)
            wx = sx - x0
            out[y, x] = (
                (1 - wy) * (1 - wx) * a[y0, x0]
                + (1 - wy) * wx * a[y0, x1]
                + wy * (1 - wx) * a[y1, x0]
                + wy * wx * a[y1, x1]
            )
    return out


def pil_upsample(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """NetDissect-Lite's upsampling: PIL's bilinear resize of a float32 map."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(a, np.float32))
    return np.asarray(image.resize((out_w, out_h), Image.BILINEAR))


def reference_tally(features, thresholds, probe: Probe, union: str, upsample=None):
    """G, I, A by DESIGN.md's words, one image, unit, plane and pixel at a time; maps are
    upsampled by ``upsample(map, sh, sw)`` (default ``reference_upsample``, in float64)."""
    upsample = upsample or (lambda a, h, w: reference_upsample(a.astype(np.float64), h, w))
    num_images, _, _, units = features.shape
    num_categories = len(probe.categories)
    cat = probe.label_category
    sh, sw = probe.label_size
    G = np.zeros(probe.num_labels, np.int64)
    I = np.zeros((units, probe.num_labels), np.int64)
    A = np.zeros((units, num_categories), np.int64)
    for i in range(num_images):
        planes = probe.planes[i]
        scalars = [s for s in probe.scalars[i] if s != 0]
        for plane in planes:
            for label in plane.ravel():
                if label:
                    G[label] += 1
        for s in scalars:
            G[s] += sh * sw
        present = {cat[l] for p in planes for l in np.unique(p) if l and cat[l] >= 0}
        present |= {cat[s] for s in scalars if cat[s] >= 0}
        for u in range(units):
            mask = upsample(features[i, :, :, u], sh, sw) > thresholds[u]
            area = int(mask.sum())
            hit = set()
            for plane in planes:
                for label in plane[mask]:
                    if label:
                        I[u, label] += 1
                        if cat[label] >= 0:
                            hit.add(cat[label])
            for s in scalars:
                I[u, s] += area
                if cat[s] >= 0:
                    hit.add(cat[s])
            counted = present if union == "paper" else hit
            for c in counted:
                A[u, c] += area
    return G, I, A
