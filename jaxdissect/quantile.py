"""Exact per-unit quantile thresholds, streamed through a running top-k.

The threshold of unit u is ``numpy.quantile(A[..., u].ravel(), 1 - q)`` (linear
interpolation) over every spatial position of every image. With n positions that quantile
only reads the ``ceil(q * n) + 1`` largest values, so a running top-k of that size per unit
gives the exact answer without holding the activations: ``quantile_update`` folds a batch
in, ``quantile_merge`` combines states from different shards or hosts, and
``quantile_result`` interpolates exactly as NumPy does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int


class QuantileState(NamedTuple):
    """Running top-k of each unit's activations, with a staging buffer.

    A new value can only matter if it exceeds the unit's current k-th largest value (the
    last column of ``top``); those few are appended to the unit's row of ``buffer``, and
    only when a row would overflow is the buffer merged into ``top`` by one top-k. So the
    cost per value stays constant however large k grows (a top-k per batch would cost
    O(k) each time).

    Attributes:
      top: (U, k) float32, the k largest values merged so far, descending (-inf where fewer).
      buffer: (U, M) float32, candidate values not merged yet (-inf in unused columns).
      fill: (U,) int32, columns of each row of ``buffer`` in use.
      count: () int32, number of positions folded in per unit.
      q: () float32, the upper-tail fraction (kept for ``quantile_result``).
    """

    top: Float[Array, "units k"]
    buffer: Float[Array, "units m"]
    fill: Int[Array, " units"]
    count: Int[Array, ""]
    q: Float[Array, ""]


def topk_size(q: float, positions: int) -> int:
    """Number of largest values needed for the (1 - q) quantile of ``positions`` values."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile q must lie in (0, 1), got {q!r}")
    if positions < 1:
        raise ValueError(f"positions must be >= 1, got {positions!r}")
    # +2, not +1: floor((n-1)(1-q)) in floating point may land one index lower.
    return min(positions, math.ceil(q * positions) + 2)


def quantile_init(
    units: int, q: float, positions: int, buffer_size: int | None = None
) -> QuantileState:
    """Empty state for ``units`` units whose (1 - q) quantile over ``positions`` values is wanted.

    Args:
      units: number of units U.
      q: upper-tail fraction in (0, 1); NetDissect uses 0.005.
      positions: total number of values per unit that will be folded in (N * h * w).
      buffer_size: staging columns M (default max(k, 4096)); a larger buffer merges less often.

    Returns:
      A QuantileState with a (U, k) top-k, k = ceil(q * positions) + 2 (at most positions).
    """
    k = topk_size(q, positions)
    buffer_size = buffer_size or max(k, 4096)
    return QuantileState(
        top=jnp.full((units, k), -jnp.inf, jnp.float32),
        buffer=jnp.full((units, buffer_size), -jnp.inf, jnp.float32),
        fill=jnp.zeros((units,), jnp.int32),
        count=jnp.zeros((), jnp.int32),
        q=jnp.asarray(q, jnp.float32),
    )


def _flush(state: QuantileState) -> QuantileState:
    """Merges the buffer into the top-k and empties it."""
    k = state.top.shape[1]
    if isinstance(state.top, np.ndarray):  # the CPU backend's state: no XLA program
        top = -np.sort(-np.concatenate([state.top, state.buffer], axis=1), axis=1)[:, :k]
        return state._replace(
            top=top, buffer=np.full_like(state.buffer, -np.inf), fill=np.zeros_like(state.fill)
        )
    top, _ = jax.lax.top_k(jnp.concatenate([state.top, state.buffer], axis=1), k)
    return state._replace(
        top=top, buffer=jnp.full_like(state.buffer, -jnp.inf), fill=jnp.zeros_like(state.fill)
    )


