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

import dataclasses
import functools
import time
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class DirectionConfig:
    """How directions are trained and scored.

    Attributes:
      heldout: the share of the probe's images held out for scoring (the rest train).
      seed: fixes the split and the order of the training images.
      min_pixels: a concept is trained when it covers at least this many label pixels in
        both the train and the held-out images.
      epochs: passes over the train images.
      batch_size: images per optimiser step.
      learning_rate: Adam's step size (the units are standardised).
      bins: threshold levels tried per concept.
    """

    heldout: float = 0.3
    seed: int = 0
    min_pixels: int = 200
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.02
    bins: int = 1024

    def __post_init__(self):
        if not 0.0 < self.heldout < 1.0:
            raise ValueError(f"heldout must lie in (0, 1), got {self.heldout}")
        for name in ("min_pixels", "epochs", "batch_size", "bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


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


# ---------------------------------------------------------------------------------------
# The driver.


class Directions(NamedTuple):
    """A layer's concept directions, ready to write.

    Attributes:
      layer: the layer's name.
      rows: one dict per concept (see ``directions``).
      weights: (C, U) float32 for the raw activations; bias, thresholds: (C,) float32.
      labels: (C,) int64 label numbers; names: (C,) their names.
      mean, scale: (U,) float32 the standardisation used while training.
      unit_thresholds: (U,) float32 the dissection's thresholds of the units.
      train_rows, heldout_rows: the split (image indices in index.csv order).
      losses: (steps, C) float32 the training losses.
      settings: the DirectionConfig; seconds: {stage: wall seconds}.
    """

    layer: str
    rows: list
    weights: np.ndarray
    bias: np.ndarray
    thresholds: np.ndarray
    labels: np.ndarray
    names: tuple
    mean: np.ndarray
    scale: np.ndarray
    unit_thresholds: np.ndarray
    train_rows: np.ndarray
    heldout_rows: np.ndarray
    losses: np.ndarray
    settings: DirectionConfig
    seconds: dict


def split_images(num_images: int, heldout: float, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sorted image indices: a permutation drawn from ``key``, its first
    round(heldout * N) images held out (at least one each side)."""
    if num_images < 2:
        raise ValueError(f"need at least 2 images to split, got {num_images}")
    count = min(max(1, round(heldout * num_images)), num_images - 1)
    order = np.asarray(jax.random.permutation(key, num_images))
    return np.sort(order[count:]), np.sort(order[:count])


def _read_layer(source, layer: str, batch_size: int, progress: bool) -> np.ndarray:
    from jaxdissect.progress import progress_bar

    shape = source.shapes[layer]
    acts = np.empty((source.num_images, *shape), np.float32)
    for start in progress_bar(
        range(0, source.num_images, batch_size), desc=f"{layer}: activations", unit="batch",
        disable=not progress,
    ):  # fmt: skip
        stop = min(start + batch_size, source.num_images)
        acts[start:stop] = np.asarray(source.read(start, stop)[layer], np.float32)
    if not np.isfinite(acts).all():
        image = int(np.argmin(np.isfinite(acts).reshape(len(acts), -1).all(1)))
        raise ValueError(f"layer {layer!r}: NaN or inf activation in image {image}")
    return acts


def _unit_counts(acts, image_rows, labels, dataset, thresholds, layer, config, backend):
    """The dissection's (G, I, A) int64 counts of the units on the images ``image_rows``."""
    from jaxdissect.data.cache import LabelArrays
    from jaxdissect.passes import run_pass

    subset = LabelArrays(*(np.asarray(array[image_rows]) for array in labels))
    shape = tuple(acts.shape[1:])
    statistic = backend.tally(layer, shape, thresholds, dataset, subset, config)
    return run_pass(
        f"tally {len(image_rows)} images", {layer: statistic}, backend,
        lambda start, stop: {layer: acts[image_rows[start:stop]]}, {layer: shape},
        len(image_rows), subset, progress=False,
    )[layer]  # fmt: skip


def concept_arrays(labels, dataset, concept_labels: np.ndarray, batch_size: int = 256):
    """Host arrays of ``ConceptData`` but the activations: planes (N, P, sh, sw), image
    concepts (N, M), counted (N, C), for concepts with label numbers ``concept_labels``."""
    count = len(concept_labels)
    dtype = np.int16 if count < 2**15 - 1 else np.int32
    row_of = np.full(dataset.num_labels, count, np.int64)
    row_of[concept_labels] = np.arange(count)
    label_category = np.asarray(dataset.label_category, np.int64)
    concept_category = label_category[concept_labels]
    categories = len(dataset.categories)
    planes, image_concepts, counted = [], [], []
    for start in range(0, dataset.num_images, batch_size):
        stop = min(start + batch_size, dataset.num_images)
        numbers = labels.label_planes(start, stop)
        image_numbers = np.asarray(labels.image_labels[start:stop], np.int64)
        planes.append(row_of[numbers].astype(dtype))
        image_concepts.append(row_of[image_numbers].astype(dtype))
        present = np.zeros((stop - start, categories + 1), bool)  # column -1: no category
        flat = numbers.reshape(len(numbers), -1)
        for numbers_of_image in (flat, image_numbers):
            cats = np.where(numbers_of_image > 0, label_category[numbers_of_image], -1)
            image_index = np.broadcast_to(np.arange(len(cats))[:, None], cats.shape)
            present[image_index.ravel(), cats.ravel()] = True
        counted.append(present[:, concept_category])
    return np.concatenate(planes), np.concatenate(image_concepts), np.concatenate(counted)


def directions(
    dataset,
    source,
    config=None,
    out=None,
    *,
    layer: str | None = None,
    weights=None,
    settings: DirectionConfig | None = None,
    labels=None,
    images=None,
    cache=None,
    report: bool = True,
    progress: bool = True,
) -> Directions:
    """Trains and scores a direction for every concept with enough pixels in one layer: the
    function the CLI's ``directions`` command, the study and Python users call.

    Args:
      dataset: a Broden-format folder or ``open_broden``'s dataset.
      source: a features .npy path or array, an ``Activations``, or a ``FeatureModel``.
      config: the ``DissectConfig`` whose quantile sets the units' thresholds, and whose
        kernel and batch size run the units' passes (its union rule is always ``paper``).
      out: where to write directions.csv, directions.npz, directions.json and
        directions.html (None: nowhere).
      layer: the layer (required for a model; a features file's name otherwise).
      weights: the model's weights file (for its identity).
      settings: the ``DirectionConfig``.
      labels, images, cache: the decoded labels and images, when the caller has them.
      report: write directions.html.
      progress: progress bars.

    Returns:
      ``Directions``; each of its rows: label, category, iou_direction, iou_best_unit,
      best_unit (1-based), iou_best_unit_heldout and best_unit_heldout (the unit best on the
      held-out images), iou_chance (the mask covering every counted pixel), the same on the
      train images, threshold, pixels on each side, the final loss and the top units.
    """
    from jaxdissect.config import DissectConfig
    from jaxdissect.data.cache import load_label_arrays
    from jaxdissect.errors import DissectError
    from jaxdissect.kernels import select_backend
    from jaxdissect.models.features import FeatureModel
    from jaxdissect.passes import compute_thresholds
    from jaxdissect.pipeline import open_inputs
    from jaxdissect.stats.scores import iou as unit_iou

    config = dataclasses.replace(config or DissectConfig(), union="paper", top_images=0)
    settings = settings or DirectionConfig()
    if isinstance(source, FeatureModel) and not layer:
        raise DissectError(
            f"name the layer of model {source.name!r} (`layer`)", arguments=("layer",)
        )
    dataset, source, images = open_inputs(
        dataset, source, [layer] if layer else None, config.batch_size, weights, images, cache,
        progress,
    )  # fmt: skip
    layer = layer or next(iter(source.shapes))
    if layer not in source.shapes:
        raise DissectError(f"layer {layer!r} is not among {sorted(source.shapes)}")
    if labels is None:
        labels = load_label_arrays(dataset, cache, progress)
    seconds = {}
    started = time.perf_counter()
    try:
        acts = _read_layer(source, layer, config.batch_size, progress)
    except ValueError as error:
        raise DissectError(str(error)) from None
    seconds["activations"] = time.perf_counter() - started

    # The units: the dissection's thresholds over the whole probe, counts on each side.
    started = time.perf_counter()
    backend = select_backend(config)
    shapes = {layer: tuple(acts.shape[1:])}
    thresholds = compute_thresholds(
        lambda start, stop: {layer: acts[start:stop]}, len(acts), shapes, config, False,
        backend=backend,
    )[layer]  # fmt: skip
    key = jax.random.key(settings.seed)
    train_rows, heldout_rows = split_images(len(acts), settings.heldout, jax.random.fold_in(key, 0))
    unit_counts = {
        side: _unit_counts(acts, image_rows, labels, dataset, thresholds, layer, config, backend)
        for side, image_rows in (("train", train_rows), ("heldout", heldout_rows))
    }
    seconds["units"] = time.perf_counter() - started

    label_category = np.asarray(dataset.label_category)
    enough = (
        (np.arange(dataset.num_labels) > 0)
        & (label_category >= 0)
        & (unit_counts["train"][0] >= settings.min_pixels)
        & (unit_counts["heldout"][0] >= settings.min_pixels)
    )
    concept_labels = np.flatnonzero(enough)
    if not len(concept_labels):
        raise DissectError(
            f"no concept covers {settings.min_pixels} label pixels in both the train and the "
            "held-out images: lower --min-pixels, or use more images"
        )
    scores = {
        side: unit_iou(*counts, label_category, dtype=np.float64)[:, concept_labels]
        for side, counts in unit_counts.items()
    }

    # The directions.
    started = time.perf_counter()
    planes, image_concepts, counted = concept_arrays(labels, dataset, concept_labels)
    train_acts = acts[train_rows]
    mean = train_acts.mean(axis=(0, 1, 2), dtype=np.float64)
    scale = train_acts.std(axis=(0, 1, 2), dtype=np.float64)
    del train_acts
    scale = np.where(scale > 0, scale, 1.0)
    data = ConceptData(
        jnp.asarray((acts - mean.astype(np.float32)) / scale.astype(np.float32)),
        jnp.asarray(planes),
        jnp.asarray(image_concepts),
        jnp.asarray(counted),
    )
    del planes
    rows, columns = (jnp.asarray(m) for m in upsample_matrices(dataset.label_size, acts.shape[1:3]))
    pixels = int(np.prod(dataset.label_size))
    truth_train = unit_counts["train"][0][concept_labels]
    counted_train = counted[train_rows].sum(0) * pixels
    alphas = 1.0 - truth_train / np.maximum(counted_train, 1)
    batch_size = min(settings.batch_size, len(train_rows))
    params, losses = train_directions(
        data, jnp.asarray(train_rows, jnp.int32), jnp.asarray(alphas, jnp.float32),
        jax.random.fold_in(key, 1), rows, columns, epochs=settings.epochs,
        batch_size=batch_size, learning_rate=settings.learning_rate,
    )  # fmt: skip
    losses = np.asarray(losses)
    if not np.isfinite(losses).all():
        bad = int(np.argmin(np.isfinite(losses).all(0)))
        raise DissectError(
            f"training the direction of {dataset.label_names[concept_labels[bad]]!r}: the loss is not finite"
        )
    seconds["train"] = time.perf_counter() - started
    started = time.perf_counter()
    direction_thresholds, _ = choose_thresholds(
        data, params, train_rows, truth_train, rows, columns, batch_size, settings.bins
    )
    direction_counts = {
        side: score_directions(
            data, params, image_rows, direction_thresholds, rows, columns, batch_size
        )
        for side, image_rows in (("train", train_rows), ("heldout", heldout_rows))
    }
    seconds["score"] = time.perf_counter() - started

    standard_weights = np.asarray(params["weights"], np.float64)
    raw_weights = (standard_weights / scale).astype(np.float32)
    raw_bias = (np.asarray(params["bias"], np.float64) - standard_weights @ (mean / scale)).astype(
        np.float32
    )
    steps_per_epoch = max(1, losses.shape[0] // settings.epochs)
    final_loss = losses[-steps_per_epoch:].mean(0)
    counted_heldout = counted[heldout_rows].sum(0) * pixels
    result_rows = []
    for index, label in enumerate(concept_labels):
        best = int(np.argmax(scores["train"][:, index]))
        oracle = int(np.argmax(scores["heldout"][:, index]))
        truth_heldout = int(direction_counts["heldout"][index, 2])
        top = np.argsort(-np.abs(standard_weights[index]), kind="stable")[:5]
        result_rows.append(
            {
                "label": dataset.label_names[label],
                "category": dataset.categories[label_category[label]],
                "iou_direction": float(counts_iou(direction_counts["heldout"][index])),
                "iou_best_unit": float(scores["heldout"][best, index]),
                "best_unit": best + 1,
                "iou_best_unit_heldout": float(scores["heldout"][oracle, index]),
                "best_unit_heldout": oracle + 1,
                "iou_chance": truth_heldout / max(1, int(counted_heldout[index])),
                "iou_direction_train": float(counts_iou(direction_counts["train"][index])),
                "iou_best_unit_train": float(scores["train"][best, index]),
                "threshold": float(direction_thresholds[index]),
                "train_pixels": int(truth_train[index]),
                "heldout_pixels": truth_heldout,
                "loss": float(final_loss[index]),
                "top_units": [
                    {"unit": int(u) + 1, "weight": float(standard_weights[index, u])} for u in top
                ],
                "label_number": int(label),
            }
        )
    found = Directions(
        layer,
        result_rows,
        raw_weights,
        raw_bias,
        np.asarray(direction_thresholds, np.float32),
        concept_labels.astype(np.int64),
        tuple(dataset.label_names[label] for label in concept_labels),
        mean.astype(np.float32),
        scale.astype(np.float32),
        np.asarray(thresholds.thresholds, np.float32),
        train_rows,
        heldout_rows,
        losses,
        settings,
        seconds,
    )
    if out is not None:
        from jaxdissect.report.directions import write_directions

        write_directions(out, found, dataset, source.provenance, report)
    return found
