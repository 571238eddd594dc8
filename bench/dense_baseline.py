"""The accelerator baseline: a dense one-hot matmul tally (the yardstick in DESIGN.md).

Per image, the unit masks (U, sh*sw) multiply a one-hot of every pixel's labels over the
whole label axis (sh*sw, L): simple and exact, but it multiplies by ~1,200 mostly-zero
columns. The union rule is Lite's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdissect.stats.tally import unit_masks


@functools.partial(jax.jit, static_argnames=("num_labels", "num_categories"))
def dense_tally(
    acts,
    thresholds,
    label_planes,
    image_labels,
    label_category,
    rows,
    cols,
    *,
    num_labels,
    num_categories,
):
    """G (L,), I (U, L), A (U, C) int32 for one batch."""
    category_onehot = jax.nn.one_hot(label_category, num_categories, dtype=jnp.float32)

    def one(acts, planes, scalars):
        mask = unit_masks(acts, thresholds, rows, cols).reshape(acts.shape[-1], -1)
        onehot = jax.nn.one_hot(
            planes.reshape(planes.shape[0], -1), num_labels, dtype=jnp.bfloat16
        ).sum(0)
        onehot = onehot.at[:, 0].set(0)
        hits = jnp.matmul(mask.astype(jnp.bfloat16), onehot, preferred_element_type=jnp.float32)
        area = mask.sum(1).astype(jnp.float32)
        scalar_onehot = jax.nn.one_hot(scalars, num_labels, dtype=jnp.float32).at[:, 0].set(0)
        hits = hits + area[:, None] * scalar_onehot.sum(0)
        pixel_area = onehot.sum(0).astype(jnp.float32) + scalar_onehot.sum(0) * mask.shape[1]
        counted = (hits @ category_onehot) > 0
        # Exact per image (< 2**24); summed over the batch as integers.
        return (
            pixel_area.astype(jnp.int32),
            hits.astype(jnp.int32),
            (area[:, None] * counted).astype(jnp.int32),
        )

    G, I, A = jax.vmap(one)(acts, label_planes, image_labels)
    return G.sum(0), I.sum(0), A.sum(0)
