"""Random rotations of a layer's basis: the control that tells units from directions.

``random_rotation`` draws a Haar-random orthogonal matrix; ``fractional_rotation`` takes
its power R**alpha through the rotation angles of the real Schur form (as the original
NetDissect does), so alpha = 0 is the units' own basis and alpha = 1 the full rotation.
Rotated activations are ``acts @ R``, applied batch by batch inside the pipeline.
"""

from __future__ import annotations

import jax
import numpy as np
import scipy.linalg


def random_rotation(key: jax.Array, size: int) -> np.ndarray:
    """(size, size) float64 Haar-random orthogonal matrix with determinant +1."""
    gaussian = np.asarray(jax.random.normal(key, (size, size), dtype=np.float32), np.float64)
    q, r = np.linalg.qr(gaussian)
    q = q * np.sign(np.diag(r))  # Haar measure
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def fractional_rotation(rotation: np.ndarray, alpha: float) -> np.ndarray:
    """R**alpha for a rotation R: each 2x2 block of the real Schur form turns by alpha times
    its angle (a -1 eigenvalue pair is treated as the angle pi)."""
    if alpha == 0:
        return np.eye(len(rotation))
    if alpha == 1:
        return np.array(rotation, np.float64)
    t, z = scipy.linalg.schur(rotation, output="real")
    powered = np.zeros_like(t)
    i, n = 0, len(t)
    while i < n:
        if i + 1 < n and abs(t[i + 1, i]) > 1e-12:  # a 2x2 rotation block
            angle = np.arctan2(t[i + 1, i], t[i, i]) * alpha
            c, s = np.cos(angle), np.sin(angle)
            powered[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
            i += 2
        elif t[i, i] < 0 and i + 1 < n and t[i + 1, i + 1] < 0:  # eigenvalues -1, -1
            c, s = np.cos(np.pi * alpha), np.sin(np.pi * alpha)
            powered[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
            i += 2
        else:
            powered[i, i] = 1.0 if t[i, i] > 0 else np.cos(np.pi * alpha)
            i += 1
    return z @ powered @ z.T
