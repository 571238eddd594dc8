"""Half-pixel bilinear upsampling as two small matrices.

Resizing an (h, w) map to (sh, sw) with align_corners=False and clamped edges (what
``jax.image.resize(..., "linear")`` and PIL's BILINEAR do when enlarging) is separable:
``up = R_rows @ a @ R_cols.T``. Expressing it as matrices lets the tally run the resize
on the matrix units and fuse it with the threshold.
"""

from __future__ import annotations

import numpy as np


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of half-pixel bilinear resizing along one axis."""
    if out_size < 1 or in_size < 1:
        raise ValueError(f"sizes must be positive, got out={out_size}, in={in_size}")
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
