"""A running top-k of each unit's most activating images, with their activation maps.

Folded in during the threshold pass (the per-image maxima are computed there anyway), so the
report needs no third pass over the data: for every unit, the k images with the largest
maximum activation, their indices and (h, w) maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from jaxdissect.errors import DissectError
from jaxdissect.runtime import jax, jnp
from jaxdissect.stats.checks import check_count, check_state_bytes

if TYPE_CHECKING:
    from jaxtyping import Array, Float, Int


class TopImagesState(NamedTuple):
    """Attributes:
    values: (U, k) the images' maximum activations, descending (-inf where fewer).
    indices: (U, k) int32 image indices (-1 where fewer).
    maps: (U, k, h, w) their activation maps.
    """

    values: Float[Array, "units k"]
    indices: Int[Array, "units k"]
    maps: Float[Array, "units k h w"]


def top_images_init(units: int, k: int, height: int, width: int, xp=jnp) -> TopImagesState:
    """The empty state, as jax.Arrays (``xp=jnp``) or NumPy arrays (``xp=np``)."""
    check_state_bytes(
        4 * units * k * (height * width + 2), "top images init", ("units", "k", "height", "width")
    )
    return TopImagesState(
        values=xp.full((units, k), -np.inf, np.float32),
        indices=xp.full((units, k), -1, np.int32),
        maps=xp.zeros((units, k, height, width), np.float32),
    )


def _select(values, indices, maps, k):
    """The k largest of each row (ties: the lower image index, as a stable argsort)."""
    order = jnp.lexsort((indices, -values), axis=-1)[:, :k]

    def take(a):
        return jnp.take_along_axis(a, order.reshape(*order.shape, *(1,) * (a.ndim - 2)), axis=1)

    return TopImagesState(take(values), take(indices), take(maps))


def top_images_update(
    state: TopImagesState,
    acts: Float[Array, "batch h w units"],
    indices: Int[Array, " batch"],
    valid,
) -> TopImagesState:
    """Fold in a batch: ``indices`` are the images' positions in the dataset."""
    k = state.values.shape[1]
    maxima = jnp.where(valid[:, None], jnp.max(acts, axis=(1, 2)), -jnp.inf).T  # (U, B)
    # The batch's own top k first, so that only k maps per unit are gathered.
    batch_values, batch_rows = jax.lax.top_k(maxima, min(k, maxima.shape[1]))
    batch_indices = jnp.where(jnp.isfinite(batch_values), indices[batch_rows], -1)
    units = jnp.arange(acts.shape[-1])[:, None]
    batch_maps = jnp.transpose(acts, (3, 0, 1, 2))[units, batch_rows].astype(jnp.float32)
    return _select(
        jnp.concatenate([state.values, batch_values], axis=1),
        jnp.concatenate([state.indices, batch_indices], axis=1),
        jnp.concatenate([state.maps, batch_maps], axis=1),
        k,
    )


def top_images_merge(a: TopImagesState, b: TopImagesState) -> TopImagesState:
    return _select(
        *(jnp.concatenate([x, y], axis=1) for x, y in zip(a, b, strict=True)), a.values.shape[1]
    )


def top_images_update_host(
    state: TopImagesState, acts: np.ndarray, indices: np.ndarray
) -> TopImagesState:
    """``top_images_update`` in NumPy, for the CPU backend (no XLA program to compile): the
    same result, ties broken the same way (the lower image index first).

    Args:
      state: a TopImagesState of NumPy arrays.
      acts: (B, h, w, U) float32, every row valid.
      indices: (B,) the rows' image indices.
    """
    units, k = state.values.shape
    batch = acts.shape[0]
    maxima = acts.reshape(batch, -1, units).max(axis=1).T  # (U, B)
    # Only units where an image ranks above the k-th kept one (a larger maximum, or an equal
    # one and a lower index) change, a few once the top fills: the rest are copied.
    floor, floor_image = state.values[:, -1:], state.indices[:, -1:]
    changes = ((maxima > floor) | ((maxima == floor) & (indices < floor_image))).any(axis=1)
    rows = np.flatnonzero(changes | np.isnan(floor[:, 0]))  # NaN sorts last: redo the row
    values = np.concatenate([state.values[rows], maxima[rows]], axis=1)
    image = np.concatenate(
        [state.indices[rows], np.broadcast_to(indices, (len(rows), batch))], axis=1
    )
    order = np.lexsort((image, -values), axis=-1)[:, :k]
    unit = np.broadcast_to(rows[:, None], order.shape)
    kept = order < k  # already in the state, else the batch's row order - k
    changed = np.empty((len(rows), *state.maps.shape[1:]), state.maps.dtype)
    changed[kept] = state.maps[unit[kept], order[kept]]
    changed[~kept] = acts[order[~kept] - k, :, :, unit[~kept]]
    maps = state.maps.copy()
    maps[rows] = changed
    result_values, result_indices = state.values.copy(), state.indices.copy()
    result_values[rows] = np.take_along_axis(values, order, axis=1)
    result_indices[rows] = np.take_along_axis(image, order, axis=1)
    return TopImagesState(result_values, result_indices, maps)


