"""IoU scores, unit labels and the unique-detector summaries.

``iou`` and ``label_units`` follow their inputs: NumPy arrays (the driver's int64 counts)
give exact float64 IoUs on the host; jax arrays (a ``TallyState``'s int32 counts, traced or
not) give float32 IoUs in pure jnp, so they run inside ``jax.jit``. ``summarize`` works on
names, on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxdissect import runtime
from jaxdissect.runtime import jnp


class UnitLabels(NamedTuple):
    """Best labels per unit; -1 (IoU 0) means no label.

    Attributes:
      category_label: (U, C) int, best label of each category; -1 where the category has
        no labels or all its IoUs are 0.
      category_iou: (U, C) float, that label's IoU (0 where there is none).
      label: (U,) int, the unit's label: the best over categories (first category on
        ties); -1 where every IoU is 0.
      category: (U,) int, the category index of that label (with no label, the first
        category: tally.csv keeps a category name whose columns all show IoU 0).
      score: (U,) float, its IoU.
    """

    category_label: np.ndarray
    category_iou: np.ndarray
    label: np.ndarray
    category: np.ndarray
    score: np.ndarray


def iou(label_area, intersection, unit_area, label_category):
    """IoU[u, l] = I[u, l] / (A[u, cat(l)] + G[l] - I[u, l]).

    Args:
      label_area: (L,) G counts.
      intersection: (U, L) I counts.
      unit_area: (U, C) A counts.
      label_category: (L,) primary category of each label, -1 for none.

    Returns:
      (U, L) IoUs; 0 for labels without a category and for empty unions. NumPy float64
      when the counts are NumPy (exact to float64 rounding), else a float32 jax.Array:
      the int32 counts' union is exact in uint32 (< 2**32), and I, the union and their
      quotient are each rounded once to float32, so it lies within 3 * 2**-24 (relative)
      of the float64 value; with unions below 2**24 only the quotient is rounded.
    """
    if any(runtime.is_array(x) for x in (label_area, intersection, unit_area)):
        return _iou_jax(label_area, intersection, unit_area, label_category)
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


def _iou_jax(label_area, intersection, unit_area, label_category):
    label_area = jnp.asarray(label_area, jnp.int32)
    intersection = jnp.asarray(intersection, jnp.int32)
    label_category = jnp.asarray(label_category, jnp.int32)
    has_category = label_category >= 0
    activation = jnp.asarray(unit_area, jnp.int32)[:, jnp.where(has_category, label_category, 0)]
    # I <= G and each count < 2**31, so A + (G - I) fits uint32 exactly.
    union = activation.astype(jnp.uint32) + (label_area[None, :] - intersection).astype(jnp.uint32)
    safe_union = jnp.where(union > 0, union, 1).astype(jnp.float32)
    scores = jnp.where(union > 0, intersection.astype(jnp.float32) / safe_union, 0.0)
    return jnp.where(has_category[None, :], scores, 0.0)


def label_units(scores, label_category, num_categories: int) -> UnitLabels:
    """Each unit's best label per category and overall (first wins on ties).

    A category whose IoUs are all 0 gives no label (-1, IoU 0), as does a unit whose IoUs
    are all 0. NumPy scores give NumPy arrays; jax scores give jax arrays, traceable under
    ``jax.jit`` (``num_categories`` static). Ties are exact ties of the given scores (two
    labels whose float64 IoUs differ by less than float32 rounding can tie in float32).
    """
    xp = jnp if runtime.is_array(scores) else np
    scores = xp.asarray(scores)
    label_category = xp.asarray(label_category)
    best_labels, best_ious = [], []
    for c in range(num_categories):
        in_category = xp.where((label_category == c)[None, :], scores, -xp.inf)
        best = xp.argmax(in_category, axis=1)  # the first maximum
        best_iou = xp.take_along_axis(in_category, best[:, None], axis=1)[:, 0]
        labelled = best_iou > 0
        best_labels.append(xp.where(labelled, best, -1))
        best_ious.append(xp.where(labelled, best_iou, 0.0))
    category_label = xp.stack(best_labels, axis=1)
    category_iou = xp.stack(best_ious, axis=1).astype(scores.dtype)
    category = xp.argmax(category_iou, axis=1)
    score = xp.take_along_axis(category_iou, category[:, None], axis=1)[:, 0]
    label = xp.take_along_axis(category_label, category[:, None], axis=1)[:, 0]
    labelled = score > 0
    return UnitLabels(
        category_label=category_label,
        category_iou=category_iou,
        label=xp.where(labelled, label, -1),
        category=category,
        score=score,
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
