"""IoU scores, unit labels and the unique-detector summaries.

``iou`` gives one answer for any input: float32 IoUs, the same bits for NumPy counts on the
host, jax arrays, and under ``jax.jit`` (each count and each union rounded once to float32,
then one IEEE division), so ``label_units`` picks the same labels wherever it runs. The
driver asks for ``dtype=numpy.float64`` on its int64 host counts (tally.csv's values).
``label_units`` follows its input (NumPy in, NumPy out; jax in, jax out, jittable).
``summarize`` works on names, on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxdissect import runtime
from jaxdissect.errors import DissectError
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


def iou(label_area, intersection, unit_area, label_category, *, dtype=np.float32):
    """IoU[u, l] = I[u, l] / (A[u, cat(l)] + G[l] - I[u, l]).

    Args:
      label_area: (L,) G counts.
      intersection: (U, L) I counts.
      unit_area: (U, C) A counts.
      label_category: (L,) primary category of each label, -1 for none.
      dtype: float32 (default) or float64. float32 gives the same dtype and the same bits
        for NumPy counts, jax arrays and under ``jax.jit``: the union is computed exactly
        in integers (int64 on the host; uint32 for jax's int32 counts, where A + (G - I) <
        2**32), then I and the union are each rounded once to float32 and divided once
        (IEEE, correctly rounded), so the result lies within 3 * 2**-24 (relative) of the
        exact quotient, and within 2**-24 while the counts are below 2**24. float64 (exact
        to one rounding for counts below 2**53) needs NumPy counts, or jax with
        ``jax_enable_x64``.

    Returns:
      (U, L) IoUs of ``dtype``; 0 for labels without a category and for empty unions: a
      NumPy array for NumPy counts, else a jax.Array.

    Raises:
      DissectError: ``dtype`` is neither float32 nor float64, or float64 is asked of jax
        arrays without x64; a negative or fractional count, a count too large for the
        integers it is computed in (int32 for jax arrays and float32, else int64), an
        intersection above its label's area, or a ``label_category`` entry outside [-1, C). Values are checked wherever they are
        known (NumPy counts, jax arrays outside ``jax.jit``); under ``jax.jit`` they cannot
        be, and such counts give meaningless IoUs there (an out-of-range category reads the
        last category's areas).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise DissectError(
            f"iou: `dtype` must be float32 or float64, got {dtype}", arguments=("dtype",)
        )
    _check_count_shapes(label_area, intersection, unit_area, label_category)
    on_jax = any(runtime.is_array(x) for x in (label_area, intersection, unit_area))
    # The counts are computed on as int32 in jax (int64 with x64 and float64), else int64.
    wide = not on_jax or dtype == np.float64
    limit = 2**63 - 1 if wide else 2**31 - 1
    _check_counts(label_area, intersection, unit_area, limit=limit)
    _check_label_category(label_category, np.shape(unit_area)[1])
    if on_jax:
        return _iou_jax(label_area, intersection, unit_area, label_category, dtype)
    label_area = np.asarray(label_area, np.int64)
    intersection = np.asarray(intersection, np.int64)
    unit_area = np.asarray(unit_area, np.int64)
    label_category = np.asarray(label_category)
    has_category = label_category >= 0
    activation = unit_area[:, np.where(has_category, label_category, 0)]
    union = activation + label_area[None, :] - intersection  # exact in int64
    safe_union = np.where(union > 0, union, 1).astype(dtype)
    scores = np.where(union > 0, intersection.astype(dtype) / safe_union, dtype.type(0))
    return np.where(has_category[None, :], scores, dtype.type(0))


def _check_count_shapes(label_area, intersection, unit_area, label_category) -> None:
    """A DissectError naming the argument whose shape disagrees with the others'."""
    units, labels = np.shape(intersection) if np.ndim(intersection) == 2 else (None, None)
    categories = np.shape(unit_area)[-1] if np.ndim(unit_area) else None
    for name, value, shape in (
        ("intersection", intersection, (units, labels)),
        ("label_area", label_area, (labels,)),
        ("unit_area", unit_area, (units, categories)),
        ("label_category", label_category, (labels,)),
    ):
        if None in shape or np.shape(value) != shape:
            raise DissectError(
                f"`{name}` has shape {np.shape(value)}; `intersection` (U, L), `label_area` "
                "(L,), `unit_area` (U, C) and `label_category` (L,) must agree",
                arguments=(name,),
            )


