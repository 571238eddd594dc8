"""The threshold pass's running top-k on CPU cores: compiled loops instead of scatters.

Same state and same answer as ``quantile.quantile_update`` (a ``QuantileState``, here of
NumPy arrays, finished by ``quantile.quantile_result``): each unit keeps its k largest
values merged so far and a buffer of candidates above the k-th (the floor); k waiting
candidates are merged by one partition. A branch-free sweep of each image first finds its
per-unit maxima and whether it holds a NaN or an infinity; only units whose maximum passes
the floor, a few, are then scanned for candidates. Large batches spread units over cores.
"""

from __future__ import annotations

import numba
import numpy as np

from jaxdissect.stats.quantile import QuantileState, _init_arrays, quantile_count, split_words


def cpu_quantile_init(
    units: int, q: float, positions: int, buffer_size: int | None = None
) -> QuantileState:
    """``quantile.quantile_init`` as NumPy arrays (updated in place by ``cpu_quantile_update``)."""
    return _init_arrays(np, units, q, positions, buffer_size)


# Values per batch above which the top-k runs on every core: a parallel region costs
# microseconds on idle cores but milliseconds on busy shared ones, more than a small batch's
# whole fold (a few nanoseconds a value).
PARALLEL_VALUES = 2**23


@numba.njit(cache=True)
def _fold_units(acts, top, buffer, fill, maxima, finite, low, high):  # pragma: no cover
    """acts (B, P, U): fold units low..high-1 into their top-k, in (image, position) order;
    their (B, U) maxima (NaNs ignored) and finiteness."""
    batch, positions = acts.shape[:2]
    k, room = top.shape[1], buffer.shape[1]
    # Merging as soon as k candidates wait (a partition of 2k values) raises the floor
    # early, so that later images are skipped.
    merge_at = min(room, k)
    highest = np.empty(high - low, np.float32)
    nonfinite = np.empty(high - low, np.float32)
    for i in range(batch):
        # A sweep of the image's rows without branches (it vectorises): v - v is 0, or NaN
        # for NaN and +-inf.
        highest[:] = -np.inf
        nonfinite[:] = 0
        for p in range(positions):
            row = acts[i, p, low:high]
            for j in range(high - low):
                v = row[j]
                highest[j] = v if v > highest[j] else highest[j]
                nonfinite[j] += v - v
        for j in range(high - low):
            u = low + j
            maxima[i, u] = highest[j]
            finite[i, u] = nonfinite[j] == 0
            floor = top[u, k - 1]
            # Only values strictly above the floor can change the multiset of the k largest
            # (equal ones leave it as it is); none is unless the image's maximum is, and
            # most maxima stay below it.
            if not highest[j] > floor:
                continue
            for p in range(positions):
                v = acts[i, p, u]
                if v > floor:
                    buffer[u, fill[u]] = v
                    fill[u] += 1
                    if fill[u] == merge_at:  # keep the k largest of top and buffer
                        # (a partition, not a sort: top's order does not matter, only that
                        # its last is its smallest, the floor)
                        merged = np.partition(
                            np.concatenate((top[u], buffer[u, :merge_at])), merge_at
                        )
                        top[u] = merged[merge_at:][::-1]
                        buffer[u, :merge_at] = -np.inf
                        fill[u] = 0
                        floor = top[u, k - 1]


@numba.njit(parallel=True, cache=True)
def _fold_parallel(acts, top, buffer, fill, maxima, finite, width):  # pragma: no cover
    """``_fold_units`` over all units, ``width`` units per parallel task."""
    units = acts.shape[2]
    for block in numba.prange((units + width - 1) // width):
        _fold_units(
            acts, top, buffer, fill, maxima, finite, block * width, min(units, (block + 1) * width)
        )


def cpu_quantile_update(
    state: QuantileState, acts: np.ndarray, parallel: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fold a batch (B, h, w, U) into ``state`` in place, on every core when ``parallel``
    (default: when the batch holds more than PARALLEL_VALUES values).

    Returns:
      (B, U) float32 per-image maxima and (B,) bool: whether each image's values are finite.
    """
    batch, height, width, units = acts.shape
    values = np.ascontiguousarray(acts, np.float32).reshape(batch, height * width, units)
    maxima = np.empty((batch, units), np.float32)
    finite = np.empty((batch, units), np.bool_)
    arrays = (values, state.top, state.buffer, state.fill, maxima, finite)
    if parallel is None:
        parallel = values.size > PARALLEL_VALUES
    if parallel:
        # One task per core, each a contiguous run of every row (long runs vectorise best).
        _fold_parallel(*arrays, -(-units // numba.get_num_threads()))
    else:
        _fold_units(*arrays, 0, units)
    state.count[...] = split_words(quantile_count(state) + batch * height * width)
    return maxima, finite.all(axis=1)