def top_images_statistic(k: int):
    """Each unit's k most activating images and their maps, as a ``Statistic``.

    k is closed over (optax-style), never an array leaf: it and the map size are the
    state's shapes, which ``merge`` checks.

    Args:
      k: images kept per unit.

    Returns:
      ``Statistic(init, update, merge, result)`` with ``init(units, height, width)``;
      ``update(state, acts, indices, valid=None)`` (``acts`` (B, h, w, U), ``indices`` (B,)
      the images' positions in the dataset, ``valid`` (B,) bool); ``merge(a, b)``, which
      refuses states of another k or map size; and ``result(state) -> TopImagesState``
      (ties: the lower image index first).
    """
    from jaxdissect.kernels.base import Statistic

    k = check_count(k, "k", what="top_images_statistic")

    def check(what, *states):
        names = ("state",) if len(states) == 1 else ("a", "b")
        for name, state in zip(names, states, strict=True):
            if state.values.shape[1] != k:
                raise DissectError(
                    f"top_images_statistic {what}: `{name}` is a state of "
                    f"k={state.values.shape[1]}, given to a statistic of k={k}",
                    arguments=(name,),
                )
        if len(states) == 2 and states[0].maps.shape != states[1].maps.shape:
            raise DissectError(
                f"top_images_statistic {what}: `a` and `b` are states of map shapes "
                f"{states[0].maps.shape} and {states[1].maps.shape} (other units or map sizes)",
                arguments=("a", "b"),
            )

    def init(units: int, height: int, width: int) -> TopImagesState:
        what = "top_images_statistic init"
        units = check_count(units, "units", what=what)
        height = check_count(height, "height", what=what)
        width = check_count(width, "width", what=what)
        return top_images_init(units, k, height, width)

    def update(state, acts, indices, valid=None) -> TopImagesState:
        check("update", state)
        if np.ndim(acts) != 4 or np.shape(indices) != (np.shape(acts)[0],):
            raise DissectError(
                f"top_images_statistic update: `acts` of shape {np.shape(acts)} and `indices` "
                f"of shape {np.shape(indices)}: expected (B, h, w, U) and (B,), one image index "
                "per image",
                arguments=("acts", "indices"),
            )
        if valid is not None and np.shape(valid) != (np.shape(acts)[0],):
            raise DissectError(
                f"top_images_statistic update: `valid` of shape {np.shape(valid)}, expected "
                f"({np.shape(acts)[0]},) for `acts` of shape {np.shape(acts)}",
                arguments=("valid",),
            )
        if tuple(acts.shape[1:3]) != tuple(state.maps.shape[2:]):
            raise DissectError(
                f"top_images_statistic update: `acts` of size {tuple(acts.shape[1:3])} for "
                f"`state` of maps {tuple(state.maps.shape[2:])}",
                arguments=("acts", "state"),
            )
        if valid is None:
            valid = jnp.ones((acts.shape[0],), bool)
        return top_images_update(state, acts, jnp.asarray(indices, jnp.int32), valid)

    def merge(a, b) -> TopImagesState:
        check("merge", a, b)
        return top_images_merge(a, b)

    def result(state) -> TopImagesState:
        check("result", state)
        return state

    return Statistic(init, update, merge, result)
