"""The threshold pass's running top-k on CPU cores: compiled loops instead of scatters.

Same state and same answer as ``quantile.quantile_update`` (a ``QuantileState``, here of
NumPy arrays, finished by ``quantile.quantile_result``): each unit keeps its k largest
values merged so far and a buffer of candidates above the k-th; a full buffer is merged by
one sort. Units are spread over the cores. The same scan records each image's per-unit
maximum and whether it saw a NaN or an infinity.
"""

from __future__ import annotations

import jax
import numba
import numpy as np

from jaxdissect.quantile import QuantileState, quantile_count, quantile_init, split_words


def cpu_quantile_init(
    units: int, q: float, positions: int, buffer_size: int | None = None
) -> QuantileState:
    """``quantile.quantile_init`` as NumPy arrays (updated in place by ``cpu_quantile_update``)."""
    # Writable NumPy copies of the XLA state, so that both share one layout.
    return jax.tree.map(np.array, quantile_init(units, q, positions, buffer_size))


@numba.njit(parallel=True, cache=True)
def _fold(values, top, buffer, fill, maxima, finite):  # pragma: no cover - compiled
    """values (U, B, P): fold into each unit's top-k; (B, U) maxima and finiteness."""
    units, batch, positions = values.shape
    k, room = top.shape[1], buffer.shape[1]
    for u in numba.prange(units):
        floor = top[u, k - 1]
        for i in range(batch):
            largest = -np.inf
            ok = True
            for p in range(positions):
                v = values[u, i, p]
                if not np.isfinite(v):
                    ok = False
                largest = max(largest, v)
                # Equal values leave the multiset of the k largest unchanged: strict > is exact.
                if v > floor:
                    if fill[u] == room:  # merge: keep the k largest of top and buffer
                        merged = np.sort(np.concatenate((top[u], buffer[u])))[::-1]
                        top[u] = merged[:k]
                        buffer[u] = -np.inf
                        fill[u] = 0
                        floor = top[u, k - 1]
                        if not v > floor:
                            continue
                    buffer[u, fill[u]] = v
                    fill[u] += 1
            maxima[i, u] = largest
            finite[i, u] = ok


def cpu_quantile_update(state: QuantileState, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold a batch (B, h, w, U) into ``state`` in place.

    Returns:
      (B, U) float32 per-image maxima and (B,) bool: whether each image's values are finite.
    """
    batch, height, width, units = acts.shape
    values = np.ascontiguousarray(
        np.asarray(acts, np.float32).reshape(batch, height * width, units).transpose(2, 0, 1)
    )
    maxima = np.empty((batch, units), np.float32)
    finite = np.empty((batch, units), np.bool_)
    _fold(values, state.top, state.buffer, state.fill, maxima, finite)
    state.count[...] = split_words(quantile_count(state) + batch * height * width)
    return maxima, finite.all(axis=1)
