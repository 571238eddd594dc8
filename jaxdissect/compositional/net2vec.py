"""Concepts as directions: per concept, a learned linear combination of a layer's units.

Network Dissection scores single units. Net2Vec (Fong & Vedaldi, CVPR 2018) showed that many
concepts are segmented better by a direction ``w`` in the space of a layer's units: the
concept's logit map is ``z = up(A w) + b``, the layer's maps ``A`` (h, w, U) weighted by
``w`` (U,) and upsampled to the label resolution with the dissection's bilinear rule
(``upsample.resize_matrix``: PIL's coefficients; resizing is linear, so upsampling ``A w``
equals weighting the upsampled unit maps). Each concept's direction is trained with optax
(Adam) on the probe's train images, every pixel at label resolution, with Net2Vec's
class-balanced sigmoid loss

    loss_c = mean over pixels of  alpha_c y softplus(-z) + (1 - alpha_c)(1 - y) softplus(z)

where y is 1 on the concept's pixels and alpha_c = 1 - (the concept's share of the pixels it
is scored on). All concepts train at once: the per-concept loss is ``jax.vmap``ped over
concepts inside one jitted ``lax.scan`` over the optimiser's steps. The direction's threshold
on z is then chosen on the train images (the one of ``bins`` evenly spaced levels between
the smallest and largest logit that maximises the train IoU), and the IoU is reported on
held-out images (a split fixed by a seed).

IoUs follow the dissection's counting exactly (``union="paper"``): the intersection counts
a pixel once per label plane carrying the concept (an image-level concept covers the whole
image), and the mask's area counts the images that carry any label of the concept's
category. The single units are scored on the same held-out images with the dissection's own
thresholds (the top-``quantile`` level of each unit over the whole probe) and its tally:
``best_unit`` is the unit with the highest IoU on the train images, and its held-out IoU is
``iou_best_unit`` (the unit best on the held-out images themselves is reported beside it).

Units are standardised (mean 0, standard deviation 1 over the train images' positions)
while training, which makes Adam's steps comparable across units; the reported weights are
for the raw activations: ``z = up(A @ weights + bias)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect.stats.upsample import resize_matrix

# Counts of a chunk of batches are added in int32 on the device and flushed into int64 on
# the host after at most this many pixels per concept and plane, so no count wraps.
FLUSH_PIXELS = 2**26


class ConceptData(NamedTuple):
    """Images as the direction kernels read them (rows in any order; C concepts).

    Attributes:
      acts: (N, h, w, U) float32 activations (standardised for training).
      planes: (N, P, sh, sw) integer concept row of each pixel of each label plane (C: none).
      image_concepts: (N, M) integer concept rows of the image-level labels (C: none).
      counted: (N, C) bool: the image carries a label of the concept's category, so the
        mask's pixels there count towards its area (the ``paper`` rule).
    """

    acts: jax.Array
    planes: jax.Array
    image_concepts: jax.Array
    counted: jax.Array


# ---------------------------------------------------------------------------------------
# Per-concept kernels (one concept, one batch of images); vmapped over concepts below.


def upsample_matrices(label_size, map_size) -> tuple[np.ndarray, np.ndarray]:
    """(sh, h) and (sw, w) float32 matrices of the dissection's upsampling (PIL's bilinear
    coefficients when enlarging): ``up(a) = rows @ a @ columns.T``."""
    return (
        resize_matrix(label_size[0], map_size[0]).astype(np.float32),
        resize_matrix(label_size[1], map_size[1]).astype(np.float32),
    )


def concept_logits(weights, bias, acts, rows, columns):
    """(B, sh, sw) logits ``up(acts @ weights) + bias`` of one concept.

    Args:
      weights: (U,); bias: scalar.
      acts: (B, h, w, U) maps.
      rows, columns: ``upsample_matrices``.
    """
    low = jnp.einsum("bhwu,u->bhw", acts, weights)
    return jnp.einsum("yh,bhw,xw->byx", rows, low, columns) + bias


def concept_hits(concept, planes, image_concepts):
    """(B, sh, sw) int32: how many label planes carry ``concept`` at each pixel, plus 1
    everywhere on images where it is an image-level label."""
    pixels = jnp.sum(planes == concept, axis=1, dtype=jnp.int32)
    image = jnp.any(image_concepts == concept, axis=1).astype(jnp.int32)
    return pixels + image[:, None, None]


@jax.custom_jvp
def softplus(x):
    """log(1 + exp(x)), stable; its derivative (the sigmoid) reuses the same exp, which
    halves the transcendental work of the loss's gradient against ``jax.nn.softplus``."""
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    sigmoid = jnp.where(x >= 0, 1, e) / (1 + e)
    return jnp.maximum(x, 0) + jnp.log1p(e), sigmoid * dx


