"""Fitting a layer's concept directions: the split, the units' side (the dissection's
thresholds and tally on each side), the concepts' label arrays, then training and scoring
every direction at once (``net2vec``) into ``Directions``. ``directions.directions`` runs
this through the pipeline.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.compositional.net2vec import (
    ConceptData,
    choose_thresholds,
    counts_iou,
    score_directions,
    train_directions,
    upsample_matrices,
)
from jaxdissect.errors import DissectError

MAX_EPOCHS = 1000  # see DirectionConfig.epochs


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
        def refuse(name, message):
            raise DissectError(f"`{name}` {message}", arguments=(name,))

        if not 0.0 < self.heldout < 1.0:
            refuse("heldout", f"must lie in (0, 1), got {self.heldout}")
        for name in ("min_pixels", "epochs", "batch_size", "bins"):
            if getattr(self, name) < 1:
                refuse(name, f"must be >= 1, got {getattr(self, name)}")
        # The training orders of every epoch are drawn at once, (epochs, train images).
        if self.epochs > MAX_EPOCHS:
            refuse("epochs", f"must be at most {MAX_EPOCHS}, got {self.epochs}")
        if not 0 < self.learning_rate < math.inf:
            refuse("learning_rate", f"must be finite and > 0, got {self.learning_rate}")
        # Training runs in float32: 1e300 became inf there, after a NumPy warning.
        if self.learning_rate > float(np.finfo(np.float32).max):
            refuse(
                "learning_rate", f"must fit float32 (training runs in it), got {self.learning_rate}"
            )
        # jax.random.key keeps a seed's low 32 bits (2**32 drew seed 0's split); beyond
        # 2**63 it raised OverflowError.
        if not 0 <= self.seed < 2**32:
            refuse("seed", f"must lie in [0, 2**32), got {self.seed}")


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
        raise DissectError(
            f"`dataset` holds {num_images} image(s); the train / held-out split needs at least 2",
            arguments=("dataset",),
        )
    count = min(max(1, round(heldout * num_images)), num_images - 1)
    order = np.asarray(jax.random.permutation(key, num_images))
    return np.sort(order[count:]), np.sort(order[:count])


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


class _Units(NamedTuple):
    """The units' side: the dissection's thresholds over the whole probe, the split, the
    concepts with enough pixels on both sides and the units' IoUs for them on each side."""

    thresholds: object
    train_rows: np.ndarray
    heldout_rows: np.ndarray
    concept_labels: np.ndarray
    truth_train: np.ndarray
    scores: dict


class _Trained(NamedTuple):
    data: ConceptData
    counted: np.ndarray
    params: dict
    losses: np.ndarray
    mean: np.ndarray
    scale: np.ndarray


def fit_layer(inputs, acts: np.ndarray, settings: DirectionConfig) -> Directions:
    """Trains and scores a direction for every concept with enough pixels in a layer's
    activations ``acts`` (N, h, w, U); ``inputs``: the pipeline's ``LayerInputs`` (its config's
    union rule is ``paper``). See ``directions.directions`` for the rows."""
    seconds = {}
    started = time.perf_counter()
    units = _unit_side(inputs, acts, settings)
    seconds["units"] = time.perf_counter() - started
    started = time.perf_counter()
    dataset = inputs.dataset
    trained = _train(inputs, acts, units, settings)
    seconds["train"] = time.perf_counter() - started
    started = time.perf_counter()
    rows, columns = (jnp.asarray(m) for m in upsample_matrices(dataset.label_size, acts.shape[1:3]))
    batch_size = min(settings.batch_size, len(units.train_rows))
    thresholds, _ = choose_thresholds(
        trained.data, trained.params, units.train_rows, units.truth_train, rows, columns,
        batch_size, settings.bins,
    )  # fmt: skip
    counts = {
        side: score_directions(
            trained.data, trained.params, image_rows, thresholds, rows, columns, batch_size
        )
        for side, image_rows in (("train", units.train_rows), ("heldout", units.heldout_rows))
    }
    seconds["score"] = time.perf_counter() - started
    standard_weights = np.asarray(trained.params["weights"], np.float64)
    mean, scale = trained.mean, trained.scale
    raw_bias = np.asarray(trained.params["bias"], np.float64) - standard_weights @ (mean / scale)
    return Directions(
        inputs.layer,
        _rows(dataset, units, trained, counts, thresholds, settings),
        (standard_weights / scale).astype(np.float32),
        raw_bias.astype(np.float32),
        np.asarray(thresholds, np.float32),
        units.concept_labels.astype(np.int64),
        tuple(dataset.label_names[label] for label in units.concept_labels),
        mean.astype(np.float32),
        scale.astype(np.float32),
        np.asarray(units.thresholds.thresholds, np.float32),
        units.train_rows,
        units.heldout_rows,
        trained.losses,
        settings,
        seconds,
    )


