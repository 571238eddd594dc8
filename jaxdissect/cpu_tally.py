"""The tally on CPU cores: sparse, compiled loops instead of dense matmuls.

A unit's upsampled mask can be non-empty only where its map rises above the threshold, and
bilinear interpolation never exceeds the values it mixes. So each pixel row (and column)
of the label grid belongs to a *cell*: the run of pixels interpolating between the same two
source rows. A cell of the 2-D grid mixes four source values; where all four are <= T the
whole cell is off. Only the other cells are upsampled, pixel by pixel, and their active
pixels bump the counts of the labels under them directly: the upsampled masks never exist
whole, and the work is a few percent of the dense tally's. Units are spread over the cores
(each core owns whole rows of I and A, so no locks or copies).

Counts equal ``tally.tally_update_compact`` (same float32 weights; interpolation along x
first, then y, as PIL does), so the CPU and accelerator paths agree.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from jaxdissect.upsample import bilinear_matrix


class AxisCells(NamedTuple):
    """One axis of the label grid cut into cells (runs of pixels that mix the same two
    source positions).

    Attributes:
      low, high: (n,) the two source positions of each cell (equal at a clamped edge).
      start, length: (n,) the cell's first pixel and its number of pixels.
      weight_low, weight_high: (n, longest) float32 weights of each pixel of the cell.
    """

    low: np.ndarray
    high: np.ndarray
    start: np.ndarray
    length: np.ndarray
    weight_low: np.ndarray
    weight_high: np.ndarray


def axis_cells(out_size: int, in_size: int) -> AxisCells:
    """Cells of one axis for half-pixel bilinear resizing from ``in_size`` to ``out_size``,
    with the weights of ``bilinear_matrix`` (so both tallies see the same numbers)."""
    matrix = bilinear_matrix(out_size, in_size)
    pairs = []
    for row in matrix:
        (used,) = np.nonzero(row)
        pairs.append((int(used.min()), int(used.max())))
    starts = [y for y in range(out_size) if y == 0 or pairs[y] != pairs[y - 1]]
    stops = [*starts[1:], out_size]
    longest = max(b - a for a, b in zip(starts, stops, strict=True))
    weight_low = np.zeros((len(starts), longest), np.float32)
    weight_high = np.zeros((len(starts), longest), np.float32)
    for i, (a, b) in enumerate(zip(starts, stops, strict=True)):
        low, high = pairs[a]
        weight_low[i, : b - a] = matrix[a:b, low]
        if high != low:
            weight_high[i, : b - a] = matrix[a:b, high]
    low, high = np.array(pairs, np.int64)[starts].T
    return AxisCells(
        low=np.ascontiguousarray(low),
        high=np.ascontiguousarray(high),
        start=np.array(starts, np.int64),
        length=np.array(stops, np.int64) - np.array(starts, np.int64),
        weight_low=weight_low,
        weight_high=weight_high,
    )


@numba.njit(parallel=True, cache=True)
def _slot_areas(slot_planes, num_slots):  # pragma: no cover - compiled
    """(B, S+1) int64 pixels of each slot over all planes of each image."""
    batch, planes, height, width = slot_planes.shape
    areas = np.zeros((batch, num_slots), np.int64)
    for i in numba.prange(batch):
        for p in range(planes):
            for y in range(height):
                for x in range(width):
                    areas[i, slot_planes[i, p, y, x]] += 1
    return areas


@numba.njit(parallel=True, cache=True)
def _unit_counts(
    acts,
    thresholds,
    slot_planes,
    slot_labels,
    image_labels,
    image_categories,
    label_category,
    present,
    rows,
    columns,
    lite,
    intersection,
    unit_area,
):  # pragma: no cover - compiled
    """Adds each unit's intersections and unit areas (rows of I and A) for one batch."""
    batch, units = acts.shape[0], acts.shape[1]
    planes = slot_planes.shape[1]
    num_categories = unit_area.shape[1]
    row_low, row_high, row_start, row_length, row_wl, row_wh = rows
    col_low, col_high, col_start, col_length, col_wl, col_wh = columns
    longest = col_wl.shape[1]
    for u in numba.prange(units):
        threshold = thresholds[u]
        top = np.empty(longest, np.float32)
        bottom = np.empty(longest, np.float32)
        hit = np.zeros(num_categories, np.bool_)
        for i in range(batch):
            a = acts[i, u]
            if a.max() <= threshold:
                continue  # the whole mask is off
            area = 0
            hit[:] = False
            for cy in range(row_low.shape[0]):
                y0, y1 = row_low[cy], row_high[cy]
                for cx in range(col_low.shape[0]):
                    x0, x1 = col_low[cx], col_high[cx]
                    v00, v01, v10, v11 = a[y0, x0], a[y0, x1], a[y1, x0], a[y1, x1]
                    if max(max(v00, v01), max(v10, v11)) <= threshold:
                        continue  # no pixel of this cell can pass
                    for c in range(col_length[cx]):
                        top[c] = col_wl[cx, c] * v00 + col_wh[cx, c] * v01
                        bottom[c] = col_wl[cx, c] * v10 + col_wh[cx, c] * v11
                    for r in range(row_length[cy]):
                        wl, wh = row_wl[cy, r], row_wh[cy, r]
                        y = row_start[cy] + r
                        for c in range(col_length[cx]):
                            if wl * top[c] + wh * bottom[c] > threshold:
                                area += 1
                                x = col_start[cx] + c
                                for p in range(planes):
                                    slot = slot_planes[i, p, y, x]
                                    if slot != 0:
                                        label = slot_labels[i, slot]
                                        intersection[u, label] += 1
                                        if lite and label_category[label] >= 0:
                                            hit[label_category[label]] = True
            if area == 0:
                continue
            for m in range(image_labels.shape[1]):
                if image_labels[i, m] > 0:
                    intersection[u, image_labels[i, m]] += area
            for c in range(num_categories):
                counted = (hit[c] or image_categories[i, c]) if lite else present[i, c]
                if counted:
                    unit_area[u, c] += area