def balanced_loss(logits, hits, counted, alpha, valid):
    """Net2Vec's class-balanced sigmoid loss of one concept, summed over the pixels of the
    images that count for it and divided by the batch's pixels:
    alpha * softplus(-z) on the concept's pixels, (1 - alpha) * softplus(z) elsewhere
    (-log sigmoid(z) and -log(1 - sigmoid(z)); softplus(-z) = softplus(z) - z).

    Args:
      logits: (B, sh, sw); hits: (B, sh, sw) ``concept_hits``; counted: (B,) bool;
      alpha: the positives' weight (1 - the concept's pixel share); valid: (B,) bool.
    """
    soft = softplus(logits)
    per_pixel = jnp.where(hits > 0, alpha * (soft - logits), (1 - alpha) * soft)
    weight = (counted & valid)[:, None, None]
    return jnp.sum(jnp.where(weight, per_pixel, 0)) / logits.size


def mask_counts(logits, threshold, hits, counted, valid):
    """int32 (I, A, G) of one concept's mask ``logits > threshold`` on a batch: I the
    intersection (per plane), A the mask's area on the counted images, G the concept's area."""
    mask = (logits > threshold) & valid[:, None, None]
    intersection = jnp.sum(jnp.where(mask, hits, 0), dtype=jnp.int32)
    area = jnp.sum(mask & counted[:, None, None], dtype=jnp.int32)
    truth = jnp.sum(jnp.where(valid[:, None, None], hits, 0), dtype=jnp.int32)
    return jnp.stack([intersection, area, truth])


def bin_positions(logits, low, high, bins: int):
    """int32 bin of each logit among ``bins`` equal bins of [low, high] (clamped): the
    threshold level k is ``low + (high - low) * k / bins``, and a logit above it lies in a
    bin >= k."""
    span = jnp.where(high > low, high - low, 1.0)
    position = jnp.floor((logits - low) / span * bins)
    return jnp.clip(position, 0, bins - 1).astype(jnp.int32)


def mask_histograms(logits, low, high, hits, counted, valid, bins: int):
    """(2, bins) int32: per bin of the logits, the hits (intersection) and the counted pixels
    (area) of one concept on a batch."""
    position = bin_positions(logits, low, high, bins).ravel()
    hits = jnp.where(valid[:, None, None], hits, 0).ravel()
    area = jnp.broadcast_to((counted & valid)[:, None, None], logits.shape).ravel()
    return jnp.stack(
        [
            jnp.zeros(bins, jnp.int32).at[position].add(hits),
            jnp.zeros(bins, jnp.int32).at[position].add(area.astype(jnp.int32)),
        ]
    )


def threshold_levels(low, high, bins: int) -> np.ndarray:
    """(C, bins) float32 threshold levels ``low + (high - low) * k / bins``."""
    low = np.asarray(low, np.float32)[:, None]
    span = np.asarray(high, np.float32)[:, None] - low
    return (low + span * (np.arange(bins, dtype=np.float32) / np.float32(bins))).astype(np.float32)