def _known(x) -> np.ndarray | None:
    """``x`` as a NumPy array, or None under ``jax.jit`` (a tracer: its values are unknown)."""
    return None if runtime.is_tracer(x) else np.asarray(x)


def _refuse_first(bad: np.ndarray, name: str, values: np.ndarray, why: str) -> None:
    """A DissectError naming the first True entry of ``bad`` as ``name[i, j]`` and its value."""
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DissectError(
            f"`{name}`[{', '.join(map(str, index))}] is {values[index]}: {why}",
            arguments=(name,),
        )


def _check_counts(label_area, intersection, unit_area, *, limit: int) -> None:
    """A DissectError naming the first count that is negative, fractional or above ``limit``
    (the largest the integer type ``iou`` counts in holds), or an intersection above its
    label's area, among the counts whose values are known."""
    known = {
        "label_area": _known(label_area),
        "intersection": _known(intersection),
        "unit_area": _known(unit_area),
    }
    for name, counts in known.items():
        if counts is not None:
            if counts.dtype.kind not in "biuf":
                raise DissectError(
                    f"`{name}` must hold numeric counts, got {counts.dtype} values",
                    arguments=(name,),
                )
            _refuse_first(~np.isfinite(counts), name, counts, "counts must be finite")
            _refuse_first(counts < 0, name, counts, "counts cannot be negative")
            if counts.dtype.kind == "f":
                _refuse_first(counts != np.floor(counts), name, counts, "counts are whole")
            too_large = counts >= float(limit) if counts.dtype.kind == "f" else counts > limit
            why = f"counts above {limit} do not fit int{limit.bit_length() + 1}"
            if limit < 2**31:
                why += ", jax's counts here; pass NumPy counts (numpy.asarray)"
            _refuse_first(too_large, name, counts, why)
    label_area, intersection = known["label_area"], known["intersection"]
    if label_area is not None and intersection is not None:
        above = intersection > label_area[None, :]
        if above.any():
            u, label = (int(i) for i in np.argwhere(above)[0])
            raise DissectError(
                f"`intersection`[{u}, {label}] is {intersection[u, label]}: an intersection "
                f"cannot exceed its label's area (`label_area`[{label}] is {label_area[label]})",
                arguments=("intersection", "label_area"),
            )


