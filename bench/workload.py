"""A Broden-scale workload without Broden: label planes and activations of Broden's shape.

Broden (broden1_224) has 63,305 images with 112x112 label planes, 1,198 labels (11 colours,
~584 objects, ~234 parts, ~32 materials, ~468 scenes, ~47 textures), about four pixel
planes per image (colour, object, part, material) and image-level scene and texture labels.
``broden_like`` draws blocky planes with those statistics, already in the decoded cache's
compact form, and ``relu_features`` draws sparse, skewed activations like a ReLU layer's.
"""

from __future__ import annotations

import numpy as np

from jaxdissect.data.cache import LabelArrays

CATEGORY_SIZES = {
    "color": 11,
    "object": 584,
    "part": 234,
    "material": 32,
    "scene": 468,
    "texture": 47,
}
CATEGORIES = tuple(CATEGORY_SIZES)


def label_ranges() -> dict[str, np.ndarray]:
    """Label numbers of each category (1..1198, in CATEGORIES order)."""
    ranges, start = {}, 1
    for category, size in CATEGORY_SIZES.items():
        ranges[category] = np.arange(start, start + size)
        start += size
    return ranges


def label_category() -> np.ndarray:
    """(1199,) category index per label (-1 for label 0)."""
    result = np.full(1 + sum(CATEGORY_SIZES.values()), -1, np.int32)
    for index, numbers in enumerate(label_ranges().values()):
        result[numbers] = index
    return result


def _blocky(rng, num_images, size, cell, slots, first_slot, empty):
    """(num_images, size, size) uint8 slot planes: cell x cell blocks of slots
    first_slot .. first_slot + slots - 1, with a share ``empty`` of blocks unlabelled."""
    cells = size // cell
    coarse = rng.integers(first_slot, first_slot + slots, (num_images, cells, cells))
    coarse[rng.random(coarse.shape) < empty] = 0
    return np.repeat(np.repeat(coarse.astype(np.uint8), cell, axis=1), cell, axis=2)


# Per pixel plane: (category, labels drawn per image, block size, share of empty blocks).
PLANES = (
    ("color", 6, 8, 0.0),
    ("object", 8, 16, 0.1),
    ("part", 4, 8, 0.6),
    ("material", 3, 16, 0.7),
)


def broden_like(num_images: int, seed: int = 0, size: int = 112) -> LabelArrays:
    """Compact labels (see ``LabelArrays``) with Broden's shape and rough statistics.

    Each image draws a few distinct labels per category (Zipf-like popularity, as in
    Broden) as its slots, and its planes are blocks of those slots.
    """
    rng = np.random.default_rng(seed)
    ranges = label_ranges()
    slot_labels = [np.zeros((num_images, 1), np.int32)]
    planes, first = [], 1
    for category, count, cell, empty in PLANES:
        numbers = ranges[category]
        weights = 1.0 / np.arange(1, len(numbers) + 1)
        keys = rng.random((num_images, len(numbers))) ** (1.0 / (weights / weights.sum()))
        chosen = np.argsort(-keys, axis=1)[:, :count]  # weighted sampling without replacement
        slot_labels.append(numbers[chosen].astype(np.int32))
        planes.append(_blocky(rng, num_images, size, cell, count, first, empty))
        first += count
    image_labels = np.zeros((num_images, 2), np.int32)
    has_scene = rng.random(num_images) < 0.6
    image_labels[has_scene, 0] = rng.choice(ranges["scene"], has_scene.sum())
    has_texture = rng.random(num_images) < 0.1
    image_labels[has_texture, 1] = rng.choice(ranges["texture"], has_texture.sum())
    return LabelArrays(np.stack(planes, axis=1), np.concatenate(slot_labels, axis=1), image_labels)


def relu_features(num_images: int, shape=(7, 7, 512), seed: int = 1) -> np.ndarray:
    """(N, h, w, U) float32 activations: ReLU of noise with log-normal per-image, per-unit gains.

    Values are multiples of 1/64 below 16, so bilinear upsampling by a power of two is exact
    in any summation order: the baseline's NumPy matmuls and XLA's einsum then produce the
    same masks bit for bit, and the counts can be compared for identity.
    """
    rng = np.random.default_rng(seed)
    height, width, units = shape
    gain = np.exp(0.5 * rng.standard_normal((num_images, 1, 1, units))).astype(np.float32)
    noise = rng.standard_normal((num_images, height, width, units), np.float32)
    values = np.clip(np.maximum(noise * gain - 0.5, 0), 0, 15.9)
    return (np.round(values * 64) / 64).astype(np.float32)