def choose_levels(histograms: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per concept, the level k maximising the IoU of ``logits > level_k`` read from the
    histograms (first wins on ties), and that IoU.

    Args:
      histograms: (C, 2, bins) int64 hits and counted pixels per bin.
      truth: (C,) int64 the concepts' areas G.
    """
    above = np.cumsum(histograms[:, :, ::-1], axis=2)[:, :, ::-1]  # bins >= k
    intersection, area = above[:, 0].astype(np.float64), above[:, 1].astype(np.float64)
    union = area + truth[:, None] - intersection
    iou = np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)
    best = np.argmax(iou, axis=1)
    return best, iou[np.arange(len(best)), best]


# ---------------------------------------------------------------------------------------
# All concepts at once.


def _per_concept(function, concept_axes):
    """``function`` vmapped over concepts: ``concept_axes`` gives each argument's concept
    axis (None: shared)."""
    return jax.vmap(function, in_axes=concept_axes)


def _batch(data: ConceptData, rows):
    return ConceptData(*(jnp.take(array, rows, axis=0) for array in data))


def _losses(params, alphas, concepts, batch: ConceptData, valid, rows, columns):
    """(C,) each concept's loss on a batch."""

    def one(weights, bias, alpha, concept, counted):
        logits = concept_logits(weights, bias, batch.acts, rows, columns)
        hits = concept_hits(concept, batch.planes, batch.image_concepts)
        return balanced_loss(logits, hits, counted, alpha, valid)

    return _per_concept(one, (0, 0, 0, 0, 1))(
        params["weights"], params["bias"], alphas, concepts, batch.counted
    )


@functools.partial(jax.jit, static_argnames=("epochs", "batch_size", "learning_rate"))
def train_directions(
    data: ConceptData,
    train_rows,
    alphas,
    key: jax.Array,
    rows,
    columns,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
):
    """Trains every concept's direction with Adam on the images ``train_rows`` of ``data``.

    Each epoch visits the train images in an order drawn from ``fold_in(key, epoch)``, in
    batches of ``batch_size`` (the remainder of an epoch is left to the next epoch's order).

    Args:
      data: ``ConceptData`` (standardised activations).
      train_rows: (T,) int32 rows of ``data`` to train on.
      alphas: (C,) positives' weights.
      key: the order's key.
      rows, columns: ``upsample_matrices``.

    Returns:
      ({"weights": (C, U), "bias": (C,)}, (steps, C) losses).
    """
    concepts = jnp.arange(alphas.shape[0], dtype=data.planes.dtype)
    params = {
        "weights": jnp.zeros((alphas.shape[0], data.acts.shape[-1]), jnp.float32),
        "bias": jnp.zeros(alphas.shape, jnp.float32),
    }
    optimizer = optax.adam(learning_rate)
    steps = train_rows.shape[0] // batch_size
    orders = jax.vmap(
        lambda epoch: jax.random.permutation(jax.random.fold_in(key, epoch), train_rows)
    )(jnp.arange(epochs))
    orders = orders[:, : steps * batch_size].reshape(epochs * steps, batch_size)
    valid = jnp.ones(batch_size, bool)

    def step(carry, batch_rows):
        params, state = carry

        def total(p):
            losses = _losses(p, alphas, concepts, _batch(data, batch_rows), valid, rows, columns)
            return jnp.sum(losses), losses

        (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), losses

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), orders)
    return params, losses


@functools.partial(jax.jit, donate_argnums=0)
def _logit_range_step(carry, data: ConceptData, batch_rows, valid, params):
    low = jnp.einsum("bhwu,cu->bhwc", _batch(data, batch_rows).acts, params["weights"])
    low = low + params["bias"]
    v = valid[:, None, None, None]
    return (
        jnp.minimum(carry[0], jnp.min(jnp.where(v, low, jnp.inf), axis=(0, 1, 2))),
        jnp.maximum(carry[1], jnp.max(jnp.where(v, low, -jnp.inf), axis=(0, 1, 2))),
    )


@functools.partial(jax.jit, donate_argnums=0, static_argnames="bins")
def _histogram_step(carry, data, batch_rows, valid, params, low, high, rows, columns, *, bins):
    batch = _batch(data, batch_rows)
    concepts = jnp.arange(low.shape[0], dtype=data.planes.dtype)

    def one(weights, bias, lo, hi, concept, counted):
        logits = concept_logits(weights, bias, batch.acts, rows, columns)
        hits = concept_hits(concept, batch.planes, batch.image_concepts)
        return mask_histograms(logits, lo, hi, hits, counted, valid, bins)

    return carry + _per_concept(one, (0, 0, 0, 0, 0, 1))(
        params["weights"], params["bias"], low, high, concepts, batch.counted
    )


@functools.partial(jax.jit, donate_argnums=0)
def _count_step(carry, data, batch_rows, valid, params, thresholds, rows, columns):
    batch = _batch(data, batch_rows)
    concepts = jnp.arange(thresholds.shape[0], dtype=data.planes.dtype)

    def one(weights, bias, threshold, concept, counted):
        logits = concept_logits(weights, bias, batch.acts, rows, columns)
        hits = concept_hits(concept, batch.planes, batch.image_concepts)
        return mask_counts(logits, threshold, hits, counted, valid)

    return carry + _per_concept(one, (0, 0, 0, 0, 1))(
        params["weights"], params["bias"], thresholds, concepts, batch.counted
    )


