"""The upsampling rule, in one place: half-pixel bilinear resizing, axis by axis.

Resizing an (h, w) map to (sh, sw) with align_corners=False and clamped edges (what
``jax.image.resize(..., "linear")`` and PIL's BILINEAR do when enlarging) is separable:
``up = R_rows @ a @ R_cols.T``. The XLA tally uses these matrices in float32
(``bilinear_matrix``: the resize runs on the matrix units, fused with the threshold); the
CPU tally and the report use PIL's own float64 coefficients (``resize_coefficients``),
which is what NetDissect-Lite upsamples with. When a map is larger than the labels, both
sample it bilinearly, without PIL's averaging.
"""

from __future__ import annotations

import numbers

import numpy as np

from jaxdissect.errors import DissectError

# The most entries of one resize matrix: 8192 x 8192, built in float64 (512 MiB).
MAX_MATRIX_ENTRIES = 2**26


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of half-pixel bilinear resizing along one axis."""
    sizes = (out_size, in_size)
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in sizes):
        raise DissectError(  # 2.5 met np.arange's TypeError
            f"`out_size` and `in_size` must be integers, got {out_size!r} and {in_size!r}",
            arguments=("out_size", "in_size"),
        )
    if out_size < 1 or in_size < 1:
        raise DissectError(
            f"`out_size` and `in_size` must be >= 1, got {out_size} and {in_size}",
            arguments=("out_size", "in_size"),
        )
    if out_size * in_size > MAX_MATRIX_ENTRIES:
        raise DissectError(
            f"`out_size` {out_size} x `in_size` {in_size} is {out_size * in_size:,} entries; "
            f"a resize matrix holds at most {MAX_MATRIX_ENTRIES:,}",
            arguments=("out_size", "in_size"),
        )
    source = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    source = np.clip(source, 0.0, in_size - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    weight = source - lower
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - weight)
    np.add.at(matrix, (rows, upper), weight)
    return matrix.astype(np.float32)


def pil_coefficients(out_size: int, in_size: int) -> list[tuple[int, list[float]]]:
    """Per output pixel, (first source position, weights): Pillow's ``precompute_coeffs``
    for the bilinear filter (Resample.c), in the same float64 operations."""
    scale = float(np.float32(in_size)) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    result = []
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        low = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C
        count = min(int(center + support + 0.5), in_size) - low
        weights = [
            max(0.0, 1.0 - abs((x + low - center + 0.5) * (1.0 / filterscale)))
            for x in range(count)
        ]
        total = 0.0
        for w in weights:
            total += w
        result.append((low, [w / total for w in weights] if total != 0.0 else weights))
    return result


def _bilinear_coefficients(out_size: int, in_size: int) -> list[tuple[int, list[float]]]:
    """Per output pixel, (first source position, weights) of ``bilinear_matrix``."""
    matrix = bilinear_matrix(out_size, in_size).astype(np.float64)
    result = []
    for row in matrix:
        (used,) = np.nonzero(row)
        low, high = int(used.min()), int(used.max())
        result.append((low, [float(w) for w in row[low : high + 1]]))
    return result


def resize_coefficients(out_size: int, in_size: int) -> list[tuple[int, list[float]]]:
    """Per output pixel, (first source position, weights): PIL's when enlarging (or keeping
    the size), ``bilinear_matrix``'s when shrinking."""
    if out_size >= in_size:
        return pil_coefficients(out_size, in_size)
    return _bilinear_coefficients(out_size, in_size)


def resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of ``resize_coefficients``."""
    matrix = np.zeros((out_size, in_size), np.float64)
    for row, (low, weights) in enumerate(resize_coefficients(out_size, in_size)):
        matrix[row, low : low + len(weights)] = weights
    return matrix


def _axis_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(out_size, taps) source positions and float64 weights of ``resize_coefficients``,
    padded with weight 0 (adding 0.0 leaves PIL's sums unchanged)."""
    pixels = resize_coefficients(out_size, in_size)
    taps = max(len(weights) for _, weights in pixels)
    positions = np.zeros((out_size, taps), np.int64)
    weights = np.zeros((out_size, taps), np.float64)
    for row, (low, values) in enumerate(pixels):
        positions[row, : len(values)] = low + np.arange(len(values))
        weights[row, : len(values)] = values
    return positions, weights


def resize_maps(maps: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(B, out_h, out_w, U) float32: (B, h, w, U) maps resized with the CPU tally's arithmetic
    (PIL's when enlarging): a horizontal pass summed in float64 and rounded to float32, then
    a vertical one, each sum in PIL's order; so ``resize_maps(a) > T`` are the dissection's
    masks bit for bit."""
    maps = np.asarray(maps, np.float32)
    columns, column_weights = _axis_taps(out_w, maps.shape[2])
    across = np.zeros((maps.shape[0], maps.shape[1], out_w, maps.shape[3]), np.float64)
    for tap in range(columns.shape[1]):
        across += maps[:, :, columns[:, tap]].astype(np.float64) * column_weights[:, tap, None]
    across = across.astype(np.float32).astype(np.float64)
    rows, row_weights = _axis_taps(out_h, maps.shape[1])
    total = np.zeros((maps.shape[0], out_h, out_w, maps.shape[3]), np.float64)
    for tap in range(rows.shape[1]):
        total += across[:, rows[:, tap]] * row_weights[:, tap, None, None]
    return total.astype(np.float32)
