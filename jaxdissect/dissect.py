"""The driver: two passes over layers' activations (thresholds, then tallies).

Several layers share each pass, so a model runs twice whatever the number of layers.

This is the one place that jits, shards and talks to the host. The data axis of every
batch is sharded over a 1-D ``Mesh`` of all devices, of every process under
``jax.distributed`` (each process then reads only its rows of each batch); states are
replicated and XLA reduces them, so results are identical for any device count (integer
counts, and a top-k whose values do not depend on order). The last batch is padded and
masked, so each step compiles once. On CPU, both passes may run host kernels instead
(``cpu_quantile``, ``cpu_tally``; see ``DissectConfig.kernel``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import importlib.util
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxdissect import quantile, scores, tally
from jaxdissect.checkpoint import PassCheckpoints
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.data.cache import LabelArrays
from jaxdissect.errors import FeaturesError
from jaxdissect.top_images import TopImagesState, top_images_init, top_images_update
from jaxdissect.upsample import bilinear_matrix

INT32_MAX = np.iinfo(np.int32).max
# Steps dispatched ahead of the devices at most: JAX dispatches asynchronously, and without a
# bound a fast host would queue every batch of a pass in memory.
IN_FLIGHT = 4
KERNELS = ("auto", "cpu", "xla")
# Between the passes, labels and a model's pass-1 activations may occupy this share of one
# accelerator's memory (on CPU: CPU_KEEP_BYTES of activations), saving a forward pass and the
# labels' host-to-device copies in pass 2.
DEVICE_SHARE = 0.25
CPU_KEEP_BYTES = 2**30


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
      top_images: per unit, keep this many most activating images and their maps (for the
        report), gathered during the threshold pass; 0 keeps none.
      kernel: how both passes run: "cpu" (compiled loops over the CPU cores,
        ``cpu_quantile`` and ``cpu_tally``), "xla" (jitted, sharded over all devices,
        ``quantile`` and ``tally``) or "auto": "cpu" when JAX runs on the CPU in one
        process and Numba is installed, else "xla". Thresholds are identical; counts too
        wherever float32 upsampling is exact (see ``cpu_tally`` for the rare pixels at a
        threshold).
    """

    quantile: float = 0.005
    iou_threshold: float = 0.04
    union: str = "paper"
    batch_size: int = 32
    skip_inactive: bool = True
    top_images: int = 8
    kernel: str = "auto"

    def __post_init__(self):
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {self.quantile}")
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must lie in [0, 1), got {self.iou_threshold}")
        if self.union not in tally.UNIONS:
            raise ValueError(f"union must be one of {tally.UNIONS}, got {self.union!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.top_images < 0:
            raise ValueError(f"top_images must be >= 0, got {self.top_images}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")


class Dissection(NamedTuple):
    """Everything a dissection measured, on the host.

    Attributes:
      layer: the layer's name.
      thresholds: (U,) float32.
      label_area, intersection, unit_area: int64 G (L,), I (U, L), A (U, C).
      iou: (U, L) float64.
      labels: the units' best labels (``scores.UnitLabels``).
      summary: detectors and unique detectors under both rules.
      top_indices, top_maps: each unit's most activating images and maps (or None).
    """

    layer: str
    thresholds: np.ndarray
    label_area: np.ndarray
    intersection: np.ndarray
    unit_area: np.ndarray
    iou: np.ndarray
    labels: scores.UnitLabels
    summary: dict
    top_indices: np.ndarray | None = None
    top_maps: np.ndarray | None = None


# A function from (start, stop) image indices to {layer: (B, h, w, U) float array}: NumPy
# (a features file) or jax.Arrays already on the devices (a model's output).
ActivationSource = Callable[[int, int], Mapping[str, Any]]


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def threshold_step(state, first_bad, maxima, acts, valid, indices, start):
    """One jitted step of pass 1: the top-k update, each image's per-unit maxima (to size
    pass 2's skipping of inactive units), and the first non-finite image index."""
    finite = jnp.all(jnp.isfinite(acts), axis=(1, 2, 3)) | ~valid
    first_bad = jnp.minimum(first_bad, jnp.min(jnp.where(finite, INT32_MAX, indices)))
    batch_maxima = jnp.where(valid[:, None], jnp.max(acts, axis=(1, 2)), -jnp.inf)
    maxima = jax.lax.dynamic_update_slice(maxima, batch_maxima, (start, 0))
    return quantile.quantile_update(state, acts, valid), first_bad, maxima


top_images_step = jax.jit(top_images_update, donate_argnums=(0,))


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


def _host(tree):
    """Device values on the host, whole, also when they span other processes' devices."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _local_rows(start: int, stop: int, batch_size: int) -> tuple[int, int, int]:
    """This process's rows of the batch [start, start + batch_size): (lo, hi, per process).
    Rows beyond ``stop`` are padding. With one process: the whole batch."""
    per = batch_size // jax.process_count()
    lo = min(start + jax.process_index() * per, stop)
    return lo, min(lo + per, stop), per


def _place(local, batch_size: int, sharding: NamedSharding) -> jax.Array:
    """Places this process's rows (already padded to its share) in the global batch."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(
        sharding, np.asarray(local), (batch_size, *local.shape[1:])
    )


