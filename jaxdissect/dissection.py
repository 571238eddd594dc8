"""What a dissection measures: pass 1's thresholds, and a layer's counts scored into IoU,
labels and a summary."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.stats import scores


class Thresholds(NamedTuple):
    """Pass 1's results for one layer.

    Attributes:
      thresholds: (U,) float32 per-unit thresholds.
      max_active: the most units of any one image whose map rises above its threshold:
        pass 2 upsamples only those, in a buffer of this size.
      top_indices: (U, k) int32 each unit's most activating images (by maximum), or None.
      top_maps: (U, k, h, w) float32 their activation maps, or None.
    """

    thresholds: np.ndarray
    max_active: int
    top_indices: np.ndarray | None = None
    top_maps: np.ndarray | None = None


class Dissection(NamedTuple):
    """Everything a dissection measured, on the host.

    Attributes:
      layer: the layer's name.
      thresholds: (U,) float32.
      label_area, intersection, unit_area: int64 G (L,), I (U, L), A (U, C).
      iou: (U, L) float64.
      labels: the units' best labels (``scores.UnitLabels``).
      summary: detectors and unique detectors under both rules.
      top_indices, top_maps: each unit's most activating images and maps (or None).
    """

    layer: str
    thresholds: np.ndarray
    label_area: np.ndarray
    intersection: np.ndarray
    unit_area: np.ndarray
    iou: np.ndarray
    labels: scores.UnitLabels
    summary: dict
    top_indices: np.ndarray | None = None
    top_maps: np.ndarray | None = None


def score_layer(
    layer: str,
    thresholds: Thresholds,
    counts: tuple[np.ndarray, np.ndarray, np.ndarray],
    dataset: BrodenDataset,
    config: DissectConfig,
) -> Dissection:
    """IoU, labels and summary from a layer's thresholds and (G, I, A) counts."""
    label_area, intersection, unit_area = counts
    # float64: tally.csv's IoUs, from the int64 host counts (which may pass 2**32).
    unit_iou = scores.iou(
        label_area, intersection, unit_area, dataset.label_category, dtype=np.float64
    )
    unit_labels = scores.label_units(unit_iou, dataset.label_category, len(dataset.categories))
    names = dataset.label_names
    summary = scores.summarize(
        list(dataset.categories),
        [dataset.categories[c] for c in unit_labels.category],
        [names[label] if label >= 0 else "" for label in unit_labels.label],
        unit_labels.score,
        [
            [names[label] if label >= 0 else "" for label in row]
            for row in unit_labels.category_label
        ],
        unit_labels.category_iou,
        config.iou_threshold,
    )
    return Dissection(
        layer=layer,
        thresholds=thresholds.thresholds,
        label_area=label_area,
        intersection=intersection,
        unit_area=unit_area,
        iou=unit_iou,
        labels=unit_labels,
        summary=summary,
        top_indices=thresholds.top_indices,
        top_maps=thresholds.top_maps,
    )