def quantile_update(
    state: QuantileState,
    acts: Float[Array, "batch h w units"],
    valid: Bool[Array, " batch"] | None = None,
) -> QuantileState:
    """Fold a batch of activations into the running top-k.

    Args:
      state: the running state.
      acts: (B, h, w, U) activations.
      valid: optional (B,) mask; padded images (False) are ignored.

    Returns:
      The updated state. Jittable; shapes are static.
    """
    batch, height, width, units = acts.shape
    acts = acts.astype(jnp.float32)
    if valid is None:
        valid = jnp.ones((batch,), bool)
    acts = jnp.where(valid[:, None, None, None], acts, -jnp.inf)
    values = acts.reshape(batch * height * width, units).T
    count = state.count + jnp.sum(valid).astype(jnp.int32) * (height * width)
    size = values.shape[1]
    if size > state.buffer.shape[1]:  # static: the batch alone could overfill the buffer
        state = _flush(state)
        top, _ = jax.lax.top_k(jnp.concatenate([state.top, values], axis=1), state.top.shape[1])
        return state._replace(top=top, count=count)
    # Equal values leave the multiset of the k largest unchanged, so strict > is exact.
    candidate = values > state.top[:, -1:]
    needed = state.fill + jnp.sum(candidate, axis=1, dtype=jnp.int32)
    state = jax.lax.cond(jnp.any(needed > state.buffer.shape[1]), _flush, lambda s: s, state)
    candidate = values > state.top[:, -1:]
    column = state.fill[:, None] + jnp.cumsum(candidate, axis=1, dtype=jnp.int32) - 1
    column = jnp.where(candidate, column, state.buffer.shape[1])  # out of range: dropped
    rows = jnp.broadcast_to(jnp.arange(units)[:, None], column.shape)
    buffer = state.buffer.at[rows, column].set(values, mode="drop")
    fill = state.fill + jnp.sum(candidate, axis=1, dtype=jnp.int32)
    return state._replace(buffer=buffer, fill=fill, count=count)


def quantile_merge(a: QuantileState, b: QuantileState) -> QuantileState:
    """Combine the states of two disjoint parts of the data (associative, commutative)."""
    a, b = _flush(a), _flush(b)
    top, _ = jax.lax.top_k(jnp.concatenate([a.top, b.top], axis=1), a.top.shape[1])
    return a._replace(top=top, count=a.count + b.count)


def quantile_result(state: QuantileState, q: float | None = None) -> np.ndarray:
    """Per-unit thresholds equal to ``numpy.quantile(values, 1 - q)`` (method 'linear').

    Runs on the host, once, after the last update; it reproduces NumPy's index arithmetic
    (float64) and its two-sided linear interpolation (in float32) exactly.

    Args:
      state: the final state.
      q: the upper-tail fraction; defaults to the one given to ``quantile_init``. Pass the
        Python float to avoid the float32 rounding of the stored copy.

    Returns:
      (U,) float32 thresholds.
    """
    top = np.asarray(_flush(state).top, np.float32)
    n = int(state.count)
    k = top.shape[1]
    if n < 1:
        raise ValueError("quantile_result: no values were folded into the state")
    q = float(state.q) if q is None else float(q)
    p = 1.0 - q
    # numpy's _compute_virtual_index with alpha = beta = 1, then _get_indexes.
    virtual = n * p + (1.0 + p * (1.0 - 1.0 - 1.0)) - 1.0
    if virtual >= n - 1:
        previous = following = n - 1
    else:
        previous = max(math.floor(virtual), 0)
        following = previous + 1
    # A Python float, as in numpy's weak-scalar path, so float32 stays float32.
    gamma = float(virtual - math.floor(virtual)) if 0 <= virtual < n - 1 else 0.0
    if n - previous > k:
        raise ValueError(
            f"quantile state holds the top {k} values but the quantile needs the top "
            f"{n - previous}: more positions were folded in ({n}) than quantile_init was told"
        )
    ascending = top[:, ::-1]  # the full sorted array's tail: index i -> i - (n - k)
    offset = n - k
    a = ascending[:, previous - offset]
    b = ascending[:, following - offset]
    # numpy's _lerp: a + (b - a) * t, or b - (b - a) * (1 - t) where t >= 0.5.
    diff = b - a
    if gamma >= 0.5:
        return (b - diff * (1 - gamma)).astype(np.float32)
    return (a + diff * gamma).astype(np.float32)