def _device_activations(acts, size: int, sharding: NamedSharding, batch_size: int) -> jax.Array:
    """This process's activations, padded to ``size`` rows and placed in the global batch of
    ``batch_size``; arrays already on a device (a model's output) stay there."""
    if isinstance(acts, jax.Array) and jax.process_count() == 1:
        acts = acts.astype(jnp.float32)
        if acts.shape[0] != size:
            acts = jnp.pad(acts, [(0, size - acts.shape[0])] + [(0, 0)] * (acts.ndim - 1))
        return jax.device_put(acts, sharding)
    return _place(_pad(np.asarray(acts, np.float32), size), batch_size, sharding)


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


@functools.partial(jax.jit, static_argnames=("size",))
def _device_rows(arrays, start, *, size):
    """Rows [start, start + size) of arrays on a device, without a host round trip."""
    return tuple(jax.lax.dynamic_slice_in_dim(a, start, size) for a in arrays)


def _steps(
    items: Iterator,
    *,
    first: int,
    total: int,
    desc: str,
    progress: bool,
    checkpoints: PassCheckpoints | None,
    name: str,
    states: Callable[[], Any],
) -> Iterator[tuple[int, Any]]:
    """A pass's batches: (number, item) for batches first+1 .. total, prefetched, under a
    progress bar; once the caller has folded each in, its states are saved when due."""
    for number, item in enumerate(
        tqdm(
            _prefetch(items),
            initial=first,
            total=total,
            desc=desc,
            unit="batch",
            disable=not progress,
        ),
        start=first + 1,
    ):
        yield number, item
        if checkpoints is not None:
            checkpoints.save(name, number, states, last=number == total)


def _check_finite(first_bad: jax.Array, num_images: int, layer: str) -> None:
    index = int(first_bad)
    if index < num_images:
        raise FeaturesError(
            f"layer {layer!r}: NaN or inf activation in image {index} (0-based, index.csv order)"
        )


TOP_MAPS_BUDGET = 256 * 2**20  # bytes of activation maps kept for the report, per layer


