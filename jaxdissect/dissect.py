"""The driver: two passes over a layer's activations (thresholds, then tallies).

This is the one place that jits, shards and talks to the host. The data axis of every
batch is sharded over a 1-D ``Mesh`` of all local devices; states are replicated and XLA
reduces them, so results are identical for any device count (integer counts, and a
top-k whose values do not depend on order). The last batch is padded and masked, so each
step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxdissect import quantile, scores, tally
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.data.cache import LabelArrays
from jaxdissect.errors import FeaturesError
from jaxdissect.upsample import bilinear_matrix

INT32_MAX = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True, kw_only=True)
class DissectConfig:
    """How to dissect.

    Attributes:
      quantile: upper-tail fraction q of each unit's activations above its threshold.
      iou_threshold: a unit is a detector when its best IoU is strictly above this.
      union: "paper" (original NetDissect) or "lite" (NetDissect-Lite) rule for A[u, c].
      batch_size: images per step (rounded up to a multiple of the device count).
      skip_inactive: upsample only the units whose map rises above their threshold (exact;
        off, every unit of every image is upsampled).
    """

    quantile: float = 0.005
    iou_threshold: float = 0.04
    union: str = "paper"
    batch_size: int = 32
    skip_inactive: bool = True

    def __post_init__(self):
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {self.quantile}")
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must lie in [0, 1), got {self.iou_threshold}")
        if self.union not in tally.UNIONS:
            raise ValueError(f"union must be one of {tally.UNIONS}, got {self.union!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class Dissection(NamedTuple):
    """Everything a dissection measured, on the host.

    Attributes:
      layer: the layer's name.
      thresholds: (U,) float32.
      label_area, intersection, unit_area: int64 G (L,), I (U, L), A (U, C).
      iou: (U, L) float64.
      labels: the units' best labels (``scores.UnitLabels``).
      summary: detectors and unique detectors under both rules.
    """

    layer: str
    thresholds: np.ndarray
    label_area: np.ndarray
    intersection: np.ndarray
    unit_area: np.ndarray
    iou: np.ndarray
    labels: scores.UnitLabels
    summary: dict


# A function from (start, stop) image indices to a (B, h, w, U) float array: NumPy (a
# features file) or a jax.Array already on the devices (a model's output).
ActivationSource = Callable[[int, int], np.ndarray]


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def threshold_step(state, first_bad, maxima, acts, valid, indices, start):
    """One jitted step of pass 1: the top-k update, each image's per-unit maxima (to size
    pass 2's skipping of inactive units), and the first non-finite image index."""
    finite = jnp.all(jnp.isfinite(acts), axis=(1, 2, 3)) | ~valid
    first_bad = jnp.minimum(first_bad, jnp.min(jnp.where(finite, INT32_MAX, indices)))
    batch_maxima = jnp.where(valid[:, None], jnp.max(acts, axis=(1, 2)), -jnp.inf)
    maxima = jax.lax.dynamic_update_slice(maxima, batch_maxima, (start, 0))
    return quantile.quantile_update(state, acts, valid), first_bad, maxima


@jax.jit
def _most_active_units(maxima, thresholds):
    """The largest number of units of one image whose maximum is above its threshold."""
    return jnp.max(jnp.sum(maxima > thresholds, axis=1))


@functools.partial(
    jax.jit, donate_argnums=(0,), static_argnames=("union", "mask_dtype", "max_active")
)
def tally_step(
    state,
    constants,
    acts,
    slot_planes,
    slot_labels,
    image_labels,
    valid,
    *,
    union,
    mask_dtype,
    max_active,
):
    """One jitted step of pass 2."""
    thresholds, label_category, rows, cols = constants
    return tally.tally_update_compact(
        state,
        acts,
        thresholds,
        slot_planes.astype(jnp.int32),
        slot_labels,
        image_labels,
        label_category,
        rows,
        cols,
        valid,
        union=union,
        mask_dtype=mask_dtype,
        max_active=max_active,
    )