def _categories_of(labels: np.ndarray, label_category: np.ndarray, num_categories: int):
    """(B, C) bool: categories among each image's labels (0 and uncategorised skipped)."""
    category = np.where(labels > 0, label_category[labels], -1)
    result = np.zeros((labels.shape[0], num_categories + 1), bool)
    np.put_along_axis(result, np.where(category < 0, num_categories, category), True, axis=1)
    return result[:, :num_categories]


def cpu_tally_batch(
    totals: tuple[np.ndarray, np.ndarray, np.ndarray],
    acts: np.ndarray,
    thresholds: np.ndarray,
    slot_planes: np.ndarray,
    slot_labels: np.ndarray,
    image_labels: np.ndarray,
    label_category: np.ndarray,
    rows: AxisCells,
    columns: AxisCells,
    *,
    union: str,
) -> None:
    """Add one batch to int64 totals (G, I, A) in place; the arguments of
    ``tally.tally_update_compact``, as NumPy arrays (no padding: every image counts)."""
    label_area, intersection, unit_area = totals
    num_categories = unit_area.shape[1]
    height, width = slot_planes.shape[-2:]
    slot_planes = np.ascontiguousarray(slot_planes, np.uint8)
    slot_labels = np.ascontiguousarray(slot_labels, np.int64)
    image_labels = np.ascontiguousarray(image_labels, np.int64)
    label_category = np.ascontiguousarray(label_category, np.int64)
    # The compiled loops index without bounds checks: refuse what would run past an array.
    if slot_planes.size and slot_planes.max() >= slot_labels.shape[1]:
        raise ValueError(f"slot index {slot_planes.max()} >= {slot_labels.shape[1]} slots")
    for name, numbers in (("slot", slot_labels), ("image-level", image_labels)):
        if numbers.size and not 0 <= numbers.min() <= numbers.max() < len(label_category):
            raise ValueError(f"{name} label numbers must lie in [0, {len(label_category)})")

    slot_area = _slot_areas(slot_planes, slot_labels.shape[1])
    slot_area[:, 0] = 0
    np.add.at(label_area, slot_labels.ravel(), slot_area.ravel())
    np.add.at(label_area, image_labels.ravel(), height * width)
    label_area[0] = 0

    image_categories = _categories_of(image_labels, label_category, num_categories)
    pixel_categories = _categories_of(
        np.where(slot_area > 0, slot_labels, 0), label_category, num_categories
    )
    _unit_counts(
        np.ascontiguousarray(np.moveaxis(acts, -1, 1), np.float32),
        np.ascontiguousarray(thresholds, np.float32),
        slot_planes,
        slot_labels,
        image_labels,
        image_categories,
        label_category,
        image_categories | pixel_categories,
        tuple(rows),
        tuple(columns),
        union == "lite",
        intersection,
        unit_area,
    )
    intersection[:, 0] = 0