def top_images_kept(config: DissectConfig, shape: tuple[int, int, int]) -> int:
    """How many top images per unit a layer keeps: ``config.top_images``, fewer when their
    maps (U x k x h x w float32) would pass TOP_MAPS_BUDGET, at least one if any is wanted."""
    if not config.top_images:
        return 0
    per_image = 4 * shape[0] * shape[1] * shape[2]
    return max(1, min(config.top_images, TOP_MAPS_BUDGET // per_image))


class Thresholds(NamedTuple):
    """Pass 1's results for one layer.

    Attributes:
      thresholds: (U,) float32 per-unit thresholds.
      max_active: the most units of any one image whose map rises above its threshold:
        pass 2 upsamples only those, in a buffer of this size.
      top_indices: (U, k) int32 each unit's most activating images (by maximum), or None.
      top_maps: (U, k, h, w) float32 their activation maps, or None.
    """

    thresholds: np.ndarray
    max_active: int
    top_indices: np.ndarray | None = None
    top_maps: np.ndarray | None = None


Shapes = Mapping[str, tuple[int, int, int]]


def _layout(config: DissectConfig):
    mesh = _mesh()
    batch_size = -(-config.batch_size // mesh.size) * mesh.size
    return (
        batch_size,
        NamedSharding(mesh, PartitionSpec("data")),
        NamedSharding(mesh, PartitionSpec()),
    )


def compute_thresholds(
    activations: ActivationSource,
    num_images: int,
    shapes: Shapes,
    config: DissectConfig,
    progress: bool = True,
    checkpoints: PassCheckpoints | None = None,
) -> dict[str, Thresholds]:
    """Pass 1: exact per-unit (1 - q) quantiles of every layer; rejects NaN/inf activations.

    Args:
      activations: ``activations(start, stop)`` returns {layer: (B, h, w, U)} for images
        [start, stop).
      num_images: N.
      shapes: {layer: (h, w, U)}.
      config: the dissection config.
      progress: show a progress bar.
      checkpoints: save the pass's states every few batches, and resume from them.

    Returns:
      {layer: Thresholds}. Keeps an (N, U) float32 array of per-image maxima per layer on
      the devices meanwhile.
    """
    run = _compute_thresholds_cpu if pass_kernel(config) == "cpu" else _compute_thresholds_xla
    return run(activations, num_images, shapes, config, progress, checkpoints)


def pass_kernel(config: DissectConfig) -> str:
    """The kernel both passes run: "cpu" or "xla" (see ``DissectConfig``)."""
    kernel = config.kernel
    if kernel == "auto":
        on_cpu = jax.default_backend() == "cpu" and jax.process_count() == 1
        # Numba is a dependency, but an environment built without it still dissects.
        kernel = "cpu" if on_cpu and importlib.util.find_spec("numba") is not None else "xla"
    if kernel == "cpu" and jax.process_count() > 1:
        raise ValueError("kernel='cpu' runs in one process; use 'xla' under jax.distributed")
    return kernel


def _thresholds_result(layer, num_images, first_bad, state, most_active, top, config):
    """A layer's Thresholds from pass 1's final states; ``most_active(thresholds)`` counts
    the most units of one image above their thresholds."""
    _check_finite(first_bad, num_images, layer)
    thresholds = quantile.quantile_result(state, config.quantile)
    return Thresholds(
        thresholds,
        int(most_active(thresholds)),
        None if top is None else np.asarray(top.indices),
        None if top is None else np.asarray(top.maps),
    )


def _compute_thresholds_cpu(activations, num_images, shapes, config, progress, checkpoints):
    """Pass 1 on the CPU cores (``cpu_quantile``); top images by the jitted update."""
    from jaxdissect.cpu_quantile import cpu_quantile_init, cpu_quantile_update

    batches = list(_batches(num_images, config.batch_size))
    states, first_bad, maxima, tops = {}, {}, {}, {}
    for layer, (height, width, units) in shapes.items():
        states[layer] = cpu_quantile_init(units, config.quantile, num_images * height * width)
        first_bad[layer] = np.asarray(INT32_MAX, np.int64)
        maxima[layer] = np.full((num_images, units), -np.inf, np.float32)
        if kept := top_images_kept(config, shapes[layer]):
            tops[layer] = top_images_init(units, kept, height, width)
    first = 0
    if checkpoints is not None:
        first, restored = checkpoints.restore("thresholds-cpu", (states, first_bad, maxima, tops))
        if restored is not None:
            states, first_bad, maxima, tops = jax.tree.map(np.array, tuple(restored))
            states = {k: quantile.QuantileState(*v) for k, v in states.items()}
            tops = {k: TopImagesState(*v) for k, v in tops.items()}

    def read():
        for start, stop in batches[first:]:
            acts = _checked(activations(start, stop), shapes, stop - start)
            yield start, stop, {layer: np.asarray(a, np.float32) for layer, a in acts.items()}

    for _, (start, stop, acts) in _steps(
        read(),
        first=first,
        total=len(batches),
        desc=f"{', '.join(shapes)}: thresholds",
        progress=progress,
        checkpoints=checkpoints,
        name="thresholds-cpu",
        states=lambda: (states, first_bad, maxima, tops),
    ):
        indices = np.arange(start, stop, dtype=np.int32)
        for layer in shapes:
            maxima[layer][start:stop], finite = cpu_quantile_update(states[layer], acts[layer])
            if not finite.all():
                first_bad[layer] = np.minimum(first_bad[layer], start + np.argmin(finite))
            if layer in tops:
                tops[layer] = top_images_step(
                    tops[layer], acts[layer], indices, np.ones(len(indices), bool)
                )
    return {
        layer: _thresholds_result(
            layer,
            num_images,
            first_bad[layer],
            states[layer],
            lambda t, m=maxima[layer]: np.max(np.sum(m > t, axis=1)),
            jax.device_get(tops.get(layer)),
            config,
        )
        for layer in shapes
    }


def _compute_thresholds_xla(activations, num_images, shapes, config, progress, checkpoints):
    """Pass 1 jitted and sharded over all devices (``quantile``)."""
    batch_size, data, replicated = _layout(config)
    batches = list(_batches(num_images, batch_size))
    states, first_bad, maxima, tops = {}, {}, {}, {}
    for layer, (height, width, units) in shapes.items():
        if kept := top_images_kept(config, shapes[layer]):
            tops[layer] = jax.device_put(top_images_init(units, kept, height, width), replicated)
        states[layer] = jax.device_put(
            quantile.quantile_init(units, config.quantile, num_images * height * width),
            replicated,
        )
        first_bad[layer] = jax.device_put(jnp.asarray(INT32_MAX, jnp.int32), replicated)
        maxima[layer] = jax.device_put(
            jnp.full((len(batches) * batch_size, units), -jnp.inf, jnp.float32), replicated
        )

    first = 0
    if checkpoints is not None:
        first, restored = checkpoints.restore("thresholds-xla", (states, first_bad, maxima, tops))
        if restored is not None:
            states, first_bad, maxima, tops = jax.device_put(tuple(restored), replicated)

    def placed():
        for start, stop in batches[first:]:
            lo, hi, per = _local_rows(start, stop, batch_size)
            acts = _checked(activations(lo, hi), shapes, hi - lo)
            valid = np.arange(per) < hi - lo
            indices = np.arange(lo, lo + per, dtype=np.int32)
            placed_acts = {
                k: _device_activations(v, per, data, batch_size) for k, v in acts.items()
            }
            yield (
                start,
                placed_acts,
                _place(valid, batch_size, data),
                _place(indices, batch_size, data),
            )

    for number, (start, acts, valid, indices) in _steps(
        placed(),
        first=first,
        total=len(batches),
        desc=f"{', '.join(shapes)}: thresholds",
        progress=progress,
        checkpoints=checkpoints,
        name="thresholds-xla",
        states=lambda: (states, first_bad, maxima, tops),
    ):
        for layer in shapes:
            states[layer], first_bad[layer], maxima[layer] = threshold_step(
                states[layer],
                first_bad[layer],
                maxima[layer],
                acts[layer],
                valid,
                indices,
                start,
            )
            if layer in tops:
                tops[layer] = top_images_step(tops[layer], acts[layer], indices, valid)
        if number % IN_FLIGHT == 0:  # bound the queued batches: memory stays flat
            jax.block_until_ready((states, first_bad, maxima, tops))
    return {
        layer: _thresholds_result(
            layer,
            num_images,
            _host(first_bad[layer]),
            _host(states[layer]),
            lambda t, m=maxima[layer]: _host(_most_active_units(m, jnp.asarray(t))),
            _host(tops[layer]) if layer in tops else None,
            config,
        )
        for layer in shapes
    }


def _zero_totals(units: int, dataset: BrodenDataset) -> list[np.ndarray]:
    """int64 host G, I, A."""
    return [
        np.zeros((dataset.num_labels,), np.int64),
        np.zeros((units, dataset.num_labels), np.int64),
        np.zeros((units, len(dataset.categories)), np.int64),
    ]


def compute_tally(
    activations: ActivationSource,
    labels: LabelArrays,
    dataset: BrodenDataset,
    thresholds: Mapping[str, Thresholds],
    shapes: Shapes,
    config: DissectConfig,
    progress: bool = True,
    checkpoints: PassCheckpoints | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pass 2: {layer: (G, I, A)} as int64 host arrays, with ``pass_kernel(config)``."""
    run = _compute_tally_cpu if pass_kernel(config) == "cpu" else _compute_tally_xla
    return run(activations, labels, dataset, thresholds, shapes, config, progress, checkpoints)


def _compute_tally_cpu(
    activations, labels, dataset, thresholds, shapes, config, progress, checkpoints
):
    """Pass 2 on the CPU cores (``cpu_tally``), into int64 totals directly."""
    from jaxdissect.cpu_tally import axis_cells, cpu_tally_batch  # compiled on first use

    label_height, label_width = dataset.label_size
    cells = {
        layer: (axis_cells(label_height, height), axis_cells(label_width, width))
        for layer, (height, width, _) in shapes.items()
    }
    totals = {layer: _zero_totals(units, dataset) for layer, (_, _, units) in shapes.items()}
    batches = list(_batches(dataset.num_images, config.batch_size))
    first = 0
    if checkpoints is not None:
        first, restored = checkpoints.restore("tally-cpu", totals)
        if restored is not None:
            totals = {layer: [np.asarray(t) for t in restored[layer]] for layer in shapes}

    def read():
        for start, stop in batches[first:]:
            acts = _checked(activations(start, stop), shapes, stop - start)
            yield (
                {layer: np.asarray(a, np.float32) for layer, a in acts.items()},
                np.asarray(labels.slot_planes[start:stop]),
                np.asarray(labels.slot_labels[start:stop]),
                np.asarray(labels.image_labels[start:stop]),
            )

    for _, (acts, slot_planes, slot_labels, image_labels) in _steps(
        read(),
        first=first,
        total=len(batches),
        desc=f"{', '.join(shapes)}: tally",
        progress=progress,
        checkpoints=checkpoints,
        name="tally-cpu",
        states=lambda: totals,
    ):
        for layer in shapes:
            cpu_tally_batch(
                totals[layer],
                acts[layer],
                thresholds[layer].thresholds,
                slot_planes,
                slot_labels,
                image_labels,
                dataset.label_category,
                *cells[layer],
                union=config.union,
            )
    return {layer: tuple(totals[layer]) for layer in shapes}


def _compute_tally_xla(
    activations, labels, dataset, thresholds, shapes, config, progress, checkpoints
):
    """Pass 2 jitted and sharded over all devices (``tally``).

    Each image upsamples only the units whose map rises above their threshold (at most
    ``max_active``, measured in pass 1), unless ``config.skip_inactive`` is off. The device
    states are int32; they are moved into int64 host totals often enough that no device
    count can pass 2**31 (a host sync every few hundred batches, not every step).
    """
    num_images = dataset.num_images
    label_height, label_width = dataset.label_size
    batch_size, data, replicated = _layout(config)
    num_categories = len(dataset.categories)
    per_batch_max = (
        batch_size
        * label_height
        * label_width
        * max(labels.slot_planes.shape[1], labels.image_labels.shape[1])
    )
    flush_every = max(1, INT32_MAX // per_batch_max)
    mask_dtype = mask_dtype_for_backend()
    label_category = jnp.asarray(dataset.label_category, jnp.int32)

    constants, max_active, totals = {}, {}, {}
    for layer, (height, width, units) in shapes.items():
        constants[layer] = jax.device_put(
            (
                jnp.asarray(thresholds[layer].thresholds, jnp.float32),
                label_category,
                jnp.asarray(bilinear_matrix(label_height, height)),
                jnp.asarray(bilinear_matrix(label_width, width)),
            ),
            replicated,
        )
        # Rounded up to a multiple of 8 so that similar layers share compiled steps.
        bound = -(-max(thresholds[layer].max_active, 1) // 8) * 8
        max_active[layer] = bound if config.skip_inactive and bound < units else None
        totals[layer] = _zero_totals(units, dataset)

    def fresh(layer):
        units = shapes[layer][2]
        return jax.device_put(
            tally.tally_init(units, dataset.num_labels, num_categories), replicated
        )

    def flush(layer, state):
        host = _host(state)
        if host.overflow:  # cannot happen: pass 1 measured the bound
            raise RuntimeError(f"layer {layer!r}: {host.overflow} images overflowed the tally")
        for total, part in zip(totals[layer], host[:3], strict=True):
            total += part

    batches = list(_batches(num_images, batch_size))
    states = {layer: fresh(layer) for layer in shapes}
    first = 0
    if checkpoints is not None:
        first, restored = checkpoints.restore("tally-xla", (states, totals))
        if restored is not None:
            states = jax.device_put(restored[0], replicated)
            totals = {layer: [np.asarray(t) for t in restored[1][layer]] for layer in shapes}

    def placed():
        for start, stop in batches[first:]:
            lo, hi, per = _local_rows(start, stop, batch_size)
            acts = _checked(activations(lo, hi), shapes, hi - lo)
            placed_acts = {
                k: _device_activations(v, per, data, batch_size) for k, v in acts.items()
            }
            valid = _place(np.arange(per) < hi - lo, batch_size, data)
            if isinstance(labels.slot_planes, jax.Array) and hi - lo == per:
                # Already in the (single) device's memory (dissect_activations put it there).
                yield placed_acts, (*_device_rows(tuple(labels), lo, size=per), valid)
                continue
            local = tuple(_pad(np.asarray(a[lo:hi]), per) for a in labels)
            yield placed_acts, (*(_place(x, batch_size, data) for x in local), valid)

    for number, (acts, label_batch) in _steps(
        placed(),
        first=first,
        total=len(batches),
        desc=f"{', '.join(shapes)}: tally",
        progress=progress,
        checkpoints=checkpoints,
        name="tally-xla",
        states=lambda: (states, totals),
    ):
        for layer in shapes:
            states[layer] = tally_step(
                states[layer],
                constants[layer],
                acts[layer],
                *label_batch,
                union=config.union,
                mask_dtype=mask_dtype,
                max_active=max_active[layer],
            )
            if number % flush_every == 0:
                flush(layer, states[layer])
                states[layer] = fresh(layer)
        if number % IN_FLIGHT == 0:
            jax.block_until_ready(states)
    for layer in shapes:
        flush(layer, states[layer])
    return {layer: tuple(totals[layer]) for layer in shapes}


def _nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def _keep_budget() -> int:
    """Bytes that may stay on the devices between the passes (see DEVICE_SHARE)."""
    if jax.process_count() > 1:
        return 0
    if jax.default_backend() == "cpu":
        return CPU_KEEP_BYTES
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", 0) * DEVICE_SHARE)


def _labels_fit_device(labels: LabelArrays, config: DissectConfig, budget: int) -> bool:
    """Whether pass 2 should read its labels from one accelerator's memory."""
    return (
        jax.default_backend() != "cpu"
        and jax.device_count() == 1
        and pass_kernel(config) == "xla"
        and not isinstance(labels.slot_planes, jax.Array)
        and _nbytes(labels) <= budget
    )


class ReusedActivations:
    """An ActivationSource that keeps pass 1's device outputs (jax.Arrays, e.g. a model's),
    up to ``budget`` bytes, and hands each back once in pass 2: the model then runs once.
    Set ``recording`` to False after pass 1. NumPy outputs (features files) are not kept."""

    def __init__(self, source: ActivationSource, budget: int):
        self.source = source
        self.budget = budget
        self.recording = True
        self._kept: dict[tuple[int, int], Mapping[str, Any]] = {}

    def __call__(self, start: int, stop: int) -> Mapping[str, Any]:
        if (start, stop) in self._kept:
            return self._kept.pop((start, stop))
        out = self.source(start, stop)
        if self.recording and all(isinstance(v, jax.Array) for v in out.values()):
            size = _nbytes(dict(out))
            if size <= self.budget:
                self.budget -= size
                self._kept[(start, stop)] = out
        return out


def dissect_activations(
    activations: ActivationSource,
    num_images: int,
    shapes: Shapes,
    dataset: BrodenDataset,
    labels: LabelArrays,
    config: DissectConfig = DissectConfig(),
    progress: bool = True,
    checkpoints: PassCheckpoints | None = None,
) -> dict[str, Dissection]:
    """Dissects every layer of ``shapes``: thresholds, tally, IoU, labels and summary.

    Args:
      activations: ``activations(start, stop)`` gives {layer: (B, h, w, U)} for images
        [start, stop), in index.csv order (called once per batch in each of the two passes,
        or once in all where it returns jax.Arrays that fit ``_keep_budget``).
      num_images: N, which must equal the dataset's.
      shapes: {layer: (h, w, U)}.
      dataset: from ``open_broden``.
      labels: from ``load_label_arrays``.
      config: thresholds, union rule, batch size.
      progress: show progress bars.
      checkpoints: resume from, and save, the passes' states (see ``jaxdissect.checkpoint``).

    Returns:
      {layer: Dissection}.
    """
    if num_images != dataset.num_images:
        raise FeaturesError(
            f"activations cover {num_images} images but "
            f"{dataset.directory / 'index.csv'} lists {dataset.num_images}"
        )
    budget = _keep_budget()
    upload = None
    if _labels_fit_device(labels, config, budget):
        budget -= _nbytes(labels)
        copier = concurrent.futures.ThreadPoolExecutor(1)
        upload = copier.submit(jax.device_put, labels)
        copier.shutdown(wait=False)  # the copy goes on; the thread ends with it
    reused = ReusedActivations(activations, budget)
    thresholds = compute_thresholds(reused, num_images, shapes, config, progress, checkpoints)
    reused.recording = False
    if upload is not None:  # copied while pass 1 ran
        labels = LabelArrays(*upload.result())
    counts = compute_tally(
        reused, labels, dataset, thresholds, shapes, config, progress, checkpoints
    )
    return {
        layer: score_layer(
            layer, thresholds[layer].thresholds, *counts[layer], dataset, config
        )._replace(top_indices=thresholds[layer].top_indices, top_maps=thresholds[layer].top_maps)
        for layer in shapes
    }


def score_layer(
    layer: str,
    thresholds: np.ndarray,
    label_area: np.ndarray,
    intersection: np.ndarray,
    unit_area: np.ndarray,
    dataset: BrodenDataset,
    config: DissectConfig,
) -> Dissection:
    """IoU, labels and summary from a layer's counts."""
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
        thresholds=thresholds,
        label_area=label_area,
        intersection=intersection,
        unit_area=unit_area,
        iou=unit_iou,
        labels=unit_labels,
        summary=summary,
    )


def _checked(acts: Mapping, shapes: Shapes, count: int) -> Mapping:
    """The source's batch, checked against the declared shapes."""
    for layer, shape in shapes.items():
        if layer not in acts:
            raise FeaturesError(f"the activation source gave no layer {layer!r}")
        got = tuple(acts[layer].shape)
        if got != (count, *shape):
            raise FeaturesError(
                f"layer {layer!r}: a batch has shape {got}, expected {(count, *shape)}"
            )
    return acts


def features_source(
    features: np.ndarray, layout: str = "nhwc", layer: str = "features"
) -> tuple[ActivationSource, dict[str, tuple[int, int, int]]]:
    """An ActivationSource over one layer's in-memory or memory-mapped (N, h, w, U) or
    (N, U, h, w) array."""
    if features.ndim != 4:
        raise FeaturesError(
            f"features must have 4 dimensions (N, h, w, U) or (N, U, h, w); got shape "
            f"{features.shape}"
        )
    if layout == "nhwc":
        return (lambda start, stop: {layer: features[start:stop]}), {
            layer: tuple(features.shape[1:])
        }
    if layout == "nchw":
        shape = (features.shape[2], features.shape[3], features.shape[1])
        return (lambda start, stop: {layer: np.transpose(features[start:stop], (0, 2, 3, 1))}), {
            layer: shape
        }
    raise FeaturesError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")