def _check_label_category(label_category, num_categories: int) -> None:
    """A DissectError naming the first ``label_category`` entry outside [-1, C), if known,
    or a ``label_category`` that does not hold integers (its dtype, known under jit too)."""
    dtype = getattr(label_category, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(label_category).dtype
        except (TypeError, ValueError):
            dtype = np.dtype(object)
    if np.dtype(dtype).kind not in "iu":
        raise DissectError(
            f"`label_category` must hold integer category indices, got {dtype} values",
            arguments=("label_category",),
        )
    values = _known(label_category)
    if values is not None:
        _refuse_first(
            (values < -1) | (values >= num_categories),
            "label_category",
            values,
            f"a label's category index lies in [-1, {num_categories}), -1 meaning none",
        )


def _iou_jax(label_area, intersection, unit_area, label_category, dtype):
    wide = dtype == np.float64
    if wide and not runtime.jax.config.read("jax_enable_x64"):
        raise DissectError(
            "iou: `dtype` float64 with jax arrays needs jax_enable_x64; pass NumPy counts "
            "(numpy.asarray) or use the default float32",
            arguments=("dtype",),
        )
    count, union_type = (jnp.int64, jnp.int64) if wide else (jnp.int32, jnp.uint32)
    label_area = jnp.asarray(label_area, count)
    intersection = jnp.asarray(intersection, count)
    label_category = jnp.asarray(label_category, jnp.int32)
    has_category = label_category >= 0
    activation = jnp.asarray(unit_area, count)[:, jnp.where(has_category, label_category, 0)]
    # I <= G and each int32 count < 2**31, so A + (G - I) fits uint32 exactly.
    union = activation.astype(union_type) + (label_area[None, :] - intersection).astype(union_type)
    safe_union = jnp.where(union > 0, union, 1).astype(dtype)
    scores = jnp.where(union > 0, intersection.astype(dtype) / safe_union, 0.0).astype(dtype)
    return jnp.where(has_category[None, :], scores, 0.0).astype(dtype)


def label_units(scores, label_category, num_categories: int) -> UnitLabels:
    """Each unit's best label per category and overall (first wins on ties).

    A category whose IoUs are all 0 gives no label (-1, IoU 0), as does a unit whose IoUs
    are all 0. NumPy scores give NumPy arrays; jax scores give jax arrays, traceable under
    ``jax.jit`` (``num_categories`` static). Ties are exact ties of the given scores (two
    labels whose float64 IoUs differ by less than float32 rounding can tie in float32).
    ``iou``'s float32 scores are the same bits on the host and under ``jax.jit``, so the
    labels chosen from them are the same too, near-ties included.

    Raises:
      DissectError: ``label_category`` holds an index outside [-1, ``num_categories``),
        where its values are known (not a tracer under ``jax.jit``; there such a label
        matches no category and is never chosen).
    """
    xp = jnp if runtime.is_array(scores) else np
    scores = xp.asarray(scores)
    label_category = xp.asarray(label_category)
    if scores.ndim != 2 or label_category.shape != scores.shape[1:]:
        raise DissectError(
            f"`scores` of shape {scores.shape} and `label_category` of shape "
            f"{label_category.shape}: expected (U, L) and (L,)",
            arguments=("scores", "label_category"),
        )
    _check_label_category(label_category, _check_num_categories(num_categories, scores))
    if xp is np and not np.isfinite(scores).all():  # NaN lost every argmax: "no label"
        raise DissectError("`scores` must be finite IoUs", arguments=("scores",))
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


def _check_num_categories(num_categories, scores) -> int:
    """``num_categories`` as an int in [1, L]: L labels can fill at most L categories, and
    the (U, C) outputs are bounded by the inputs' sizes."""
    from jaxdissect.stats.checks import check_count

    num_categories = check_count(num_categories, "num_categories", what="label_units")
    labels = scores.shape[1]
    if num_categories > max(labels, 1):
        raise DissectError(
            f"label_units: `num_categories` = {num_categories} exceeds the {labels} labels of "
            "`scores` (U, L): L labels belong to at most L categories",
            arguments=("num_categories",),
        )
    return num_categories


def _check_summary_inputs(categories, unit_category, unit_label, score, label, iou) -> None:
    """Refuses per-unit inputs of different lengths (zip dropped the extra units), an IoU
    table that is not (U, C), a unit category not in ``categories``, and scores or IoUs
    that are not finite (NaN is never above the threshold: a silent non-detector)."""
    units = len(score)
    lengths = {"unit_category": len(unit_category), "unit_label": len(unit_label),
               "category_label": len(label)}  # fmt: skip
    wrong = [name for name, n in lengths.items() if n != units]
    table = iou.shape == (units, len(categories)) or (units == 0 and iou.size == 0)
    if score.ndim != 1 or wrong or not table:
        raise DissectError(
            f"`score` ({score.shape}), {', '.join(f'`{n}` ({lengths[n]})' for n in lengths)} "
            f"and `category_iou` {iou.shape} must describe the same units, with one IoU per "
            "category",
            arguments=("score", *lengths, "category_iou"),
        )
    unknown = sorted(set(unit_category) - set(categories))
    if unknown:
        raise DissectError(
            f"`unit_category` holds {unknown[0]!r}, not in `categories`",
            arguments=("unit_category", "categories"),
        )
    if not (np.isfinite(score).all() and np.isfinite(iou).all()):
        raise DissectError(
            "`score` and `category_iou` must be finite", arguments=("score", "category_iou")
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
    if not 0.0 <= iou_threshold < 1.0:
        raise DissectError(
            f"`iou_threshold` must lie in [0, 1), got {iou_threshold!r}",
            arguments=("iou_threshold",),
        )
    score = np.asarray(score, np.float64)
    category_iou = np.asarray(category_iou, np.float64)
    _check_summary_inputs(categories, unit_category, unit_label, score, category_label,
                          category_iou)  # fmt: skip
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
