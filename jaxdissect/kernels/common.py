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


FLOAT32_MAX = float(np.finfo(np.float32).max)


def checked(
    acts: Mapping, shapes: Mapping[str, tuple[int, int, int]], count: int, start: int = 0
) -> Mapping:
    """A source's batch (images ``start`` on), checked against the declared shapes and,
    for wider floats, against float32's range (the passes compute in float32)."""
    for layer, shape in shapes.items():
        if layer not in acts:
            raise FeaturesError(f"the activation source gave no layer {layer!r}")
        got = tuple(acts[layer].shape)
        if got != (count, *shape):
            raise FeaturesError(
                f"layer {layer!r}: a batch has shape {got}, expected {(count, *shape)}"
            )
        _check_float32_range(acts[layer], layer, start)
    return acts


def _check_float32_range(acts, layer: str, start: int) -> None:
    """Wider floats past float32's range would become inf in the cast, and be reported as
    NaN or inf although the file holds neither: name the value and its image instead."""
    if acts.dtype.kind != "f" or acts.dtype.itemsize <= 4:
        return
    values = np.asarray(acts).reshape(len(acts), -1)
    beyond = (np.abs(values) > FLOAT32_MAX) & np.isfinite(values)
    if beyond.any():
        image = int(np.flatnonzero(beyond.any(1))[0])
        value = values[image][beyond[image]][0]
        raise FeaturesError(
            f"layer {layer!r}: activation {value:.6g} in image {start + image} (0-based, "
            f"index.csv order) is beyond float32's range (+-{FLOAT32_MAX:.6g}); "
            "the dissection computes in float32: rescale the features"
        )
