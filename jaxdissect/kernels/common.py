"""What both backends share: the report's top-image budget, the finiteness check, counts."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.errors import FeaturesError

INT32_MAX = np.iinfo(np.int32).max
TOP_MAPS_BUDGET = 256 * 2**20  # bytes of activation maps kept for the report, per layer


def top_images_kept(config: DissectConfig, shape: tuple[int, int, int]) -> int:
    """How many top images per unit a layer keeps: ``config.top_images``, fewer when their
    maps (U x k x h x w float32) would pass TOP_MAPS_BUDGET, at least one if any is wanted."""
    if not config.top_images:
        return 0
    per_image = 4 * shape[0] * shape[1] * shape[2]
    return max(1, min(config.top_images, TOP_MAPS_BUDGET // per_image))


def check_finite(first_bad: int, num_images: int, layer: str) -> None:
    """Raises naming the first image with a NaN or inf activation (INT32_MAX: none)."""
    index = int(first_bad)
    if index < num_images:
        raise FeaturesError(
            f"layer {layer!r}: NaN or inf activation in image {index} (0-based, index.csv order)"
        )


def zero_counts(units: int, dataset: BrodenDataset) -> list[np.ndarray]:
    """int64 host G (L,), I (U, L), A (U, C)."""
    return [
        np.zeros((dataset.num_labels,), np.int64),
        np.zeros((units, dataset.num_labels), np.int64),
        np.zeros((units, len(dataset.categories)), np.int64),
    ]


def checked(acts: Mapping, shapes: Mapping[str, tuple[int, int, int]], count: int) -> Mapping:
    """A source's batch, checked against the declared shapes."""
    for layer, shape in shapes.items():
        if layer not in acts:
            raise FeaturesError(f"the activation source gave no layer {layer!r}")
        got = tuple(acts[layer].shape)
        if got != (count, *shape):
            raise FeaturesError(
                f"layer {layer!r}: a batch has shape {got}, expected {(count, *shape)}"
            )
    return acts
