"""The tally on CPU cores: sparse, compiled loops instead of dense matmuls.

A unit's upsampled mask can be non-empty only where its map rises above the threshold, and
bilinear interpolation never exceeds the values it mixes. So each pixel row (and column)
of the label grid belongs to a *cell*: the run of pixels interpolating the same source
rows. A cell of the 2-D grid mixes a few source values; where all are <= T the whole cell
is off. Only the other cells are upsampled, pixel by pixel, and their active pixels bump
the counts of the labels under them directly: the upsampled masks never exist whole, and
the work is a few percent of the dense tally's. Units are spread over the cores (each
core owns whole rows of I and A, so no locks or copies).

The arithmetic is PIL's (``Image.resize(..., BILINEAR)`` of a float32 map, which is what
NetDissect-Lite upsamples with): its float64 coefficients, a horizontal pass summed in
float64 and rounded to float32, then a vertical one. So the masks equal NetDissect-Lite's
bit for bit, whatever the values; the XLA kernel's float32 matrices agree except where an
upsampled value lies within float32 rounding of the threshold. When a map is larger than
the labels, both kernels sample it bilinearly (``bilinear_matrix``), without PIL's
averaging.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from jaxdissect.errors import DissectError
from jaxdissect.stats.upsample import resize_coefficients


class AxisCells(NamedTuple):
    """One axis of the label grid cut into cells (runs of pixels that mix the same source
    positions).

    Attributes:
      first, taps: (n,) the cell's first source position and how many it mixes.
      start, length: (n,) the cell's first pixel and its number of pixels.
      weights: (n, longest, most taps) float64 weight of each source position for each
        pixel of the cell, in PIL's summation order.
    """

    first: np.ndarray
    taps: np.ndarray
    start: np.ndarray
    length: np.ndarray
    weights: np.ndarray


def axis_cells(out_size: int, in_size: int) -> AxisCells:
    """Cells of one axis resized from ``in_size`` to ``out_size`` (``resize_coefficients``)."""
    pixels = resize_coefficients(out_size, in_size)
    keys = [(low, len(weights)) for low, weights in pixels]
    starts = [y for y in range(out_size) if y == 0 or keys[y] != keys[y - 1]]
    stops = [*starts[1:], out_size]
    longest = max(b - a for a, b in zip(starts, stops, strict=True))
    most = max(len(weights) for _, weights in pixels)
    weights = np.zeros((len(starts), longest, most), np.float64)
    for i, (a, b) in enumerate(zip(starts, stops, strict=True)):
        for y in range(a, b):
            weights[i, y - a, : len(pixels[y][1])] = pixels[y][1]
    return AxisCells(
        first=np.array([keys[a][0] for a in starts], np.int64),
        taps=np.array([keys[a][1] for a in starts], np.int64),
        start=np.array(starts, np.int64),
        length=np.array(stops, np.int64) - np.array(starts, np.int64),
        weights=weights,
    )


@numba.njit(cache=True)
def _slot_areas(slot_planes, num_slots):  # pragma: no cover - compiled
    """(B, S+1) int64 pixels of each slot over all planes of each image."""
    batch = slot_planes.shape[0]
    areas = np.zeros((batch, num_slots), np.int64)
    for i in range(batch):
        pixels = slot_planes[i].reshape(-1)
        if pixels.size == 0:
            continue
        # Neighbouring pixels mostly share a slot: a run is counted in a register and added
        # once (an add to memory per pixel chains each store to the next load). Runs go on
        # across rows and planes. It runs on one core: a batch takes about a millisecond.
        slot, start = pixels[0], 0
        for x in range(1, pixels.size):
            if pixels[x] != slot:
                areas[i, slot] += x - start
                slot, start = pixels[x], x
        areas[i, slot] += pixels.size - start
    return areas


@numba.njit(inline="always")  # compiled into _unit_counts and cached with it
def _image_hits(
    a, threshold, rows, columns, col_weights_t, across, column, slot_planes, i, hits
):  # pragma: no cover - compiled
    """Upsamples one unit's map ``a`` of image ``i`` cell by cell and adds its active pixels
    to ``hits`` (per slot, once per plane). Returns the number of active pixels."""
    row_first, row_taps, row_start, row_length, row_weights = rows
    col_first, col_taps, col_start, col_length, _ = columns
    planes = slot_planes.shape[1]
    area = 0
    for cy in range(row_first.shape[0]):
        y0, ny = row_first[cy], row_taps[cy]
        for cx in range(col_first.shape[0]):
            x0, nx = col_first[cx], col_taps[cx]
            if a[y0 : y0 + ny, x0 : x0 + nx].max() <= threshold:
                continue  # no pixel of this cell can pass
            # Both passes run along a pixel row (they vectorise), each pixel's sum in PIL's
            # order: taps ascending, from 0.0, in float64.
            nc = col_length[cx]
            for r in range(ny):
                column[:nc] = 0.0
                for j in range(nx):
                    value = np.float64(a[y0 + r, x0 + j])
                    for c in range(nc):
                        column[c] += value * col_weights_t[cx, j, c]
                for c in range(nc):
                    across[r, c] = column[c]  # rounded to float32, as PIL's pass
            for rr in range(row_length[cy]):
                y = row_start[cy] + rr
                column[:nc] = 0.0
                for r in range(ny):
                    weight = row_weights[cy, rr, r]
                    for c in range(nc):
                        column[c] += np.float64(across[r, c]) * weight
                for c in range(nc):
                    if np.float32(column[c]) > threshold:
                        area += 1
                        x = col_start[cx] + c
                        for p in range(planes):
                            hits[slot_planes[i, p, y, x]] += 1
    return area


@numba.njit(inline="always")  # compiled into _unit_counts and cached with it
def _add_image(
    u,
    i,
    area,
    hits,
    hit,
    slot_labels,
    image_labels,
    image_categories,
    label_category,
    present,
    lite,
    intersection,
    unit_area,
):  # pragma: no cover - compiled
    """Adds unit u's counts on image i (``area`` active pixels, ``hits`` per slot) to its
    rows of I and A."""
    hit[:] = image_categories[i] if lite else present[i]
    for slot in range(1, hits.shape[0]):
        if hits[slot] > 0:
            label = slot_labels[i, slot]
            intersection[u, label] += hits[slot]
            if lite and label_category[label] >= 0:
                hit[label_category[label]] = True
    for m in range(image_labels.shape[1]):
        if image_labels[i, m] > 0:
            intersection[u, image_labels[i, m]] += area
    for c in range(unit_area.shape[1]):
        if hit[c]:
            unit_area[u, c] += area


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
    row_weights, col_weights = rows[4], columns[4]
    # Column weights as (cell, tap, pixel): contiguous along a pixel row.
    col_weights_t = np.ascontiguousarray(col_weights.transpose(0, 2, 1))
    for u in numba.prange(units):
        threshold = thresholds[u]
        # One cell's horizontal pass: per source row it mixes, per pixel column (float32).
        across = np.empty((row_weights.shape[2], col_weights.shape[1]), np.float32)
        column = np.empty(col_weights.shape[1], np.float64)  # one pixel row's sums
        hit = np.empty(unit_area.shape[1], np.bool_)
        # Active pixels per slot of one image: labels and categories are looked up once
        # per slot, not once per pixel and plane.
        hits = np.zeros(slot_labels.shape[1], np.int64)
        for i in range(batch):
            a = acts[i, u]
            if a.max() <= threshold:
                continue  # the whole mask is off
            hits[:] = 0
            area = _image_hits(
                a, threshold, rows, columns, col_weights_t, across, column, slot_planes, i, hits
            )
            if area > 0:
                _add_image(
                    u,
                    i,
                    area,
                    hits,
                    hit,
                    slot_labels,
                    image_labels,
                    image_categories,
                    label_category,
                    present,
                    lite,
                    intersection,
                    unit_area,
                )


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
    # Small arrays are copied, so that the compiled loops always see writable ones (Numba
    # compiles read-only arrays as another type, and ``precompile`` covers one of each);
    # the planes stay as they come (a read-only memory map from the decoded cache).
    slot_planes = np.ascontiguousarray(slot_planes, np.uint8)
    slot_labels = np.array(slot_labels, np.int64)
    image_labels = np.array(image_labels, np.int64)
    label_category = np.array(label_category, np.int64)
    thresholds = np.array(thresholds, np.float32)
    # The compiled loops index without bounds checks: refuse what would run past an array.
    if slot_planes.size and slot_planes.max() >= slot_labels.shape[1]:
        raise DissectError(
            f"`labels`: slot index {slot_planes.max()} >= {slot_labels.shape[1]} slots",
            arguments=("labels",),
        )
    for name, numbers in (("slot", slot_labels), ("image-level", image_labels)):
        if numbers.size and not 0 <= numbers.min() <= numbers.max() < len(label_category):
            raise DissectError(
                f"`labels`: {name} label numbers must lie in [0, {len(label_category)}), "
                f"got {numbers.min()} .. {numbers.max()}",
                arguments=("labels",),
            )

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
        thresholds,
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
