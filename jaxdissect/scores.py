"""IoU scores, unit labels and the unique-detector summaries, on the host in float64.

These run once per dissection on small (U, L) arrays, so they are plain NumPy: exact
float64 IoUs make "first wins on ties" well defined and identical everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class UnitLabels(NamedTuple):
    """Best labels per unit.

    Attributes:
      category_label: (U, C) int, best label of each category (-1 if it has no labels).
      category_iou: (U, C) float64, that label's IoU (0 where the category has none).
      label: (U,) int, the unit's label: the best over categories (first category on ties).
      category: (U,) int, the category index of that label.
      score: (U,) float64, its IoU.
    """

    category_label: np.ndarray
    category_iou: np.ndarray
    label: np.ndarray
    category: np.ndarray
    score: np.ndarray


def iou(
    label_area: np.ndarray,
    intersection: np.ndarray,
    unit_area: np.ndarray,
    label_category: np.ndarray,
) -> np.ndarray:
    """IoU[u, l] = I[u, l] / (A[u, cat(l)] + G[l] - I[u, l]).

    Args:
      label_area: (L,) G counts.
      intersection: (U, L) I counts.
      unit_area: (U, C) A counts.
      label_category: (L,) primary category of each label, -1 for none.

    Returns:
      (U, L) float64; 0 for labels without a category and for empty unions.
    """
    label_area = np.asarray(label_area, np.float64)
    intersection = np.asarray(intersection, np.float64)
    unit_area = np.asarray(unit_area, np.float64)
    label_category = np.asarray(label_category)
    has_category = label_category >= 0
    activation = unit_area[:, np.where(has_category, label_category, 0)]
    union = activation + label_area[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.where(union > 0, intersection / union, 0.0)
    return np.where(has_category[None, :], scores, 0.0)


def label_units(scores: np.ndarray, label_category: np.ndarray, num_categories: int) -> UnitLabels:
    """Each unit's best label per category and overall (first wins on ties)."""
    units = scores.shape[0]
    label_category = np.asarray(label_category)
    category_label = np.full((units, num_categories), -1, np.int64)
    category_iou = np.zeros((units, num_categories), np.float64)
    for c in range(num_categories):
        members = np.flatnonzero(label_category == c)
        if members.size == 0:
            continue
        best = np.argmax(scores[:, members], axis=1)
        category_label[:, c] = members[best]
        category_iou[:, c] = scores[np.arange(units), members[best]]
    best_category = np.argmax(category_iou, axis=1)
    rows = np.arange(units)
    return UnitLabels(
        category_label=category_label,
        category_iou=category_iou,
        label=category_label[rows, best_category],
        category=best_category,
        score=category_iou[rows, best_category],
    )


def summarize(
    categories: list[str],
    unit_category: list[str],
    unit_label: list[str],
    score: np.ndarray,
    category_label: list[list[str]],
    category_iou: np.ndarray,
    iou_threshold: float = 0.04,
) -> dict:
    """Detectors and unique detectors under both counting rules.

    Args:
      categories: category names, in order.
      unit_category, unit_label, score: each unit's top label, its category and IoU.
      category_label: per unit, the best label name of each category.
      category_iou: (U, C) that label's IoU.
      iou_threshold: a unit (or a category's label) counts when its IoU is strictly above.

    Returns:
      {"units", "iou_threshold", "detectors", "detectors_per_category",
       "unique_top_label": {"total", "per_category"},
       "unique_per_category": {"total", "per_category"}}.
      Top-label rule: distinct unit labels among units with score > threshold.
      Per-category rule: per category, distinct best labels with IoU > threshold; summed.
    """
    score = np.asarray(score, np.float64)
    category_iou = np.asarray(category_iou, np.float64)
    detector = score > iou_threshold
    top_label = {c: set() for c in categories}
    detectors_per_category = dict.fromkeys(categories, 0)
    for u in np.flatnonzero(detector):
        top_label[unit_category[u]].add(unit_label[u])
        detectors_per_category[unit_category[u]] += 1
    per_category = {}
    for c, name in enumerate(categories):
        hits = np.flatnonzero(category_iou[:, c] > iou_threshold)
        per_category[name] = len({category_label[u][c] for u in hits})
    top_counts = {name: len(labels) for name, labels in top_label.items()}
    return {
        "units": int(score.shape[0]),
        "iou_threshold": float(iou_threshold),
        "detectors": int(detector.sum()),
        "detectors_per_category": detectors_per_category,
        "unique_top_label": {"total": sum(top_counts.values()), "per_category": top_counts},
        "unique_per_category": {
            "total": sum(per_category.values()),
            "per_category": per_category,
        },
    }
