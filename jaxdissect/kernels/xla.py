"""The XLA backend: both passes jitted and sharded over every device, of every process.

The data axis of every batch is sharded over a 1-D ``Mesh`` of all devices (under
``jax.distributed`` each process reads only its rows of each batch); states are
replicated and XLA reduces them, so results are identical for any device count (integer
counts, and a top-k whose values do not depend on order). The last batch is padded and
masked, so each step compiles once. The jitted steps here are the driver's jit boundary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdissect import quantile, tally
from jaxdissect.dissection import Thresholds
from jaxdissect.kernels.base import Backend, Batch, Statistic
from jaxdissect.kernels.common import (
    INT32_MAX,
    check_finite,
    checked,
    top_images_kept,
    zero_counts,
)
from jaxdissect.top_images import top_images_init, top_images_merge, top_images_update
from jaxdissect.upsample import bilinear_matrix

# The XLA backend gathers the report's top images with XLA (the CPU backend in NumPy).
top_images_step = jax.jit(top_images_update, donate_argnums=(0,))


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
def tally_step(state, constants, acts, labels, valid, *, union, mask_dtype, max_active):
    """One jitted step of pass 2."""
    thresholds, label_category, rows, cols = constants
    slot_planes, slot_labels, image_labels = labels
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


@functools.partial(jax.jit, static_argnames=("size",))
def _device_rows(arrays, start, *, size):
    """Rows [start, start + size) of arrays on a device, without a host round trip."""
    return tuple(jax.lax.dynamic_slice_in_dim(a, start, size) for a in arrays)


def mask_dtype_for_backend() -> jnp.dtype:
    """bfloat16 on accelerators (matrix units; exact for 0/1 masks), float32 on CPU."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def host(tree):
    """Device values on the host, whole, also when they span other processes' devices."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size:
        return array
    padding = np.zeros((size - array.shape[0], *array.shape[1:]), array.dtype)
    return np.concatenate([array, padding])


class _Placement:
    """The mesh over all devices, and how this process's rows of a batch reach it."""

    def __init__(self, batch_size: int):
        mesh = Mesh(np.array(jax.devices()), ("data",))
        self.batch_size = -(-batch_size // mesh.size) * mesh.size
        self.data = NamedSharding(mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(mesh, PartitionSpec())

    def local_rows(self, start: int, stop: int) -> tuple[int, int, int]:
        """This process's rows of the batch at ``start``: (lo, hi, per process). Rows
        beyond ``stop`` are padding. With one process: the whole batch."""
        per = self.batch_size // jax.process_count()
        lo = min(start + jax.process_index() * per, stop)
        return lo, min(lo + per, stop), per

    def place(self, local) -> jax.Array:
        """Places this process's rows (already padded to its share) in the global batch."""
        if jax.process_count() == 1:
            return jax.device_put(local, self.data)
        return jax.make_array_from_process_local_data(
            self.data, np.asarray(local), (self.batch_size, *local.shape[1:])
        )

    def activations(self, acts, size: int) -> jax.Array:
        """Activations padded to ``size`` rows and placed; arrays already on a device (a
        model's output) stay there."""
        if isinstance(acts, jax.Array) and jax.process_count() == 1:
            acts = acts.astype(jnp.float32)
            if acts.shape[0] != size:
                acts = jnp.pad(acts, [(0, size - acts.shape[0])] + [(0, 0)] * (acts.ndim - 1))
            return jax.device_put(acts, self.data)
        return self.place(_pad(np.asarray(acts, np.float32), size))

    def labels(self, labels, lo: int, hi: int, per: int) -> tuple:
        if isinstance(labels.slot_planes, jax.Array) and hi - lo == per:
            # Already in the (single) device's memory (see ``pipeline``).
            return _device_rows(tuple(labels), lo, size=per)
        return tuple(self.place(_pad(np.asarray(a[lo:hi]), per)) for a in labels)

    def read(self, source, shapes, ranges, first, labels):
        for number, (start, stop) in enumerate(ranges[first:], start=first + 1):
            lo, hi, per = self.local_rows(start, stop)
            acts = checked(source(lo, hi), shapes, hi - lo)
            yield Batch(
                number=number,
                start=start,
                acts={layer: self.activations(a, per) for layer, a in acts.items()},
                indices=self.place(np.arange(lo, lo + per, dtype=np.int32)),
                valid=self.place(np.arange(per) < hi - lo),
                labels=None if labels is None else self.labels(labels, lo, hi, per),
            )


def _thresholds(placement, layer, shape, num_images, config):
    height, width, units = shape
    kept = top_images_kept(config, shape)
    padded_images = -(-num_images // placement.batch_size) * placement.batch_size

    def init():
        state = {
            "quantile": quantile.quantile_init(units, config.quantile, num_images * height * width),
            "first_bad": jnp.asarray(INT32_MAX, jnp.int32),
            "maxima": jnp.full((padded_images, units), -jnp.inf, jnp.float32),
        }
        if kept:
            state["top"] = top_images_init(units, kept, height, width)
        return jax.device_put(state, placement.replicated)

    def update(state, batch):
        state = dict(state)
        state["quantile"], state["first_bad"], state["maxima"] = threshold_step(
            state["quantile"],
            state["first_bad"],
            state["maxima"],
            batch.acts,
            batch.valid,
            batch.indices,
            batch.start,
        )
        if kept:
            state["top"] = top_images_step(state["top"], batch.acts, batch.indices, batch.valid)
        return state

    def merge(a, b):
        merged = {
            "quantile": quantile.quantile_merge(a["quantile"], b["quantile"]),
            "first_bad": jnp.minimum(a["first_bad"], b["first_bad"]),
            "maxima": jnp.maximum(a["maxima"], b["maxima"]),
        }
        if kept:
            merged["top"] = top_images_merge(a["top"], b["top"])
        return merged

    def result(state):
        check_finite(host(state["first_bad"]), num_images, layer)
        thresholds = quantile.quantile_result(host(state["quantile"]), config.quantile)
        most_active = host(_most_active_units(state["maxima"], jnp.asarray(thresholds)))
        top = host(state["top"]) if kept else None
        return Thresholds(
            thresholds,
            int(most_active),
            None if top is None else np.asarray(top.indices),
            None if top is None else np.asarray(top.maps),
        )

    return Statistic(init, update, merge, result)


def _tally(placement, layer, shape, thresholds, dataset, labels, config):
    """Pass 2: each image upsamples only the units whose map rises above their threshold
    (at most ``max_active``, measured in pass 1) unless ``config.skip_inactive`` is off.
    Device counts are int32; they move into int64 host totals often enough that no device
    count can pass 2**31 (a host sync every few hundred batches, not every step)."""
    height, width, units = shape
    label_height, label_width = dataset.label_size
    planes = max(labels.slot_planes.shape[1], labels.image_labels.shape[1])
    flush_every = max(1, INT32_MAX // (placement.batch_size * label_height * label_width * planes))
    mask_dtype = mask_dtype_for_backend()
    constants = jax.device_put(
        (
            jnp.asarray(thresholds.thresholds, jnp.float32),
            jnp.asarray(dataset.label_category, jnp.int32),
            jnp.asarray(bilinear_matrix(label_height, height)),
            jnp.asarray(bilinear_matrix(label_width, width)),
        ),
        placement.replicated,
    )
    # Rounded up to a multiple of 8 so that similar layers share compiled steps.
    bound = -(-max(thresholds.max_active, 1) // 8) * 8
    max_active = bound if config.skip_inactive and bound < units else None

    def fresh():
        return jax.device_put(
            tally.tally_init(units, dataset.num_labels, len(dataset.categories)),
            placement.replicated,
        )

    def flush(state):
        """The device counts added to the host totals; the device counts restart at 0."""
        part = host(state["device"])
        if part.overflow:  # cannot happen: pass 1 measured the bound
            raise RuntimeError(f"layer {layer!r}: {part.overflow} images overflowed the tally")
        totals = [t + p for t, p in zip(state["totals"], part[:3], strict=True)]
        return {"device": fresh(), "totals": totals}

    def update(state, batch):
        device = tally_step(
            state["device"],
            constants,
            batch.acts,
            batch.labels,
            batch.valid,
            union=config.union,
            mask_dtype=mask_dtype,
            max_active=max_active,
        )
        state = {"device": device, "totals": state["totals"]}
        return flush(state) if batch.number % flush_every == 0 else state

    def merge(a, b):
        a, b = flush(a), flush(b)
        return {
            "device": a["device"],
            "totals": [x + y for x, y in zip(a["totals"], b["totals"], strict=True)],
        }

    return Statistic(
        init=lambda: {"device": fresh(), "totals": zero_counts(units, dataset)},
        update=update,
        merge=merge,
        result=lambda state: tuple(flush(state)["totals"]),
    )


def backend(config) -> Backend:
    """The XLA backend for ``config``: batches rounded up to a multiple of the devices."""
    placement = _Placement(config.batch_size)

    def adopt(template, restored):
        return jax.tree.map(
            lambda t, r: (
                np.array(r)
                if isinstance(t, np.ndarray)
                else jax.device_put(r, placement.replicated)
            ),
            template,
            restored,
        )

    return Backend(
        name="xla",
        batch_size=placement.batch_size,
        read=placement.read,
        thresholds=functools.partial(_thresholds, placement),
        tally=functools.partial(_tally, placement),
        adopt=adopt,
        wait=jax.block_until_ready,
    )