def _unit_side(inputs, acts: np.ndarray, settings: DirectionConfig) -> _Units:
    from jaxdissect.kernels import select_backend
    from jaxdissect.passes import compute_thresholds
    from jaxdissect.stats.scores import iou as unit_iou

    dataset, labels, layer, config = inputs.dataset, inputs.labels, inputs.layer, inputs.config
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
    truth_train = unit_counts["train"][0][concept_labels]
    return _Units(thresholds, train_rows, heldout_rows, concept_labels, truth_train, scores)


def _train(inputs, acts: np.ndarray, units: _Units, settings: DirectionConfig) -> _Trained:
    """Every concept's direction trained on the standardised units of the train images."""
    dataset = inputs.dataset
    planes, image_concepts, counted = concept_arrays(inputs.labels, dataset, units.concept_labels)
    train_acts = acts[units.train_rows]
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
    counted_train = counted[units.train_rows].sum(0) * pixels
    alphas = 1.0 - units.truth_train / np.maximum(counted_train, 1)
    params, losses = train_directions(
        data, jnp.asarray(units.train_rows, jnp.int32), jnp.asarray(alphas, jnp.float32),
        jax.random.fold_in(jax.random.key(settings.seed), 1), rows, columns,
        epochs=settings.epochs, batch_size=min(settings.batch_size, len(units.train_rows)),
        learning_rate=settings.learning_rate,
    )  # fmt: skip
    losses = np.asarray(losses)
    if not np.isfinite(losses).all():
        bad = int(np.argmin(np.isfinite(losses).all(0)))
        name = dataset.label_names[units.concept_labels[bad]]
        raise DissectError(f"training the direction of {name!r}: the loss is not finite")
    return _Trained(data, counted, params, losses, mean, scale)


def _rows(dataset, units: _Units, trained: _Trained, counts, thresholds, settings) -> list:
    """One dict per concept: the direction's and the best units' IoUs on each side."""
    standard_weights = np.asarray(trained.params["weights"], np.float64)
    steps_per_epoch = max(1, trained.losses.shape[0] // settings.epochs)
    final_loss = trained.losses[-steps_per_epoch:].mean(0)
    pixels = int(np.prod(dataset.label_size))
    counted_heldout = trained.counted[units.heldout_rows].sum(0) * pixels
    label_category = np.asarray(dataset.label_category)
    scores = units.scores
    rows = []
    for index, label in enumerate(units.concept_labels):
        best = int(np.argmax(scores["train"][:, index]))
        oracle = int(np.argmax(scores["heldout"][:, index]))
        truth_heldout = int(counts["heldout"][index, 2])
        top = np.argsort(-np.abs(standard_weights[index]), kind="stable")[:5]
        rows.append(
            {
                "label": dataset.label_names[label],
                "category": dataset.categories[label_category[label]],
                "iou_direction": float(counts_iou(counts["heldout"][index])),
                "iou_best_unit": float(scores["heldout"][best, index]),
                "best_unit": best + 1,
                "iou_best_unit_heldout": float(scores["heldout"][oracle, index]),
                "best_unit_heldout": oracle + 1,
                "iou_chance": truth_heldout / max(1, int(counted_heldout[index])),
                "iou_direction_train": float(counts_iou(counts["train"][index])),
                "iou_best_unit_train": float(scores["train"][best, index]),
                "threshold": float(thresholds[index]),
                "train_pixels": int(units.truth_train[index]),
                "heldout_pixels": truth_heldout,
                "loss": float(final_loss[index]),
                "top_units": [
                    {"unit": int(u) + 1, "weight": float(standard_weights[index, u])} for u in top
                ],
                "label_number": int(label),
            }
        )
    return rows