def fold_split(
    step: Callable, init, data: ConceptData, split_rows: np.ndarray, batch_size: int, *args
):
    """Folds the images ``split_rows`` of ``data`` into ``init`` with the jitted
    ``step(carry, data, batch_rows, valid, *args)`` batch by batch (the last one padded and
    masked, so one shape compiles). Integer carries are flushed into int64 on the host before
    a count could wrap; float carries stay on the device."""
    pixels = int(np.prod(data.planes.shape[1:]))
    flush = max(1, FLUSH_PIXELS // max(1, batch_size * pixels))
    integer = np.issubdtype(np.asarray(jax.tree.leaves(init)[0]).dtype, np.integer)
    total = jax.tree.map(lambda x: np.zeros(np.shape(x), np.int64), init) if integer else None
    fresh = lambda: jax.tree.map(jnp.array, init)  # noqa: E731 - its own buffers each time
    carry = fresh()
    for number, start in enumerate(range(0, len(split_rows), batch_size), start=1):
        chunk = split_rows[start : start + batch_size]
        valid = np.zeros(batch_size, bool)
        valid[: len(chunk)] = True
        padded = np.zeros(batch_size, np.int32)
        padded[: len(chunk)] = chunk
        carry = step(carry, data, jnp.asarray(padded), jnp.asarray(valid), *args)
        if integer and number % flush == 0:
            total = jax.tree.map(lambda t, c: t + np.asarray(c, np.int64), total, carry)
            carry = fresh()
    if not integer:
        return jax.tree.map(np.asarray, carry)
    return jax.tree.map(lambda t, c: t + np.asarray(c, np.int64), total, carry)


def score_directions(
    data: ConceptData, params, split_rows, thresholds, rows, columns, batch_size
) -> np.ndarray:
    """(C, 3) int64 (I, A, G) of each concept's mask ``logits > threshold`` on the images
    ``split_rows``."""
    init = jnp.zeros((len(thresholds), 3), jnp.int32)
    return fold_split(
        _count_step, init, data, np.asarray(split_rows), batch_size, params,
        jnp.asarray(thresholds, jnp.float32), rows, columns,
    )  # fmt: skip


def counts_iou(counts: np.ndarray) -> np.ndarray:
    """IoU = I / (A + G - I) of (..., 3) counts (I, A, G); 0 for an empty union."""
    counts = np.asarray(counts, np.int64)
    intersection, area, truth = counts[..., 0], counts[..., 1], counts[..., 2]
    union = area + truth - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def choose_thresholds(
    data: ConceptData, params, train_rows, truth, rows, columns, batch_size: int, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each concept's threshold on its logits: the level of ``bins`` between the smallest
    and largest logit on the train images ``train_rows`` that maximises its train IoU
    (``truth``: (C,) the concepts' areas G there). Returns the thresholds (C,) float32 and
    the histograms' IoU at them."""
    concepts = params["bias"].shape[0]
    start = (jnp.full(concepts, jnp.inf), jnp.full(concepts, -jnp.inf))
    # Bilinear weights are >= 0 and sum to 1: the upsampled logits stay within the range
    # of the layer-resolution ones.
    low, high = fold_split(_logit_range_step, start, data, train_rows, batch_size, params)
    # Half a bin beyond both ends: no level falls on the extreme logits themselves (the
    # upsampled maps reach them exactly, at their corners).
    pad = np.where(high > low, (high - low) / (2 * bins), 0.5).astype(np.float32)
    low, high = low - pad, high + pad
    init = jnp.zeros((concepts, 2, bins), jnp.int32)
    histograms = fold_split(
        functools.partial(_histogram_step, bins=bins), init, data, train_rows, batch_size,
        params, jnp.asarray(low), jnp.asarray(high), rows, columns,
    )  # fmt: skip
    best, iou = choose_levels(histograms, np.asarray(truth, np.int64))
    levels = threshold_levels(low, high, bins)
    return levels[np.arange(concepts), best], iou