def mask_dtype_for_backend() -> jnp.dtype:
    """bfloat16 on accelerators (matrix units; exact for 0/1 masks), float32 on CPU."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def _batches(num_images: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, num_images, batch_size):
        yield start, min(start + batch_size, num_images)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size:
        return array
    padding = np.zeros((size - array.shape[0], *array.shape[1:]), array.dtype)
    return np.concatenate([array, padding])


def _device_activations(acts, size: int, sharding: NamedSharding) -> jax.Array:
    """A batch of activations, padded to ``size`` and placed; arrays already on a device
    (a model's output) stay there."""
    if isinstance(acts, jax.Array):
        acts = acts.astype(jnp.float32)
        if acts.shape[0] != size:
            acts = jnp.pad(acts, [(0, size - acts.shape[0])] + [(0, 0)] * (acts.ndim - 1))
        return jax.device_put(acts, sharding)
    return jax.device_put(_pad(np.asarray(acts, np.float32), size), sharding)


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Runs ``items`` (host slicing, padding, device_put) in a thread, ``depth`` ahead, so
    the host side of the next batches overlaps the devices' work on this one."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def worker():
        try:
            for item in items:
                ready.put(item)
        except BaseException as error:  # re-raised in the consumer's thread
            ready.put(error)
        ready.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while (item := ready.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _check_finite(first_bad: jax.Array, num_images: int, layer: str) -> None:
    index = int(first_bad)
    if index < num_images:
        raise FeaturesError(
            f"layer {layer!r}: NaN or inf activation in image {index} (0-based, index.csv order)"
        )


class Thresholds(NamedTuple):
    """Pass 1's results.

    Attributes:
      thresholds: (U,) float32 per-unit thresholds.
      max_active: the most units of any one image whose map rises above its threshold:
        pass 2 upsamples only those, in a buffer of this size.
    """

    thresholds: np.ndarray
    max_active: int


def compute_thresholds(
    activations: ActivationSource,
    num_images: int,
    shape: tuple[int, int, int],
    config: DissectConfig,
    layer: str = "features",
    progress: bool = True,
) -> Thresholds:
    """Pass 1: exact per-unit (1 - q) quantiles; also rejects NaN/inf activations.

    Args:
      activations: ``activations(start, stop)`` returns images [start, stop) as (B, h, w, U).
      num_images: N.
      shape: (h, w, U) of one image's activations.
      config: the dissection config.
      layer: name used in messages.
      progress: show a progress bar.

    Returns:
      Thresholds: (U,) float32 thresholds and the bound for skipping inactive units. Keeps
      an (N, U) float32 array of per-image maxima on the devices meanwhile.
    """
    height, width, units = shape
    mesh = _mesh()
    batch_size = -(-config.batch_size // mesh.size) * mesh.size
    data = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    batches = list(_batches(num_images, batch_size))

    state = jax.device_put(
        quantile.quantile_init(units, config.quantile, num_images * height * width), replicated
    )
    first_bad = jax.device_put(jnp.asarray(INT32_MAX, jnp.int32), replicated)
    maxima = jax.device_put(
        jnp.full((len(batches) * batch_size, units), -jnp.inf, jnp.float32), replicated
    )

    def placed():
        for start, stop in batches:
            acts = _device_activations(activations(start, stop), batch_size, data)
            valid = np.arange(batch_size) < stop - start
            indices = np.arange(start, start + batch_size, dtype=np.int32)
            yield start, acts, *jax.device_put((valid, indices), data)

    for start, acts, valid, indices in tqdm(
        _prefetch(placed()),
        total=len(batches),
        desc=f"{layer}: thresholds",
        unit="batch",
        disable=not progress,
    ):
        state, first_bad, maxima = threshold_step(
            state, first_bad, maxima, acts, valid, indices, start
        )
    _check_finite(first_bad, num_images, layer)
    thresholds = quantile.quantile_result(state, config.quantile)
    max_active = int(_most_active_units(maxima, jnp.asarray(thresholds)))
    return Thresholds(thresholds, max_active)


def compute_tally(
    activations: ActivationSource,
    labels: LabelArrays,
    dataset: BrodenDataset,
    thresholds: Thresholds,
    shape: tuple[int, int, int],
    config: DissectConfig,
    layer: str = "features",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 2: G, I and A as int64 host arrays.

    Each image upsamples only the units whose map rises above their threshold (at most
    ``thresholds.max_active``, measured in pass 1), unless ``config.skip_inactive`` is off.
    The device state is int32; it is moved into int64 host totals often enough that no
    device count can pass 2**31 (a host sync every few hundred batches, not every step).
    """
    height, width, units = shape
    num_images = dataset.num_images
    label_height, label_width = dataset.label_size
    mesh = _mesh()
    batch_size = -(-config.batch_size // mesh.size) * mesh.size
    data = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    num_categories = len(dataset.categories)
    per_batch_max = (
        batch_size
        * label_height
        * label_width
        * max(labels.slot_planes.shape[1], labels.image_labels.shape[1])
    )
    flush_every = max(1, INT32_MAX // per_batch_max)

    constants = jax.device_put(
        (
            jnp.asarray(thresholds.thresholds, jnp.float32),
            jnp.asarray(dataset.label_category, jnp.int32),
            jnp.asarray(bilinear_matrix(label_height, height)),
            jnp.asarray(bilinear_matrix(label_width, width)),
        ),
        replicated,
    )

    def fresh():
        return jax.device_put(
            tally.tally_init(units, dataset.num_labels, num_categories), replicated
        )

    totals = [
        np.zeros((dataset.num_labels,), np.int64),
        np.zeros((units, dataset.num_labels), np.int64),
        np.zeros((units, num_categories), np.int64),
    ]
    mask_dtype = mask_dtype_for_backend()
    # Rounded up to a multiple of 8 so that similar layers share compiled steps.
    max_active = -(-max(thresholds.max_active, 1) // 8) * 8
    if not config.skip_inactive or max_active >= units:
        max_active = None

    def flush(state):
        host = jax.device_get(state)
        if host.overflow:  # cannot happen: pass 1 measured the bound
            raise RuntimeError(f"layer {layer!r}: {host.overflow} images overflowed the tally")
        for total, part in zip(totals, host[:3], strict=True):
            total += part

    state = fresh()
    batches = list(_batches(num_images, batch_size))

    def placed():
        for start, stop in batches:
            acts = _device_activations(activations(start, stop), batch_size, data)
            slot_planes = _pad(np.asarray(labels.slot_planes[start:stop]), batch_size)
            slot_labels = _pad(np.asarray(labels.slot_labels[start:stop]), batch_size)
            image_labels = _pad(np.asarray(labels.image_labels[start:stop]), batch_size)
            valid = np.arange(batch_size) < stop - start
            yield acts, *jax.device_put((slot_planes, slot_labels, image_labels, valid), data)

    for step_index, batch in enumerate(
        tqdm(
            _prefetch(placed()),
            total=len(batches),
            desc=f"{layer}: tally",
            unit="batch",
            disable=not progress,
        )
    ):
        state = tally_step(
            state,
            constants,
            *batch,
            union=config.union,
            mask_dtype=mask_dtype,
            max_active=max_active,
        )
        if (step_index + 1) % flush_every == 0:
            flush(state)
            state = fresh()
    flush(state)
    return tuple(totals)


def dissect_activations(
    activations: ActivationSource,
    num_images: int,
    shape: tuple[int, int, int],
    dataset: BrodenDataset,
    labels: LabelArrays,
    config: DissectConfig = DissectConfig(),
    layer: str = "features",
    progress: bool = True,
) -> Dissection:
    """Dissects one layer: thresholds, tally, IoU, labels and summary.

    Args:
      activations: ``activations(start, stop)`` gives images [start, stop) as (B, h, w, U),
        in index.csv order (called once per batch in each of the two passes).
      num_images: N, which must equal the dataset's.
      shape: (h, w, U).
      dataset: from ``open_broden``.
      labels: from ``load_label_arrays``.
      config: thresholds, union rule, batch size.
      layer: the layer's name, for messages and outputs.
      progress: show progress bars.

    Returns:
      A Dissection.
    """
    if num_images != dataset.num_images:
        raise FeaturesError(
            f"layer {layer!r}: activations cover {num_images} images but "
            f"{dataset.directory / 'index.csv'} lists {dataset.num_images}"
        )
    thresholds = compute_thresholds(activations, num_images, shape, config, layer, progress)
    label_area, intersection, unit_area = compute_tally(
        activations, labels, dataset, thresholds, shape, config, layer, progress
    )
    unit_iou = scores.iou(label_area, intersection, unit_area, dataset.label_category)
    unit_labels = scores.label_units(unit_iou, dataset.label_category, len(dataset.categories))
    names = dataset.label_names
    summary = scores.summarize(
        list(dataset.categories),
        [dataset.categories[c] for c in unit_labels.category],
        [names[label] if label >= 0 else "" for label in unit_labels.label],
        unit_labels.score,
        [
            [names[label] if label >= 0 else "" for label in row]
            for row in unit_labels.category_label
        ],
        unit_labels.category_iou,
        config.iou_threshold,
    )
    return Dissection(
        layer=layer,
        thresholds=thresholds.thresholds,
        label_area=label_area,
        intersection=intersection,
        unit_area=unit_area,
        iou=unit_iou,
        labels=unit_labels,
        summary=summary,
    )


def features_source(
    features: np.ndarray, layout: str = "nhwc"
) -> tuple[ActivationSource, tuple[int, int, int]]:
    """An ActivationSource over an in-memory or memory-mapped (N, h, w, U) / (N, U, h, w) array."""
    if features.ndim != 4:
        raise FeaturesError(
            f"features must have 4 dimensions (N, h, w, U) or (N, U, h, w); got shape "
            f"{features.shape}"
        )
    if layout == "nhwc":
        return (lambda start, stop: features[start:stop]), tuple(features.shape[1:])
    if layout == "nchw":
        shape = (features.shape[2], features.shape[3], features.shape[1])
        return (lambda start, stop: np.transpose(features[start:stop], (0, 2, 3, 1))), shape
    raise FeaturesError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")
