"""The threshold pass's running top-k on CPU cores: compiled loops instead of scatters.

Same state and same answer as ``quantile.quantile_update`` (a ``QuantileState``, here of
NumPy arrays, finished by ``quantile.quantile_result``): each unit keeps its k largest
values merged so far and a buffer of candidates above the k-th; a full buffer is merged by
one sort. Units are spread over the cores. The same scan records each image's per-unit
maximum and whether it saw a NaN or an infinity.
"""

from __future__ import annotations

import numba
import numpy as np

from jaxdissect.quantile import QuantileState, _init_arrays, quantile_count, split_words


def cpu_quantile_init(
    units: int, q: float, positions: int, buffer_size: int | None = None
) -> QuantileState:
    """``quantile.quantile_init`` as NumPy arrays (updated in place by ``cpu_quantile_update``)."""
    return _init_arrays(np, units, q, positions, buffer_size)


# Units per parallel task: each task reads its units' run of every row of the batch (no
# transposed copy of the batch), a block long enough for contiguous reads.
BLOCK = 32


@numba.njit(parallel=True, cache=True)
def _fold(acts, top, buffer, fill, maxima, finite):  # pragma: no cover - compiled
    """acts (B, P, U): fold into each unit's top-k, in (image, position) order; (B, U)
    maxima and finiteness."""
    batch, positions, units = acts.shape
    k, room = top.shape[1], buffer.shape[1]
    for block in numba.prange((units + BLOCK - 1) // BLOCK):
        low, high = block * BLOCK, min(units, (block + 1) * BLOCK)
        for i in range(batch):
            for u in range(low, high):
                maxima[i, u] = -np.inf
                finite[i, u] = True
            for p in range(positions):
                for u in range(low, high):
                    v = acts[i, p, u]
                    if not np.isfinite(v):
                        finite[i, u] = False
                    maxima[i, u] = max(maxima[i, u], v)
                    # Equal values leave the multiset of the k largest unchanged: strict >
                    # is exact.
                    if v > top[u, k - 1]:
                        if fill[u] == room:  # merge: keep the k largest of top and buffer
                            # (a partition, not a sort: top's order does not matter, only
                            # that its last is its smallest, the floor)
                            merged = np.partition(np.concatenate((top[u], buffer[u])), room)
                            top[u] = merged[room:][::-1]
                            buffer[u] = -np.inf
                            fill[u] = 0
                            if not v > top[u, k - 1]:
                                continue
                        buffer[u, fill[u]] = v
                        fill[u] += 1


def cpu_quantile_update(state: QuantileState, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold a batch (B, h, w, U) into ``state`` in place.

    Returns:
      (B, U) float32 per-image maxima and (B,) bool: whether each image's values are finite.
    """
    batch, height, width, units = acts.shape
    values = np.ascontiguousarray(acts, np.float32).reshape(batch, height * width, units)
    maxima = np.empty((batch, units), np.float32)
    finite = np.empty((batch, units), np.bool_)
    _fold(values, state.top, state.buffer, state.fill, maxima, finite)
    state.count[...] = split_words(quantile_count(state) + batch * height * width)
    return maxima, finite.all(axis=1)
